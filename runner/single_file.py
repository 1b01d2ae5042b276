"""Single-file checkpoints (the original SD 1.x / 2.x / XL layout in one .safetensors file), checked before
anything loads.

Only the header is read here (JSON: names, dtypes, shapes, offsets), so a 7 GB file is checked in
milliseconds and without an engine. The layout's family is told from the key names; the conversion to the
diffusers models (components/single_file.py) uses the same layout table below, so the check and the loader
agree on which component lives under which prefix.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import ConfigError

SINGLE_FILE_SUFFIX = ".safetensors"
# Pickle-based checkpoints: unpickling runs code chosen by whoever wrote the file, so they are never loaded.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
# The conversion a pickle refusal suggests: torch's restricted unpickler (weights_only) loads tensors only.
PICKLE_CONVERSION = (
    'python -c "import sys, torch, safetensors.torch as st; sd = torch.load(sys.argv[1], weights_only=True); '
    "sd = sd.get('state_dict', sd); st.save_file({k: v.clone().contiguous() for k, v in sd.items() "
    'if isinstance(v, torch.Tensor)}, sys.argv[2])" IN.ckpt OUT.safetensors'
)
# A header larger than this is not a checkpoint's (SDXL's, with ~2500 tensors, is ~250 KB).
MAX_HEADER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class ComponentLayout:
    """Where one component's weights live in a single file, and how they are written there."""

    prefix: str
    format: str  # "ldm_unet", "ldm_vae", "clip" (transformers names), "open_clip" (OpenCLIP names)


@dataclass(frozen=True)
class SingleFileLayout:
    name: str  # the value of a model YAML's `single_file`
    title: str  # for messages
    model: str  # the model config to suggest for a file of this layout
    components: dict[str, ComponentLayout]  # model component role -> where it is in the file


_UNET = ComponentLayout("model.diffusion_model.", "ldm_unet")
_VAE = ComponentLayout("first_stage_model.", "ldm_vae")
LAYOUTS: dict[str, SingleFileLayout] = {
    "sd1": SingleFileLayout(
        "sd1",
        "Stable Diffusion 1.x",
        "sd15",
        {"unet": _UNET, "vae": _VAE, "text_encoder": ComponentLayout("cond_stage_model.transformer.", "clip")},
    ),
    "sd2": SingleFileLayout(
        "sd2",
        "Stable Diffusion 2.x",
        "sd21",
        {"unet": _UNET, "vae": _VAE, "text_encoder": ComponentLayout("cond_stage_model.model.", "open_clip")},
    ),
    "sdxl": SingleFileLayout(
        "sdxl",
        "Stable Diffusion XL",
        "sdxl",
        {
            "unet": _UNET,
            "vae": _VAE,
            "text_encoder": ComponentLayout("conditioner.embedders.0.transformer.", "clip"),
            "text_encoder_2": ComponentLayout("conditioner.embedders.1.model.", "open_clip"),
        },
    ),
}
# Layouts that are recognized, named in messages, and not loaded from a single file.
OTHER_LAYOUTS = {
    "sdxl_refiner": "Stable Diffusion XL refiner",
    "sd3": "Stable Diffusion 3",
    "flux": "Flux",
    "diffusers": "diffusers-layout model",
}
# Top-level names of a diffusers / transformers model saved alone (one component folder's weights file).
DIFFUSERS_ROOTS = ("down_blocks.", "conv_in.", "transformer_blocks.", "text_model.", "encoder.down_blocks.",
                   "x_embedder.", "context_embedder.", "shared.", "encoder.block.")  # fmt: skip


def read_header(path: Path, metadata: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The tensor entries of a safetensors header (name -> dtype, shape, data_offsets), checked for sense;
    the file's own metadata (string pairs) goes into `metadata` when given.

    Raises ValueError (the reason) for a file that is not a complete safetensors file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"its header length ({length} bytes) does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    own = header.pop("__metadata__", None)
    if metadata is not None and isinstance(own, dict):
        metadata.update({str(k): str(v) for k, v in own.items()})
    data_size = size - 8 - length
    for name, entry in header.items():
        try:
            start, end = entry["data_offsets"]
            ok = isinstance(entry["dtype"], str) and all(isinstance(n, int) for n in entry["shape"])
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"its header entry {name!r} lacks dtype, shape or data_offsets")
        if not 0 <= start <= end <= data_size:
            raise ValueError(f"tensor {name!r} lies beyond the end of the file (truncated?)")
    return header


def detect_layout(header: dict[str, dict[str, Any]]) -> str:
    """The layout a file's tensor names say it holds: a key of LAYOUTS or OTHER_LAYOUTS, or "unknown"."""
    keys = list(header)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if any(".double_blocks." in f".{k}" for k in keys):
        return "flux"
    if has("model.diffusion_model.joint_blocks."):
        return "sd3"
    if has("conditioner.embedders.0.model."):  # the refiner has OpenCLIP bigG alone, as embedder 0
        return "sdxl_refiner"
    if has("conditioner.embedders.1.model.") or has("model.diffusion_model.label_emb."):
        return "sdxl"
    if has("cond_stage_model.model."):
        return "sd2"
    if has("cond_stage_model.transformer."):
        return "sd1"
    if has("model.diffusion_model."):
        # A UNet alone: SD 2.x projects in its transformer blocks with Linear layers, SD 1.x with 1x1 convs.
        proj = [e for k, e in header.items() if k.startswith("model.diffusion_model.") and k.endswith("proj_in.weight")]
        return "sd2" if proj and len(proj[0]["shape"]) == 2 else "sd1"
    if any(k.startswith(DIFFUSERS_ROOTS) for k in keys):
        return "diffusers"
    return "unknown"


def check_single_file(
    path: Path, weights: str, model_name: str, layout_name: str | None, roles: list[str]
) -> SingleFileLayout:
    """Check a single-file checkpoint for a model; return its layout.

    `layout_name` is the model YAML's `single_file` (None: the model loads from directories only); `roles`
    are the model's weight-bearing components (tokenizers excluded). Raises ConfigError with one line for
    a missing or unreadable file, a file of another family, or components the file lacks.
    """
    shown = f"model.weights={weights!r}"
    if not path.is_file():
        raise ConfigError(f"{shown}: no such file")
    if layout_name is None:
        raise ConfigError(
            f"{shown}: model={model_name} does not load from a single file; give a diffusers pipeline directory "
            f"(single files load for models with single_file: {', '.join(LAYOUTS)})"
        )
    try:
        header = read_header(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{shown} is not a readable safetensors file: {exc}") from None
    found = detect_layout(header)
    wanted = LAYOUTS[layout_name]
    if found == "unknown":
        raise ConfigError(
            f"{shown} holds no Stable Diffusion checkpoint (no model.diffusion_model.* UNet weights); "
            f"model={model_name} needs a {wanted.title} single file"
        )
    if found == "diffusers":
        raise ConfigError(
            f"{shown} holds one diffusers-layout model, not a whole original checkpoint; give the diffusers "
            "pipeline directory it belongs to"
        )
    if found in OTHER_LAYOUTS:
        raise ConfigError(
            f"{shown} holds a {OTHER_LAYOUTS[found]} checkpoint, which is not supported as a single file; "
            f"give a diffusers pipeline directory with the matching model config"
        )
    if found != layout_name:
        raise ConfigError(
            f"{shown} holds a {LAYOUTS[found].title} checkpoint but model={model_name} needs {wanted.title}; "
            f"use model={LAYOUTS[found].model}"
        )
    missing = [
        f"{role} ({wanted.components[role].prefix}*)"
        for role in roles
        if role in wanted.components and not any(k.startswith(wanted.components[role].prefix) for k in header)
    ]
    if missing:
        raise ConfigError(
            f"{shown} lacks {', '.join(missing)}: a single file must hold every component of model={model_name}; "
            "convert the checkpoint with its missing parts to a diffusers pipeline directory and give that"
        )
    unknown = [role for role in roles if role not in wanted.components]
    if unknown:
        raise ConfigError(
            f"model={model_name}: component(s) {', '.join(unknown)} have no place in a {wanted.title} file"
        )
    return wanted
