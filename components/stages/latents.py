"""Initial latents: seeded Gaussian noise in the denoiser's latent layout, plus the timestep schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from runner.errors import ConfigError
from runner.graph import RunContext, Stage


def vae_scale_factor(vae: Any) -> int:
    """Pixel-to-latent downsampling of a VAE: 2 per encoder level after the first (8 for SD VAEs)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def initial_noise(shape: list[int], state: Mapping[str, Any], ctx: RunContext) -> Any:
    """Noise from the engine's own generator (as the stock pipelines draw it) or from NumPy (noise=numpy),
    which gives the same numbers on every engine.

    Requests merged into one batch (state["seed_rows"]) each get the block of rows their own seed draws
    when they run alone, so merging never changes an image.
    """
    engine = ctx.engine
    groups = state.get("seed_rows") or ()
    if not groups:
        if ctx.noise == "numpy":
            return engine.numpy_randn(shape, state["seed"], engine.dtype)
        return engine.randn(shape, ctx.generator, engine.dtype)
    if sum(rows for _, rows in groups) != shape[0]:
        raise ValueError(f"seed_rows {groups} do not add up to the batch of {shape[0]} rows")
    blocks = []
    for seed, rows in groups:
        block = [rows, *shape[1:]]
        if ctx.noise == "numpy":
            blocks.append(engine.numpy_randn(block, seed, engine.dtype))
        else:
            blocks.append(engine.randn(block, engine.generator(seed), engine.dtype))
    return engine.cat(blocks, dim=0)


class _LatentStage(Stage):
    def __init__(self, *, name: str, denoiser: str, vae: str, scheduler: str) -> None:
        super().__init__(name=name)
        self.denoiser, self.vae, self.scheduler = denoiser, vae, scheduler
        self.inputs = ("prompts", "images_per_prompt", "height", "width", "steps", "seed", "seed_rows")
        self.outputs = ("latents", "timesteps")
        self.components = (denoiser, vae, scheduler)

    def _shape(self, state: Mapping[str, Any], ctx: RunContext, channels: int, multiple: int = 1) -> list[int]:
        factor = vae_scale_factor(ctx.components[self.vae]) * multiple
        batch = len(state["prompts"]) * state["images_per_prompt"]
        return [batch, channels, state["height"] // factor * multiple, state["width"] // factor * multiple]


class GaussianLatents(_LatentStage):
    """Discrete-time diffusion (SD 1.x/2.x/XL): set the scheduler's timesteps, then draw noise scaled by
    the scheduler's initial sigma, in that order (Euler-type schedulers derive the sigma from the
    timesteps)."""

    def __init__(self, *, name: str, denoiser: str = "unet", vae: str = "vae", scheduler: str = "scheduler") -> None:
        super().__init__(name=name, denoiser=denoiser, vae=vae, scheduler=scheduler)

    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        scheduler = ctx.components[self.scheduler]
        scheduler.set_timesteps(state["steps"])
        channels = ctx.components[self.denoiser].config.in_channels
        latents = initial_noise(self._shape(state, ctx, channels), state, ctx) * scheduler.init_noise_sigma
        return {"latents": latents, "timesteps": scheduler.timesteps}


class FlowLatents(_LatentStage):
    """Flow matching on a latent image (SD3): unscaled noise, timesteps from the scheduler's own shift."""

    def __init__(
        self, *, name: str, denoiser: str = "transformer", vae: str = "vae", scheduler: str = "scheduler"
    ) -> None:
        super().__init__(name=name, denoiser=denoiser, vae=vae, scheduler=scheduler)

    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        scheduler = ctx.components[self.scheduler]
        scheduler.set_timesteps(state["steps"])
        channels = ctx.components[self.denoiser].config.in_channels
        return {
            "latents": initial_noise(self._shape(state, ctx, channels), state, ctx),
            "timesteps": scheduler.timesteps,
        }


def pack_latents(latents: Any) -> Any:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: 2x2 patches as tokens, as Flux's transformer reads them."""
    b, c, h, w = latents.shape
    patches = latents.reshape([b, c, h // 2, 2, w // 2, 2]).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape([b, (h // 2) * (w // 2), c * 4])


def unpack_latents(latents: Any, height: int, width: int) -> Any:
    """Inverse of pack_latents for a latent image of `height` x `width`."""
    b, _, channels = latents.shape
    patches = latents.reshape([b, height // 2, width // 2, channels // 4, 2, 2]).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape([b, channels // 4, height, width])


def image_position_ids(height: int, width: int) -> np.ndarray:
    """[(H/2)(W/2), 3] ids: axis 0 is zero (text/image), axes 1 and 2 are the patch row and column."""
    ids = np.zeros((height // 2, width // 2, 3), dtype=np.float32)
    ids[..., 1] = np.arange(height // 2)[:, None]
    ids[..., 2] = np.arange(width // 2)[None, :]
    return ids.reshape(-1, 3)


def resolution_shift(sequence_length: int, config: Any) -> float:
    """mu for a resolution-dependent timestep shift: linear in the number of image tokens between
    (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift)."""
    get = config.get if isinstance(config, Mapping) else lambda k, d: getattr(config, k, d)
    base_len, max_len = get("base_image_seq_len", 256), get("max_image_seq_len", 4096)
    base_shift, max_shift = get("base_shift", 0.5), get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return sequence_length * slope + (base_shift - slope * base_len)


class PackedFlowLatents(_LatentStage):
    """Flux: noise [B, C, H, W] packed into 2x2 patch tokens, their position ids, and sigmas spaced
    linearly from 1 to 1/steps, shifted by the image sequence length (mu) when the scheduler asks."""

    def __init__(
        self, *, name: str, denoiser: str = "transformer", vae: str = "vae", scheduler: str = "scheduler"
    ) -> None:
        super().__init__(name=name, denoiser=denoiser, vae=vae, scheduler=scheduler)
        self.outputs = ("latents", "timesteps", "latent_image_ids")

    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        engine, scheduler = ctx.engine, ctx.components[self.scheduler]
        config = ctx.components[self.denoiser].config
        out_channels = getattr(config, "out_channels", None) or config.in_channels
        if out_channels != config.in_channels:  # Flux Fill / Redux-style inputs: image conditioning is concatenated
            raise ConfigError(
                f"{self.denoiser} takes {config.in_channels} input channels and gives {out_channels}: an "
                "image-conditioned Flux (Fill) needs image inputs, which text-to-image does not give"
            )
        channels = config.in_channels // 4
        shape = self._shape(state, ctx, channels, multiple=2)
        latents = pack_latents(initial_noise(shape, state, ctx))
        steps = state["steps"]
        sigmas = np.linspace(1.0, 1 / steps, steps)
        scheduler.set_timesteps(sigmas=sigmas, mu=resolution_shift(latents.shape[1], scheduler.config))
        ids = engine.cast(engine.tensor(image_position_ids(shape[2], shape[3])), engine.dtype)
        return {"latents": latents, "timesteps": scheduler.timesteps, "latent_image_ids": ids}
