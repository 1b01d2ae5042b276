"""Engine-neutral description of how a component type is built or loaded.

ppdiffusers mirrors diffusers' API and ppdiffusers.transformers mirrors transformers', so one table
shape serves both engines: each engine maps a component type ("unet_2d_condition", "clip_text_model",
...) to its own class paths, and `EngineBase` does the building and loading with a few framework
hooks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from runner.errors import ConfigError

ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class ComponentType:
    """How one component type is made on one engine.

    kind: "model" (diffusers-style `from_config` / `from_pretrained`), "text_model" (transformers-style:
    `Class(ConfigClass(**config))`), "tokenizer" (files only; with weights that carry none, random weights
    or a single-file checkpoint, the bundled tokenizer the model YAML names is used, else the one named by
    `asset`).
    """

    kind: str
    cls: str
    config_cls: str | None = None
    asset: str | None = None
    vocab_file: str | None = None  # tokenizers: build from this file alone (see PaddleEngine's T5 entry)

    def __post_init__(self) -> None:
        if self.kind not in ("model", "text_model", "tokenizer"):
            raise ValueError(f"unknown component kind {self.kind!r}")


def bundled_tokenizer(asset: str) -> Path:
    """Folder of a tokenizer shipped with the project, for weights that carry none.

    Pipeline directories carry their own tokenizer. Random weights only need token ids of the right
    sequence length, so the tiny models use a ~700-token BPE vocabulary (`clip`) or a ~220-id
    sentencepiece model (`t5`); the full-size SD 1.x / 2.x / XL configs, whose single-file checkpoints
    carry no tokenizer, name the full CLIP vocabulary (`clip_bpe`, 49408 tokens, derived from OpenAI's
    BPE file by scripts/make_clip_bpe_tokenizer.py).
    """
    path = ASSETS / "tokenizers" / asset
    if not path.is_dir():
        raise FileNotFoundError(f"bundled tokenizer {asset!r} is missing at {path}")
    return path


def _safetensors_format(path: Path) -> str | None:
    """The "format" entry of a safetensors file's metadata ("pt", "np", "pd", ...), None without one."""
    # framework="np" reads the header only (no tensor is loaded) and needs neither engine's framework.
    with safe_open(path, framework="np") as f:
        return (f.metadata() or {}).get("format")


def folder_is_torch_format(folder: str | os.PathLike[str]) -> bool:
    """True when a component folder holds PyTorch-layout weights (as the model hub ships them).

    diffusers names its files diffusion_pytorch_model.*; transformers writes model.safetensors with
    metadata format "pt" (Paddle writes "np"/"pd" or .pdparams files).
    """
    folder = Path(folder)
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.startswith("diffusion_pytorch_model") or name.startswith("pytorch_model"):
            return True
        if name.endswith(".safetensors") and name.startswith("model"):
            return _safetensors_format(entry) == "pt"
    return False


def with_module_prefix(state: dict[str, Any], sources: set[str]) -> dict[str, Any]:
    """The checkpoint's names with the prefix of the wrapper module `sources` (the names a model reads) expects.

    transformers 5 folded CLIPTextTransformer into CLIPTextModel, so a CLIPTextModel it saves names its weights
    `embeddings.*`, `encoder.*`, `final_layer_norm.*` where transformers 4 wrote `text_model.embeddings.*` ...
    (CLIPTextModelWithProjection still writes `text_model.*`). A name gains a prefix only where the prefixed
    name is one the model reads and the bare one is not, so checkpoints in the older layout are unchanged.
    """
    if any(name in sources for name in state):
        return state
    prefixes = {name.split(".", 1)[0] + "." for name in sources if "." in name}
    for prefix in sorted(prefixes):
        if any(prefix + name in sources for name in state):
            return {prefix + name if prefix + name in sources else name: value for name, value in state.items()}
    return state


def with_model_names(state: dict[str, Any], sources: set[str]) -> dict[str, Any]:
    """The checkpoint's names as the model reads them: with the wrapper's prefix added (`with_module_prefix`),
    or without CLIP's `text_model.` level where the model has none (transformers 5's CLIPTextModel reading
    weights in transformers 4's names, as single-file checkpoints spell them)."""
    if any(name in sources for name in state):
        return state
    prefixed = with_module_prefix(state, sources)
    if prefixed is not state:
        return prefixed
    level = "text_model."
    if any(name.startswith(level) and name[len(level) :] in sources for name in state):
        return {name[len(level) :] if name[len(level) :] in sources else name: value for name, value in state.items()}
    return state


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint files of a transformers-format folder, shards resolved through the index json."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [folder / shard for shard in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise ConfigError(f"{folder} has no model.safetensors, pytorch_model.bin or a sharded index of either")
