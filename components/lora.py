"""LoRA files -> per-layer weight deltas (numpy), merged into a pipeline's weights and taken out again.

Formats read (safetensors only):
- kohya / sd-scripts: `lora_unet_<module>`, `lora_te_` / `lora_te1_` / `lora_te2_` (text encoders) with
  `.lora_down.weight`, `.lora_up.weight` and `.alpha`. The module is the dotted name with "." -> "_": diffusers
  names (SD 1.x / 2.x UNets, CLIP), the original SGM names of SDXL's UNet (`input_blocks_4_1_...`), or the
  original BFL names of Flux (`double_blocks_0_img_attn_qkv`, `single_blocks_0_linear1`), whose fused
  projections are split row-wise onto diffusers' separate ones.
- diffusers / PEFT: `unet.` / `text_encoder.` / `text_encoder_2.` / `transformer.` + the module's dotted name +
  `.lora_A.weight` / `.lora_B.weight` (`.lora.down.weight` / `.lora.up.weight` of older diffusers), optional
  `.alpha`; Flux's BFL names in this form (`diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`).

Merging adds `scale * alpha / rank * up @ down` to each weight (no cost per call, nothing to compile again).
The weights a LoRA touched are kept (on the host, in their own dtype) the first time it touches them, so
swapping or removing LoRAs writes the originals back bit for bit. The originals live in the component's
`__dict__`: a copy of the component (verify=true keeps eager copies) carries its own.

This module is engine-neutral; each engine supplies a `LoraWeights` (how its layers hold their weights:
components/torch/lora.py, components/paddle/lora.py).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from components.single_file import read_tensors
from runner.errors import ConfigError
from runner.single_file import PICKLE_SUFFIXES, read_header

ORIGINALS_ATTRIBUTE = "_runner_lora_originals"  # component.__dict__ entry: module name -> host copy of its weight
SHOWN = 5  # unknown names listed in an error

# kohya prefixes -> component role; "denoiser" is the model's unet or transformer.
KOHYA_ROLES = {
    "lora_unet_": "denoiser",
    "lora_transformer_": "denoiser",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
PEFT_ROLES = {
    "unet.": "unet",
    "transformer.": "transformer",
    "text_encoder.": "text_encoder",
    "text_encoder_2.": "text_encoder_2",
    "diffusion_model.": "denoiser",  # Flux with BFL's original names
}
KOHYA_SUFFIXES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}
PEFT_SUFFIXES = {
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".alpha": "alpha",
}
# Families recognizable from the names alone, for a clear "LoRA for another model" error.
FAMILY_MARKERS = (
    ("flux", re.compile(r"double_blocks|single_blocks|single_transformer_blocks")),
    # SD3's original names only: in diffusers' names its blocks look like Flux's double blocks.
    ("sd3", re.compile(r"joint_blocks")),
    ("sdxl", re.compile(r"input_blocks|output_blocks|lora_te2_|text_encoder_2|add_embedding")),
    ("sd", re.compile(r"down_blocks|up_blocks|mid_block|lora_te_")),
)
FAMILY_NAMES = {"sd": "Stable Diffusion 1.x/2.x", "sdxl": "Stable Diffusion XL", "sd3": "SD3", "flux": "Flux"}


@dataclass(frozen=True)
class LoraLayer:
    """One low-rank pair of a file: `name` is dotted (PEFT) or underscored (kohya), as the file spells it."""

    role: str  # a component role, or "denoiser"
    name: str
    kohya: bool
    down: np.ndarray  # [rank, in] or [rank, in, kh, kw]
    up: np.ndarray  # [out, rank] or [out, rank, 1, 1]
    alpha: float | None

    def delta(self, scale: float) -> np.ndarray:
        """scale * alpha / rank * up @ down, float32, in PyTorch's weight layout ([out, in, ...])."""
        rank = self.down.shape[0]
        factor = scale * (self.alpha / rank if self.alpha is not None else 1.0)
        # The factor scales the small matrix, not the product: one pass less over a weight-sized array.
        up = self.up.reshape(self.up.shape[0], rank).astype(np.float32) * np.float32(factor)
        down = self.down.reshape(rank, -1).astype(np.float32)
        return (up @ down).reshape((self.up.shape[0], *self.down.shape[1:]))


@dataclass(frozen=True)
class LoraFile:
    path: str
    scale: float
    layers: tuple[LoraLayer, ...]


class LoraWeights(Protocol):
    """How one engine's layers hold their weights (PyTorch layout [out, in, ...] at this interface)."""

    def layers(self, component: Any) -> Iterator[tuple[str, Any]]:
        """(dotted name, layer) of every layer a LoRA can change (Linear, Conv2d, fused projection parts)."""

    def shape(self, layer: Any) -> tuple[int, ...] | None:
        """The layer's weight shape in PyTorch layout; None for a layer a LoRA cannot change."""

    def snapshot(self, layer: Any) -> Any:
        """A host copy of the layer's weight, exact (its own dtype)."""

    def restore(self, layer: Any, snapshot: Any) -> None:
        """Write a snapshot back, in place."""

    def add(self, layer: Any, delta: np.ndarray) -> None:
        """weight += delta (float32, PyTorch layout), computed in float32, in place."""


# ------------------------------------------------------------------------------------------------ reading
def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor of a safetensors file as numpy (bf16 widened to float32 exactly: numpy has no bf16), and
    the file's metadata. ValueError / ConfigError for a file that is not a complete safetensors file."""
    metadata: dict[str, str] = {}
    read_header(path, metadata)
    return read_tensors(path, ""), metadata


def _split_key(key: str, suffixes: Mapping[str, str]) -> tuple[str, str] | None:
    for suffix, part in suffixes.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def _role_and_name(stem: str, roles: Mapping[str, str]) -> tuple[str, str]:
    for prefix, role in roles.items():
        if stem.startswith(prefix):
            return role, stem[len(prefix) :]
    return "denoiser", stem  # PEFT files saved from the denoiser alone carry no prefix


ADAPTER_METADATA = "lora_adapter_metadata"  # diffusers >= 0.34 saves each component's LoraConfig here


def adapter_configs(metadata: Mapping[str, str], path: str) -> dict[str, dict[str, Any]]:
    """Component prefix -> its PEFT LoraConfig fields, from the file's metadata ({"unet.lora_alpha": 8, ...})."""
    raw = metadata.get(ADAPTER_METADATA)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(f"LoRA {path}: its {ADAPTER_METADATA} metadata is not JSON ({err.msg})") from err
    configs: dict[str, dict[str, Any]] = {}
    for key, value in flat.items() if isinstance(flat, dict) else ():
        prefix, _, field_name = str(key).rpartition(".")
        configs.setdefault(prefix, {})[field_name] = value
    return configs


def _pattern_value(patterns: Mapping[str, Any], name: str) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key matching the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return None


def peft_alpha(config: Mapping[str, Any], name: str, rank: int, path: str) -> float | None:
    """The alpha of one module under a saved LoraConfig, such that alpha / rank is PEFT's scaling."""
    if config.get("use_dora"):
        raise ConfigError(f"LoRA {path} is a DoRA adapter (use_dora); only plain LoRA weights can be merged")
    alpha = _pattern_value(config.get("alpha_pattern", {}), name)
    alpha = config.get("lora_alpha") if alpha is None else alpha
    if alpha is None:
        return None
    if config.get("use_rslora"):  # rank-stabilized: alpha / sqrt(rank)
        return float(alpha) * math.sqrt(rank)
    return float(alpha)


# diffusers before 0.20 saved attention-processor LoRAs: `...attn1.processor.to_q_lora.down.weight`.
OLD_PROCESSOR_KEY = re.compile(
    r"\.processor\.(to_q|to_k|to_v|to_out|add_q_proj|add_k_proj|add_v_proj)_lora\.(down|up)\.weight$"
)


def _old_processor_name(match: re.Match[str]) -> str:
    module = "to_out.0" if match[1] == "to_out" else match[1]
    return f".{module}.lora.{match[2]}.weight"


def parse_lora(
    tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None
) -> list[LoraLayer]:
    """The low-rank pairs of a LoRA file; ConfigError for a file in no known format or with stray keys."""
    kohya = any(key.startswith(tuple(KOHYA_ROLES)) for key in tensors)
    suffixes = KOHYA_SUFFIXES if kohya else PEFT_SUFFIXES
    configs = {} if kohya else adapter_configs(metadata or {}, path)
    parts: dict[str, dict[str, np.ndarray]] = {}
    unknown = []
    for key, value in tensors.items():
        if not kohya:
            key = OLD_PROCESSOR_KEY.sub(_old_processor_name, key)
        split = _split_key(key, suffixes)
        if split is None or (kohya and not key.startswith(tuple(KOHYA_ROLES))):
            unknown.append(key)
            continue
        parts.setdefault(split[0], {})[split[1]] = value
    if unknown:
        raise ConfigError(
            f"LoRA {path}: {len(unknown)} key(s) in no LoRA format this runner reads (kohya lora_down/lora_up/alpha, "
            f"diffusers/PEFT lora_A/lora_B), e.g. {', '.join(sorted(unknown)[:SHOWN])}"
        )
    if not parts:
        raise ConfigError(f"LoRA {path} holds no LoRA weights")
    layers = []
    for stem, pair in sorted(parts.items()):
        if "down" not in pair or "up" not in pair:
            missing = "up" if "down" in pair else "down"
            raise ConfigError(f"LoRA {path}: layer {stem!r} has no {missing} weight")
        down, up = pair["down"], pair["up"]
        if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
            raise ConfigError(
                f"LoRA {path}: layer {stem!r} has down {list(down.shape)} and up {list(up.shape)}, not a low-rank pair"
            )
        alpha = float(pair["alpha"].reshape(-1)[0]) if "alpha" in pair else None
        role, name = _role_and_name(stem, KOHYA_ROLES if kohya else PEFT_ROLES)
        prefix = stem[: len(stem) - len(name)].rstrip(".")
        if alpha is None and prefix in configs:
            alpha = peft_alpha(configs[prefix], name, down.shape[0], path)
        layers.append(LoraLayer(role, name, kohya, down, up, alpha))
    return layers


def guess_family(names: Sequence[str]) -> str | None:
    """The model family a LoRA's names point to (flux, sd3, sdxl, sd), None when they do not tell."""
    text = "\n".join(names)
    for family, pattern in FAMILY_MARKERS:
        if pattern.search(text):
            return family
    return None


def read_lora(path: str, scale: float, family: str, roles: Sequence[str]) -> LoraFile:
    """Read and check one LoRA file against the model (family, component roles); nothing is loaded on error."""
    file = Path(path).expanduser()
    if file.suffix.lower() in PICKLE_SUFFIXES:
        raise ConfigError(
            f"LoRA {path}: {file.suffix} files are Python pickles, which can run code when loaded and are not read; "
            "convert it to .safetensors"
        )
    if not file.is_file():
        raise ConfigError(f"LoRA {path} is not a file")
    try:
        tensors, metadata = read_safetensors(file)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"LoRA {path} is not a readable safetensors file ({err})") from err
    layers = parse_lora(tensors, path, metadata)
    guessed = guess_family([f"{layer.role}.{layer.name}" for layer in layers])
    if guessed is not None and guessed != family and {guessed, family} != {"sd", "sdxl"}:
        raise ConfigError(
            f"LoRA {path} is for {FAMILY_NAMES[guessed]} but the model is {FAMILY_NAMES.get(family, family)}"
        )
    denoiser = next((r for r in roles if r in ("unet", "transformer")), None)
    for layer in layers:
        role = denoiser if layer.role == "denoiser" else layer.role
        if role not in roles:
            what = f"component {layer.role}" if layer.role != "denoiser" else "a denoiser"
            raise ConfigError(
                f"LoRA {path} changes {what}, which this model does not have (components: {', '.join(roles)})"
            )
    return LoraFile(path, scale, tuple(layers))


# ----------------------------------------------------------------------------------------- name resolving
RESNET_NAMES = {
    "in_layers_0": "norm1",
    "in_layers_2": "conv1",
    "emb_layers_1": "time_emb_proj",
    "out_layers_0": "norm2",
    "out_layers_3": "conv2",
    "skip_connection": "conv_shortcut",
}
SGM_TOP = {
    "time_embed_0": "time_embedding_linear_1",
    "time_embed_2": "time_embedding_linear_2",
    "label_emb_0_0": "add_embedding_linear_1",
    "label_emb_0_2": "add_embedding_linear_2",
    "input_blocks_0_0": "conv_in",
    "out_0": "conv_norm_out",
    "out_2": "conv_out",
}


def _resnet(prefix: str, rest: str) -> str:
    for old, new in RESNET_NAMES.items():
        if rest == old or rest.startswith(old + "_"):
            return prefix + new + rest[len(old) :]
    return prefix + rest


def sgm_to_diffusers(stem: str, layers_per_block: int) -> str:
    """An SGM UNet name (SDXL as sd-scripts trains it), underscored, as diffusers' underscored name."""
    if stem in SGM_TOP:
        return SGM_TOP[stem]
    per_level = layers_per_block + 1
    if m := re.fullmatch(r"input_blocks_(\d+)_(\d+)_(.+)", stem):
        index, part, rest = int(m[1]), int(m[2]), m[3]
        level, layer = divmod(index - 1, per_level)
        if layer == layers_per_block:  # the downsampler closing a level
            return f"down_blocks_{level}_downsamplers_0_conv"
        if part == 0:
            return _resnet(f"down_blocks_{level}_resnets_{layer}_", rest)
        return f"down_blocks_{level}_attentions_{layer}_{rest}"
    if m := re.fullmatch(r"middle_block_(\d+)_(.+)", stem):
        part, rest = int(m[1]), m[2]
        if part == 1:
            return f"mid_block_attentions_0_{rest}"
        return _resnet(f"mid_block_resnets_{part // 2}_", rest)
    if m := re.fullmatch(r"output_blocks_(\d+)_(\d+)_(.+)", stem):
        index, part, rest = int(m[1]), int(m[2]), m[3]
        level, layer = divmod(index, per_level)
        if part == 0:
            return _resnet(f"up_blocks_{level}_resnets_{layer}_", rest)
        if rest.startswith("conv"):  # the upsampler ends the level (after the attention, if any)
            return f"up_blocks_{level}_upsamplers_0_conv"
        return f"up_blocks_{level}_attentions_{layer}_{rest}"
    return stem


def _flux_targets(name: str) -> list[str] | None:
    """BFL Flux module (dotted) -> the diffusers modules its rows go to, in row order; None if not BFL."""
    if m := re.fullmatch(r"double_blocks\.(\d+)\.(img|txt)_(attn\.qkv|attn\.proj|mlp\.0|mlp\.2|mod\.lin)", name):
        block, stream, part = f"transformer_blocks.{m[1]}", m[2], m[3]
        img = stream == "img"
        return {
            "attn.qkv": [f"{block}.attn.{p}" for p in (("to_q", "to_k", "to_v") if img else
                                                        ("add_q_proj", "add_k_proj", "add_v_proj"))],
            "attn.proj": [f"{block}.attn.to_out.0" if img else f"{block}.attn.to_add_out"],
            "mlp.0": [f"{block}.{'ff' if img else 'ff_context'}.net.0.proj"],
            "mlp.2": [f"{block}.{'ff' if img else 'ff_context'}.net.2"],
            "mod.lin": [f"{block}.{'norm1' if img else 'norm1_context'}.linear"],
        }[part]  # fmt: skip
    if m := re.fullmatch(r"single_blocks\.(\d+)\.(linear1|linear2|modulation\.lin)", name):
        block = f"single_transformer_blocks.{m[1]}"
        return {
            "linear1": [f"{block}.attn.to_q", f"{block}.attn.to_k", f"{block}.attn.to_v", f"{block}.proj_mlp"],
            "linear2": [f"{block}.proj_out"],
            "modulation.lin": [f"{block}.norm.linear"],
        }[m[2]]
    embedders = {"time_in": "timestep_embedder", "vector_in": "text_embedder", "guidance_in": "guidance_embedder"}
    if m := re.fullmatch(r"(time_in|vector_in|guidance_in)\.(in_layer|out_layer)", name):
        return [f"time_text_embed.{embedders[m[1]]}.linear_{1 if m[2] == 'in_layer' else 2}"]
    simple = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out",
              "final_layer.adaLN_modulation.1": "norm_out.linear"}  # fmt: skip
    return [simple[name]] if name in simple else None


# BFL's underscored names back to dotted ones (kohya spells `double_blocks_0_img_attn_qkv`).
BFL_UNDERSCORED = (
    (re.compile(r"double_blocks_(\d+)_(img|txt)_(attn|mlp|mod)_(qkv|proj|0|2|lin)"), r"double_blocks.\1.\2_\3.\4"),
    (re.compile(r"single_blocks_(\d+)_(linear1|linear2)"), r"single_blocks.\1.\2"),
    (re.compile(r"single_blocks_(\d+)_modulation_lin"), r"single_blocks.\1.modulation.lin"),
    (re.compile(r"(time_in|vector_in|guidance_in)_(in_layer|out_layer)"), r"\1.\2"),
    (re.compile(r"final_layer_adaLN_modulation_1"), "final_layer.adaLN_modulation.1"),
    (re.compile(r"final_layer_linear"), "final_layer.linear"),
    (re.compile(r"(img_in|txt_in)"), r"\1"),
)


def _bfl_dotted(stem: str) -> str | None:
    for pattern, replacement in BFL_UNDERSCORED:
        if pattern.fullmatch(stem):
            return pattern.sub(replacement, stem)
    return None


class Resolver:
    """LoRA layer names -> modules of one pipeline (built from the modules' own names, so every port of
    a model whose names follow diffusers resolves the same)."""

    def __init__(self, components: Mapping[str, Any], weights: LoraWeights, roles: Sequence[str]) -> None:
        self.weights = weights
        self.components = components
        self.denoiser = next((r for r in roles if r in ("unet", "transformer")), None)
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        self._underscored: dict[str, dict[str, str]] = {}

    def shapes(self, role: str) -> dict[str, tuple[int, ...]]:
        """Module name -> weight shape of every layer of `role` a LoRA can change (walked once per role)."""
        if role not in self._shapes:
            self._shapes[role] = {}
            if role in self.components:
                for name, layer in self.weights.layers(self.components[role]):
                    shape = self.weights.shape(layer)
                    if shape is not None:
                        self._shapes[role][name] = shape
        return self._shapes[role]

    def underscored(self, role: str) -> dict[str, str]:
        """kohya's spelling ("." -> "_") -> module name; names two modules would share are left out."""
        if role not in self._underscored:
            table: dict[str, str] = {}
            clashes = set()
            for name in self.shapes(role):
                key = name.replace(".", "_")
                if key in table:
                    clashes.add(key)
                table[key] = name
            self._underscored[role] = {k: v for k, v in table.items() if k not in clashes}
        return self._underscored[role]

    @functools.cached_property
    def layers_per_block(self) -> int:
        """Resnets per down level of the UNet (SGM names count blocks with it)."""
        pattern = re.compile(r"down_blocks\.0\.resnets\.(\d+)\.conv1")
        resnets = [int(m[1]) for n in self.shapes("unet") if (m := pattern.fullmatch(n))]
        return max(resnets) + 1 if resnets else 2

    def role_of(self, layer: LoraLayer) -> str:
        return self.denoiser if layer.role == "denoiser" else layer.role  # type: ignore[return-value]

    def targets(self, layer: LoraLayer) -> list[str] | None:
        """The modules (dotted) of the layer's component its delta rows go to, in row order; None: unknown."""
        role = self.role_of(layer)
        shapes = self.shapes(role)
        if layer.kohya:
            table = self.underscored(role)
            for name in _text_model_spellings(layer.name, "_"):
                if name in table:
                    return [table[name]]
            if role == "unet" and (mapped := sgm_to_diffusers(layer.name, self.layers_per_block)) in table:
                return [table[mapped]]
            dotted = _bfl_dotted(layer.name) if role == "transformer" else None
        else:
            for name in _text_model_spellings(layer.name, "."):
                if name in shapes:
                    return [name]
            dotted = layer.name if role == "transformer" else None
        flux = _flux_targets(dotted) if dotted else None
        if flux and all(name in shapes for name in flux):
            return flux
        return None


def _text_model_spellings(name: str, separator: str) -> list[str]:
    """A name as written, then with CLIP's `text_model` level taken away or added: transformers 5 folded
    CLIPTextTransformer into CLIPTextModel (its modules lost the level), LoRA files keep the names trainers saw."""
    level = "text_model" + separator
    return [name, name[len(level) :] if name.startswith(level) else level + name]


def _row_slices(sizes: Sequence[int]) -> list[tuple[int, int]]:
    starts = np.cumsum([0, *sizes]).tolist()
    return [(starts[i], starts[i + 1]) for i in range(len(sizes))]


def merged_deltas(files: Sequence[LoraFile], resolver: Resolver, model_name: str) -> dict[tuple[str, str], np.ndarray]:
    """(role, module) -> the sum of every file's delta for it (float32, PyTorch layout). Checks every layer
    against the model (names, shapes) before anything is changed; ConfigError names what does not fit."""
    deltas: dict[tuple[str, str], np.ndarray] = {}
    for file in files:
        unknown = []
        for layer in file.layers:
            names = resolver.targets(layer)
            if names is None:
                unknown.append(f"{layer.role}.{layer.name}" if not layer.kohya else layer.name)
                continue
            role = resolver.role_of(layer)
            shapes = [resolver.shapes(role)[name] for name in names]
            delta = layer.delta(file.scale)
            if layer.name in ("final_layer.adaLN_modulation.1", "final_layer_adaLN_modulation_1"):
                delta = np.concatenate(np.split(delta, 2, axis=0)[::-1], axis=0)
            rows = sum(shape[0] for shape in shapes)
            if delta.shape[0] != rows:
                _mismatch(file.path, layer.name, delta.shape, (rows, *shapes[0][1:]), model_name, role)
            for name, shape, (start, stop) in zip(names, shapes, _row_slices([s[0] for s in shapes])):
                part = delta[start:stop]
                if part.shape != shape:
                    if part.size == math.prod(shape) and part.shape[:2] == shape[:2]:
                        part = part.reshape(shape)  # a Linear LoRA on a 1x1 convolution, or the reverse
                    else:
                        _mismatch(file.path, layer.name, part.shape, shape, model_name, role)
                key = (role, name)
                deltas[key] = deltas[key] + part if key in deltas else part
        if unknown:
            shown = ", ".join(sorted(unknown)[:SHOWN])
            more = f" (and {len(unknown) - SHOWN} more)" if len(unknown) > SHOWN else ""
            raise ConfigError(
                f"LoRA {file.path}: {len(unknown)} of its {len(file.layers)} layers name no module of model="
                f"{model_name}: {shown}{more}; is it a LoRA for another model?"
            )
    return deltas


def _mismatch(path: str, name: str, got: tuple, want: tuple, model_name: str, role: str) -> None:
    raise ConfigError(
        f"LoRA {path}: layer {name} changes a weight of shape {list(got)} but model={model_name}'s {role} has "
        f"{list(want)} there; is it a LoRA for another model?"
    )


# ---------------------------------------------------------------------------------------------- applying
def module_at(component: Any, name: str) -> Any:
    module = component
    for part in name.split("."):
        module = getattr(module, part)
    return module


def set_deltas(component: Any, weights: LoraWeights, deltas: Mapping[str, np.ndarray]) -> None:
    """Make the component's weights original + delta for exactly the named modules: every module a LoRA
    changed before gets its original back (bit for bit), then the new deltas are added."""
    originals: dict[str, Any] = component.__dict__.setdefault(ORIGINALS_ATTRIBUTE, {})
    for name, snapshot in originals.items():
        weights.restore(module_at(component, name), snapshot)
    for name in [n for n in originals if n not in deltas]:
        del originals[name]
    for name, delta in deltas.items():
        layer = module_at(component, name)
        if name not in originals:
            originals[name] = weights.snapshot(layer)
        weights.add(layer, delta)
    if not originals:
        component.__dict__.pop(ORIGINALS_ATTRIBUTE, None)


def apply_loras(
    components: Mapping[str, Any],
    weights: LoraWeights,
    files: Sequence[LoraFile],
    roles: Sequence[str],
    model_name: str,
    copies: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, int]:
    """Set the pipeline's LoRAs to `files` (none: the original weights); return changed modules per role.

    Everything is checked first, so a LoRA that does not fit leaves the weights as they were. `copies`: other
    instances of a role's component (verify=true's eager copies) that get the same deltas."""
    resolver = Resolver(components, weights, roles)
    deltas = merged_deltas(files, resolver, model_name)
    per_role: dict[str, dict[str, np.ndarray]] = {role: {} for role in roles}
    for (role, name), delta in deltas.items():
        per_role[role][name] = delta
    for role in roles:
        if role in components:
            for component in [components[role], *(copies or {}).get(role, ())]:
                set_deltas(component, weights, per_role[role])
    return {role: len(names) for role, names in per_role.items() if names}
