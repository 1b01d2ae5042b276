"""Initial latents: seeded Gaussian noise in the denoiser's latent shape, plus the timestep schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.graph import RunContext, Stage


def vae_scale_factor(vae: Any) -> int:
    """Pixel-to-latent downsampling of a VAE: 2 per encoder level after the first (8 for SD VAEs)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def initial_noise(shape: list[int], state: Mapping[str, Any], ctx: RunContext) -> Any:
    """Noise from the engine's own generator (as the stock pipelines draw it) or from NumPy (noise=numpy),
    which gives the same numbers on every engine."""
    engine = ctx.engine
    if ctx.noise == "numpy":
        return engine.numpy_randn(shape, state["seed"], engine.dtype)
    return engine.randn(shape, ctx.generator, engine.dtype)


class GaussianLatents(Stage):
    """Discrete-time diffusion (SD 1.x/2.x/XL): set the scheduler's timesteps, then draw noise scaled by
    the scheduler's initial sigma, in that order (Euler-type schedulers derive the sigma from the
    timesteps)."""

    def __init__(self, *, name: str, denoiser: str = "unet", vae: str = "vae", scheduler: str = "scheduler") -> None:
        super().__init__(name=name)
        self.denoiser, self.vae, self.scheduler = denoiser, vae, scheduler
        self.inputs = ("prompts", "images_per_prompt", "height", "width", "steps", "seed")
        self.outputs = ("latents", "timesteps")
        self.components = (denoiser, vae, scheduler)

    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        scheduler = ctx.components[self.scheduler]
        scheduler.set_timesteps(state["steps"])
        factor = vae_scale_factor(ctx.components[self.vae])
        shape = [
            len(state["prompts"]) * state["images_per_prompt"],
            ctx.components[self.denoiser].config.in_channels,
            state["height"] // factor,
            state["width"] // factor,
        ]
        latents = initial_noise(shape, state, ctx) * scheduler.init_noise_sigma
        return {"latents": latents, "timesteps": scheduler.timesteps}
