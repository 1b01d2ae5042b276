"""Sliced and tiled VAE decoding, as a hook on the VAE's `decode`.

Both engines' AutoencoderKL (diffusers, ppdiffusers 0.29) already decode one image at a time (`use_slicing`)
and in overlapping tiles blended linearly (`use_tiling`, `tile_sample_min_size`, `tile_latent_min_size`,
`tile_overlap_factor`): the hook sets those for the duration of one call and puts the VAE's own values back
after it, so nothing outside a run's decode changes and removing the hook leaves the VAE as it was. Tiling
is switched on per call, only when the image is larger than the threshold.

Tiled decoding is not faithful to the untiled one: every tile normalizes (GroupNorm) with its own statistics
and the decoder's mid-block attention sees only its tile. Measured on shapes_sd15 (128 and 256 px, tiles of
64-128 px, overlap 0.25-0.5): up to 80-216 levels apart, 15-30 on average; with the untiled GroupNorm statistics
forced into every tile, still 39-72 (the attention and the receptive field beyond the overlap). No overlap or
blend choice reaches 2 levels; see tests/e2e/test_memory_modes.py.
"""

from __future__ import annotations

from typing import Any

from components.stages.latents import vae_scale_factor
from runner.hooks import ModelHook

# The AutoencoderKL attributes the hook sets during a call (both libraries name them alike).
ATTRIBUTES = ("use_slicing", "use_tiling", "tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")


def can_slice_and_tile(vae: Any) -> bool:
    return all(hasattr(vae, name) for name in ATTRIBUTES)


class VaeDecodeHook(ModelHook):
    """Decode sliced (one image at a time) and/or tiled above `threshold` pixels; counts what it did."""

    def __init__(self, *, slicing: bool, tiling: bool, threshold: int, tile_size: int, overlap: float) -> None:
        self.slicing, self.tiling = slicing, tiling
        self.threshold, self.tile_size, self.overlap = threshold, tile_size, overlap
        self.calls = self.sliced = self.tiled = 0

    def new_forward(self, module: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
        latents = args[0] if args else kwargs["z"]
        factor = vae_scale_factor(module)
        height, width = latents.shape[-2] * factor, latents.shape[-1] * factor
        tiled = self.tiling and max(height, width) > self.threshold
        settings = {
            "use_slicing": self.slicing,
            "use_tiling": tiled,
            "tile_sample_min_size": self.tile_size,
            "tile_latent_min_size": self.tile_size // factor,
            "tile_overlap_factor": self.overlap,
        }
        saved = {name: getattr(module, name) for name in ATTRIBUTES}
        for name, value in settings.items():
            setattr(module, name, value)
        try:
            output = call(*args, **kwargs)
        finally:
            for name, value in saved.items():
                setattr(module, name, value)
        self.calls += 1
        self.sliced += int(self.slicing and latents.shape[0] > 1)
        self.tiled += int(tiled)
        return output

    def report(self) -> dict[str, Any]:
        return {"decode_calls": self.calls, "sliced_calls": self.sliced, "tiled_calls": self.tiled}
