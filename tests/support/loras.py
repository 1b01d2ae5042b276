"""LoRA files for tests: random low-rank pairs for a model's attention layers, written in the formats trainers
ship (kohya / sd-scripts, diffusers / PEFT), from the module names and shapes of a loaded torch component."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

# The layers LoRA trainers target by default: attention projections (UNet / transformer and CLIP).
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj", "add_q_proj",
           "add_k_proj", "add_v_proj", "to_add_out", "proj_mlp", "proj_out")  # fmt: skip
KOHYA_PREFIX = {"unet": "lora_unet", "transformer": "lora_transformer", "text_encoder": "lora_te1",
                "text_encoder_2": "lora_te2"}  # fmt: skip


def target_layers(component: Any, limit: int | None = None) -> dict[str, tuple[int, ...]]:
    """Dotted name -> weight shape ([out, in]) of the component's Linear layers a trainer would target."""
    from torch import nn

    found = {}
    for name, module in component.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(TARGETS) and "attentions" not in name.split(".")[-1]:
            found[name] = tuple(module.weight.shape)
    items = sorted(found.items())
    return dict(items[:limit] if limit else items)


def random_pairs(
    layers: Mapping[str, tuple[int, ...]], rank: int, seed: int, std: float = 0.3
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (down [rank, in], up [out, rank]) drawn from a seeded normal distribution."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for name, (out, inp) in layers.items():
        down = (rng.standard_normal((rank, inp)) * std / np.sqrt(inp)).astype(np.float32)
        up = (rng.standard_normal((out, rank)) * std).astype(np.float32)
        pairs[name] = (down, up)
    return pairs


def trainer_name(role: str, name: str) -> str:
    """A module name as trainers write it: CLIP's layers under `text_model.`, the level transformers 4 has
    (transformers 5's CLIPTextModel lacks it; the runner reads both spellings)."""
    if role.startswith("text_encoder") and name.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
        return "text_model." + name
    return name


def write_kohya(
    path: Path,
    pairs_by_role: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    alpha: float | None,
    names: Mapping[str, str] | None = None,
) -> Path:
    """kohya format: lora_unet_<name with _>.lora_down.weight / .lora_up.weight / .alpha. `names` renames
    a role's dotted names first (SGM names for SDXL's UNet)."""
    tensors = {}
    for role, pairs in pairs_by_role.items():
        for name, (down, up) in pairs.items():
            name = trainer_name(role, (names or {}).get(name, name))
            stem = f"{KOHYA_PREFIX[role]}_{name.replace('.', '_')}"
            tensors[f"{stem}.lora_down.weight"] = down
            tensors[f"{stem}.lora_up.weight"] = up
            if alpha is not None:
                tensors[f"{stem}.alpha"] = np.array(alpha, dtype=np.float32)
    save_file(tensors, str(path))
    return path


def write_peft(path: Path, pairs_by_role: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]) -> Path:
    """diffusers / PEFT format: <role>.<name>.lora_A.weight / .lora_B.weight (alpha = rank)."""
    tensors = {}
    for role, pairs in pairs_by_role.items():
        for name, (down, up) in pairs.items():
            tensors[f"{role}.{trainer_name(role, name)}.lora_A.weight"] = down
            tensors[f"{role}.{trainer_name(role, name)}.lora_B.weight"] = up
    save_file(tensors, str(path))
    return path
