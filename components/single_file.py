"""Read a single-file checkpoint (original SD 1.x / 2.x / XL layout) as diffusers-named NumPy arrays.

Engine-neutral: NumPy only, so the Paddle engine needs no torch. The tensors are memory-mapped views of the
file (nothing is read until a weight is copied into its module), taken one component at a time, so a 7 GB
file never exists twice in memory. The renaming follows diffusers' `loaders/single_file_utils.py` (the
reference the tests check the mapping against), but is derived from the model YAML's architecture (blocks,
layers per block) instead of guessed from the file, so the tiny test models convert like the real ones.

Per component format (runner/single_file.py's LAYOUTS says which prefix holds which):
- ldm_unet: `input_blocks` / `middle_block` / `output_blocks` -> `down_blocks` / `mid_block` / `up_blocks`.
- ldm_vae: `encoder.down.N` / `decoder.up.N` (reversed) -> `down_blocks` / `up_blocks`; the mid-block
  attention's 1x1 convolutions become the Linear layers diffusers uses.
- clip: transformers' own names under a prefix (SD 1.x, SDXL's first encoder).
- open_clip: OpenCLIP's names (`resblocks`, fused `in_proj`) -> transformers' CLIPTextModel; layers beyond the
  config's `num_hidden_layers` are dropped (SD 2.x uses the penultimate layer: its config has 23 of 24).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import ConfigError
from runner.schema import ComponentSpec
from runner.single_file import LAYOUTS

log = logging.getLogger(__name__)

# safetensors dtype -> NumPy dtype (little-endian, as the format stores them). BF16 has no NumPy dtype: read as
# uint16 and widened to float32 (its bits are the top half of a float32's), exactly.
NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
                "U8": "u1", "BOOL": "?", "BF16": "<u2"}  # fmt: skip
UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2",
               "emb_layers.1": "time_emb_proj", "skip_connection": "conv_shortcut"}  # fmt: skip
VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
OPEN_CLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}  # fmt: skip
INNER = {"plain": {}, "unet_resnet": UNET_RESNET, "vae_resnet": VAE_RESNET, "vae_attention": VAE_ATTENTION}


def read_tensors(path: Path, prefix: str) -> dict[str, np.ndarray]:
    """The file's tensors whose names start with `prefix` (prefix removed), as read-only memory-mapped arrays
    (BF16 ones widened to float32 copies)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + length)
    tensors = {}
    for name, entry in header.items():
        if not name.startswith(prefix):
            continue
        if entry["dtype"] not in NUMPY_DTYPES:
            raise ConfigError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which is not loaded")
        start, end = entry["data_offsets"]
        array = data[start:end].view(NUMPY_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        if entry["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name[len(prefix) :]] = array
    return tensors


# ------------------------------------------------------------------------------------------ name tables
def _per_block(value: Any, count: int) -> list[int]:
    return list(value) if isinstance(value, list | tuple) else [int(value)] * count


def _block(source: str, target: str, kind: str = "plain") -> tuple[str, str, str]:
    return (source, target, kind)


def unet_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(original prefix, diffusers prefix, inner renaming) for every block of a UNet2DConditionModel config."""
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    layers = _per_block(config.get("layers_per_block", 2), len(down))
    table = [
        _block("time_embed.0.", "time_embedding.linear_1."),
        _block("time_embed.2.", "time_embedding.linear_2."),
        _block("input_blocks.0.0.", "conv_in."),
        _block("out.0.", "conv_norm_out."),
        _block("out.2.", "conv_out."),
    ]
    # SDXL's pooled text + size ids (text_time) and class-conditioned UNets both live in label_emb.
    embedding = {"text_time": "add_embedding"}.get(config.get("addition_embed_type") or "")
    if embedding is None and config.get("class_embed_type") in ("timestep", "projection"):
        embedding = "class_embedding"
    if embedding:
        table += [
            _block("label_emb.0.0.", f"{embedding}.linear_1."),
            _block("label_emb.0.2.", f"{embedding}.linear_2."),
        ]
    index = 1
    for b, kind in enumerate(down):
        for j in range(layers[b]):
            table.append(_block(f"input_blocks.{index}.0.", f"down_blocks.{b}.resnets.{j}.", "unet_resnet"))
            if "CrossAttn" in kind:
                table.append(_block(f"input_blocks.{index}.1.", f"down_blocks.{b}.attentions.{j}."))
            index += 1
        if b < len(down) - 1:  # every block but the last ends with a downsampler, a layer of its own
            table.append(_block(f"input_blocks.{index}.0.op.", f"down_blocks.{b}.downsamplers.0.conv."))
            index += 1
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid is not None:
        table.append(_block("middle_block.0.", "mid_block.resnets.0.", "unet_resnet"))
        if "CrossAttn" in mid:
            table.append(_block("middle_block.1.", "mid_block.attentions.0."))
        last = 2 if "CrossAttn" in mid else 1
        table.append(_block(f"middle_block.{last}.", "mid_block.resnets.1.", "unet_resnet"))
    index = 0
    for b, kind in enumerate(up):
        count = list(reversed(layers))[b] + 1
        attention = "CrossAttn" in kind
        for j in range(count):
            table.append(_block(f"output_blocks.{index}.0.", f"up_blocks.{b}.resnets.{j}.", "unet_resnet"))
            if attention:
                table.append(_block(f"output_blocks.{index}.1.", f"up_blocks.{b}.attentions.{j}."))
            if j == count - 1 and b < len(up) - 1:  # the upsampler sits after the block's last layer
                slot = 2 if attention else 1
                table.append(_block(f"output_blocks.{index}.{slot}.conv.", f"up_blocks.{b}.upsamplers.0.conv."))
            index += 1
    return table


def vae_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(original prefix, diffusers prefix, inner renaming) for every block of an AutoencoderKL config."""
    count = len(config["down_block_types"])
    layers = int(config.get("layers_per_block", 1))
    table = [_block("quant_conv.", "quant_conv."), _block("post_quant_conv.", "post_quant_conv.")]
    for side, blocks in (("encoder", "down"), ("decoder", "up")):
        table += [
            _block(f"{side}.conv_in.", f"{side}.conv_in."),
            _block(f"{side}.conv_out.", f"{side}.conv_out."),
            _block(f"{side}.norm_out.", f"{side}.conv_norm_out."),
            _block(f"{side}.mid.block_1.", f"{side}.mid_block.resnets.0.", "vae_resnet"),
            _block(f"{side}.mid.block_2.", f"{side}.mid_block.resnets.1.", "vae_resnet"),
            _block(f"{side}.mid.attn_1.", f"{side}.mid_block.attentions.0.", "vae_attention"),
        ]
        sampler, samplers = ("downsample", "downsamplers") if side == "encoder" else ("upsample", "upsamplers")
        for i in range(count):
            # The decoder's original blocks are numbered from the lowest resolution up; diffusers' the other way.
            source = f"{side}.{blocks}.{i if side == 'encoder' else count - 1 - i}."
            target = f"{side}.{blocks}_blocks.{i}."
            for j in range(layers if side == "encoder" else layers + 1):
                table.append(_block(f"{source}block.{j}.", f"{target}resnets.{j}.", "vae_resnet"))
            if i < count - 1:
                table.append(_block(f"{source}{sampler}.conv.", f"{target}{samplers}.0.conv."))
    return table


def rename(
    tensors: Mapping[str, np.ndarray], table: list[tuple[str, str, str]]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Apply a prefix table (longest prefix first; within a block, the inner renaming of its first name part).
    Returns (renamed tensors, names no prefix matched)."""
    ordered = sorted(table, key=lambda row: -len(row[0]))
    out, unmatched = {}, []
    for name, array in tensors.items():
        row = next((r for r in ordered if name.startswith(r[0])), None)
        if row is None:
            unmatched.append(name)
            continue
        source, target, kind = row
        rest = name[len(source) :]
        for old, new in INNER[kind].items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        if kind == "vae_attention" and array.ndim > 2:  # 1x1 convolution -> Linear
            array = array.reshape(array.shape[:2])
        out[target + rest] = array
    return out, unmatched


def convert_clip(tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """transformers' CLIPTextModel names already; older files lack the `text_model.` level."""
    out, ignored = {}, []
    for name, array in tensors.items():
        if name.endswith("position_ids"):  # a buffer transformers recomputes (not a weight)
            ignored.append(name)
            continue
        out[name if name.startswith("text_model.") else f"text_model.{name}"] = array
    return out, ignored


def convert_open_clip(
    tensors: Mapping[str, np.ndarray], config: Mapping[str, Any], projection: bool
) -> tuple[dict[str, np.ndarray], list[str]]:
    """OpenCLIP's text tower -> CLIPTextModel(WithProjection) names, split q/k/v, transposed projection."""
    hidden, depth = int(config["hidden_size"]), int(config["num_hidden_layers"])
    fixed = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
             "positional_embedding": "text_model.embeddings.position_embedding.weight",
             "ln_final.weight": "text_model.final_layer_norm.weight",
             "ln_final.bias": "text_model.final_layer_norm.bias"}  # fmt: skip
    out, ignored = {}, []
    for name, array in tensors.items():
        if name in fixed:
            out[fixed[name]] = array
        elif name == "text_projection" and projection:
            out["text_projection.weight"] = array.T  # OpenCLIP multiplies x @ P; a Linear computes x @ W.T
        elif name.startswith("transformer.resblocks."):
            layer, rest = name[len("transformer.resblocks.") :].split(".", 1)
            if int(layer) >= depth:  # SD 2.x: the last layer is not used (penultimate states)
                ignored.append(name)
                continue
            base = f"text_model.encoder.layers.{layer}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                for i, part in enumerate(("q", "k", "v")):
                    out[f"{base}self_attn.{part}_proj.{kind}"] = array[i * hidden : (i + 1) * hidden]
                continue
            old = next((o for o in OPEN_CLIP_LAYER if rest.startswith(o + ".")), None)
            if old is None:
                ignored.append(name)
                continue
            out[base + OPEN_CLIP_LAYER[old] + rest[len(old) :]] = array
        else:  # logit_scale, attn_mask, an unused text_projection: not parts of the text encoder
            ignored.append(name)
    return out, ignored


def component_state(path: Path, spec: ComponentSpec, layout_name: str) -> dict[str, np.ndarray]:
    """The component's weights from a single file, with diffusers / transformers (PyTorch-layout) names."""
    where = LAYOUTS[layout_name].components[spec.role]
    tensors = read_tensors(path, where.prefix)
    if where.format == "ldm_unet":
        state, ignored = rename(tensors, unet_prefixes(spec.config))
    elif where.format == "ldm_vae":
        state, ignored = rename(tensors, vae_prefixes(spec.config))
    elif where.format == "clip":
        state, ignored = convert_clip(tensors)
    else:
        state, ignored = convert_open_clip(tensors, spec.config, spec.type == "clip_text_model_with_projection")
    if ignored:
        log.debug("%s: %d unused tensor(s) under %s, e.g. %s", path.name, len(ignored), where.prefix, ignored[0])
    return state


def check_state(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, Any], path: Path, role: str) -> None:
    """Every weight of the module present with its shape, none left over; else one-line ConfigError."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = f"lacks {len(missing)} weight(s) of {role}, e.g. {missing[0]!r}" if missing else ""
        what += "; " if missing and extra else ""
        what += f"has {len(extra)} {role} weight(s) the model config lacks, e.g. {extra[0]!r}" if extra else ""
        raise ConfigError(f"model.weights={str(path)!r} {what}: the model config does not match the checkpoint")
    for key, shape in expected.items():
        found = tuple(state[key].shape)
        if found != tuple(shape):
            raise ConfigError(
                f"model.weights={str(path)!r}: {role} weight {key!r} has shape {list(found)} in the file but "
                f"{list(shape)} in the model config; the model config does not match the checkpoint"
            )
