"""Single-file checkpoints for tests: a diffusers pipeline directory written back in the original layout.

The inverse of components/single_file.py: the UNet and VAE use the same block tables (derived from the
configs), read backwards; the tensor reshapes (1x1 convolutions, fused OpenCLIP q/k/v, the transposed text
projection) are undone here. The tests check every file this writes against diffusers' own converter
(`from_single_file`), which shares no code with either direction, so a wrong table fails there.

Like the real files, the written ones carry tensors a loader must skip: CLIP's position_ids, training-time
schedule buffers, and for SD 2.x OpenCLIP's last (unused) layer and its text projection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from components.single_file import OPEN_CLIP_LAYER, UNET_RESNET, VAE_ATTENTION, VAE_RESNET, unet_prefixes, vae_prefixes
from runner.single_file import LAYOUTS

INVERSE = {"plain": {}, "unet_resnet": UNET_RESNET, "vae_resnet": VAE_RESNET, "vae_attention": VAE_ATTENTION}


def _folder_state(folder: Path) -> dict[str, np.ndarray]:
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == 1, f"{folder}: expected one safetensors file, found {files}"
    return load_file(str(files[0]))


def with_text_model_level(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A CLIP text encoder's weights in the names original files (and transformers 4) use: transformers 5 saves
    CLIPTextModel without its `text_model.` level."""
    top = ("embeddings.", "encoder.", "final_layer_norm.")
    return {("text_model." + name if name.startswith(top) else name): array for name, array in state.items()}


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def _renamed_back(state: dict[str, np.ndarray], prefixes: list[tuple[str, str, str]]) -> dict[str, np.ndarray]:
    """diffusers names -> original names through a block table of components/single_file.py, read backwards
    (longest diffusers prefix first); the VAE's attention Linear weights become the original 1x1 convolutions."""
    table = sorted(prefixes, key=lambda row: -len(row[1]))
    out = {}
    for name, array in state.items():
        source, target, kind = next(row for row in table if name.startswith(row[1]))
        rest = name[len(target) :]
        for old, new in INVERSE[kind].items():
            if rest.startswith(new + "."):
                rest = old + rest[len(new) :]
                break
        if kind == "vae_attention" and rest.endswith("weight") and array.ndim == 2:
            array = array.reshape(*array.shape, 1, 1)
        out[source + rest] = array
    return out


def unet_to_original(state: dict[str, np.ndarray], config: dict[str, Any]) -> dict[str, np.ndarray]:
    return _renamed_back(state, unet_prefixes(config))


def vae_to_original(state: dict[str, np.ndarray], config: dict[str, Any]) -> dict[str, np.ndarray]:
    return _renamed_back(state, vae_prefixes(config))


def open_clip_to_original(
    state: dict[str, np.ndarray], config: dict[str, Any], extra_layer: bool, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """CLIPTextModel(WithProjection) -> OpenCLIP names. extra_layer: add the last layer SD 2.x does not use
    (and a text projection its CLIPTextModel lacks)."""
    hidden, depth = config["hidden_size"], config["num_hidden_layers"]
    out = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        "logit_scale": np.array(4.6052, dtype=np.float32),
    }
    if "text_projection.weight" in state:
        out["text_projection"] = np.ascontiguousarray(state["text_projection.weight"].T)
    for layer in range(depth):
        base, dst = f"text_model.encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            parts = [state[f"{base}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            out[f"{dst}attn.in_proj_{kind}"] = np.concatenate(parts, axis=0)
        for old, new in OPEN_CLIP_LAYER.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{old}.{kind}"] = state[f"{base}{new}.{kind}"]
    if extra_layer:
        last = f"transformer.resblocks.{depth - 1}."
        for name in [n for n in out if n.startswith(last)]:
            noise = rng.standard_normal(out[name].shape).astype(out[name].dtype)
            out[f"transformer.resblocks.{depth}." + name[len(last) :]] = noise
        out["text_projection"] = rng.standard_normal((hidden, hidden)).astype(np.float32)
    assert all(v.shape for v in out.values() if v.ndim) and len(out) > 4
    return out


def write_single_file(pipeline_dir: Path, layout: str, out: Path, parts: tuple[str, ...] | None = None) -> Path:
    """Write the pipeline directory's weights as one original-layout file; `parts`: only these components."""
    rng = np.random.default_rng(0)
    where = LAYOUTS[layout].components
    tensors: dict[str, np.ndarray] = {"alphas_cumprod": np.linspace(1, 0, 1000, dtype=np.float32)}
    for role, place in where.items():
        if parts is not None and role not in parts:
            continue
        folder = pipeline_dir / role
        state = _folder_state(folder)
        if place.format in ("clip", "open_clip"):
            state = with_text_model_level(state)
        if place.format == "ldm_unet":
            converted = unet_to_original(state, _config(folder))
        elif place.format == "ldm_vae":
            converted = vae_to_original(state, _config(folder))
        elif place.format == "clip":
            converted = dict(state)
            converted["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
        else:
            converted = open_clip_to_original(state, _config(folder), extra_layer=layout == "sd2", rng=rng)
        tensors.update({place.prefix + name: np.ascontiguousarray(a) for name, a in converted.items()})
    save_file(tensors, str(out), metadata={"format": "pt"})
    return out


def write_header_only(out: Path, names: list[str], shape: tuple[int, ...] = (2, 2)) -> Path:
    """A valid safetensors file holding a few small tensors with these names (for layout detection)."""
    save_file({name: np.zeros(shape, dtype=np.float32) for name in names}, str(out))
    return out


def save_pipeline(overrides: list[str], out_dir: Path) -> Path:
    """A tiny random pipeline (the torch engine's, seeded) saved by diffusers' save_pretrained, as the hub
    ships directories; `overrides` choose the model and change its architecture."""
    from runner.app import build_pipeline
    from runner.plan import plan_run
    from tests.support.configs import compose_config

    plan = plan_run(compose_config([*overrides, "backend=torch", "backend.device=cpu"]))
    built = build_pipeline(plan)
    built.engine.stock_pipeline(plan.model.pipeline_classes[0], built.components).save_pretrained(str(out_dir))
    return out_dir
