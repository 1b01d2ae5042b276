"""How the prediction is steered by the prompt: a guidance method, chosen per model family.

Every method implements `Guidance`, after diffusers' BaseGuidance (src/diffusers/guiders/guider_utils.py,
here without its hooks and per-step state): it says whether it needs the negative conditioning and how many
denoiser rows each image takes, batches the conditioning, expands the latents and combines the predictions.
The denoise stage applies it (its `guidance` parameter in conf/family/*.yaml); the text stages ask it, through
`ctx.guidance`, whether to encode negative prompts, instead of testing the scale themselves. A new method
(APG, a guidance interval) is one class registered under "guidance".

Methods are stateless: the run's values come in a `GuidanceParams` on every call, so one built stage list
serves any number of runs with different settings.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.graph import RunContext

log = logging.getLogger(__name__)

# The state entries (run parameters) a guidance method reads.
GUIDANCE_INPUTS: tuple[str, ...] = ("guidance", "guidance_rescale")


@dataclass(frozen=True)
class GuidanceParams:
    """The run's guidance values: the scale (run parameter `guidance`) and the CFG rescale factor."""

    scale: float
    rescale: float = 0.0

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> GuidanceParams:
        return cls(scale=state["guidance"], rescale=state["guidance_rescale"])


class Guidance(abc.ABC):
    """A guidance method. Denoiser rows per image are laid out [negative; positive] (the stock pipelines' order)."""

    def check(self, params: GuidanceParams, where: str) -> str | None:
        """Why this method cannot honour `params` (a one-line message naming `where`, e.g. "model=flux"),
        or None. Asked before any weights load."""
        return None

    @abc.abstractmethod
    def needs_negative(self, params: GuidanceParams) -> bool:
        """Whether the negative (unconditional) conditioning is used: the text stages encode it only then."""

    @abc.abstractmethod
    def rows_per_image(self, params: GuidanceParams) -> int:
        """How many rows of the denoiser's batch each image takes."""

    @abc.abstractmethod
    def batch_conditioning(
        self, state: Mapping[str, Any], keys: tuple[str, ...], engine: Any, params: GuidanceParams
    ) -> dict[str, Any]:
        """The denoiser's conditioning for each of `keys`, `rows_per_image` rows per image."""

    def expand(self, latents: Any, engine: Any, params: GuidanceParams) -> Any:
        """The latents repeated to the denoiser's batch (each copy meets one kind of conditioning)."""
        rows = self.rows_per_image(params)
        return latents if rows == 1 else engine.cat([latents] * rows)

    @abc.abstractmethod
    def combine(self, prediction: Any, params: GuidanceParams) -> Any:
        """The denoiser's batched prediction reduced to one prediction per image."""


class ClassifierFreeGuidance(Guidance):
    """Negative and positive conditioning in one batch, one denoiser call, mixed: u + s * (c - u).

    Runs only for scales above 1, as in the stock pipelines (1 would equal the conditional output).
    With guidance_rescale r > 0 the guided prediction is rescaled toward the spread of the conditional
    one (`rescale_noise_cfg`), exactly as diffusers' and ppdiffusers' SD and SDXL pipelines do.
    """

    def check(self, params: GuidanceParams, where: str) -> str | None:
        if params.rescale > 0 and not self.needs_negative(params):
            log.warning(
                "guidance_rescale=%s has no effect at guidance=%s: classifier-free guidance runs above 1 only",
                params.rescale,
                params.scale,
            )
        return None

    def needs_negative(self, params: GuidanceParams) -> bool:
        return params.scale > 1.0

    def rows_per_image(self, params: GuidanceParams) -> int:
        return 2 if self.needs_negative(params) else 1

    def batch_conditioning(
        self, state: Mapping[str, Any], keys: tuple[str, ...], engine: Any, params: GuidanceParams
    ) -> dict[str, Any]:
        """Per key: [negative; positive] when active. A key without a negative_ twin (e.g. SDXL's size
        conditioning) uses the positive value for both halves."""
        batched = {}
        for key in keys:
            positive = state[key]
            if self.needs_negative(params):
                negative = state.get(f"negative_{key}")
                batched[key] = engine.cat([positive if negative is None else negative, positive])
            else:
                batched[key] = positive
        return batched

    def combine(self, prediction: Any, params: GuidanceParams) -> Any:
        if not self.needs_negative(params):
            return prediction
        uncond, cond = prediction.chunk(2)
        guided = uncond + params.scale * (cond - uncond)
        return rescale_noise_cfg(guided, cond, params.rescale) if params.rescale > 0 else guided


def rescale_noise_cfg(guided: Any, cond: Any, factor: float) -> Any:
    """Section 3.4 of "Common Diffusion Noise Schedules and Sample Steps are Flawed" (Lin et al. 2023): scale
    the guided prediction to the conditional one's standard deviation (per image, over all other axes), then
    mix `factor` of that with the guided prediction, which keeps images from looking flat. The same operations
    in the same order as diffusers' rescale_noise_cfg, so the PyTorch engine matches its pipelines bit for
    bit; `std(axes, keepdim=True)` reads the same on Paddle and PyTorch tensors (unbiased on both)."""
    axes = list(range(1, cond.ndim))
    std_cond = cond.std(axes, keepdim=True)
    std_guided = guided.std(axes, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return factor * rescaled + (1 - factor) * guided


class NoGuidance(Guidance):
    """The prediction as the model makes it: for guidance-distilled models (Flux.1), which take the
    guidance scale as an input instead of a second, unconditional pass."""

    def check(self, params: GuidanceParams, where: str) -> str | None:
        if params.rescale > 0:
            return (
                f"guidance_rescale={params.rescale} needs classifier-free guidance, which {where} does not use "
                "(its denoise stage has guidance: none, no unconditional prediction to rescale against)"
            )
        return None

    def needs_negative(self, params: GuidanceParams) -> bool:
        return False

    def rows_per_image(self, params: GuidanceParams) -> int:
        return 1

    def batch_conditioning(
        self, state: Mapping[str, Any], keys: tuple[str, ...], engine: Any, params: GuidanceParams
    ) -> dict[str, Any]:
        return {key: state[key] for key in keys}

    def combine(self, prediction: Any, params: GuidanceParams) -> Any:
        return prediction


def wants_negative(state: Mapping[str, Any], ctx: RunContext) -> bool:
    """Whether the run's guidance method (the denoise stage's, in ctx.guidance) uses negative conditioning;
    False when no stage guides."""
    return ctx.guidance is not None and ctx.guidance.needs_negative(GuidanceParams.from_state(state))
