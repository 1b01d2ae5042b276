"""VAE decoding to uint8 images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from components.stages.latents import unpack_latents, vae_scale_factor
from runner.graph import RunContext, Stage


class VaeDecode(Stage):
    """Undo the latent scaling (and shift, or per-channel mean/std where the VAE config has them), decode,
    map [-1, 1] to uint8 [N, H, W, 3] exactly as the stock image processors do."""

    def __init__(self, *, name: str, vae: str = "vae", packed: bool = False) -> None:
        super().__init__(name=name)
        self.vae = vae
        self.packed = packed  # Flux: latents are 2x2 patch tokens, unpacked to an image first
        self.inputs = ("latents", "height", "width") if packed else ("latents",)
        self.outputs = ("images",)
        self.components = (vae,)

    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        engine = ctx.engine
        vae = ctx.components[self.vae]
        latents = state["latents"]
        if self.packed:
            factor = vae_scale_factor(vae) * 2
            latents = unpack_latents(latents, state["height"] // factor * 2, state["width"] // factor * 2)
        latents = unscale_latents(latents, vae.config, engine)
        image = vae.decode(latents, return_dict=False)[0]
        image = (image / 2 + 0.5).clip(0, 1)
        array = engine.to_numpy(image).transpose(0, 2, 3, 1)
        return {"images": (array * 255).round().astype(np.uint8)}


def unscale_latents(latents: Any, config: Any, engine: Any) -> Any:
    mean = getattr(config, "latents_mean", None)
    std = getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        channels = len(mean)
        mean_t = engine.cast(engine.tensor(mean).reshape([1, channels, 1, 1]), latents.dtype)
        std_t = engine.cast(engine.tensor(std).reshape([1, channels, 1, 1]), latents.dtype)
        return latents * std_t / config.scaling_factor + mean_t
    shift = getattr(config, "shift_factor", None)
    latents = latents / config.scaling_factor
    return latents + shift if shift is not None else latents
