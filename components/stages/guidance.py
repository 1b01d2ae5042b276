"""How the prediction is steered by the prompt: classifier-free guidance (CFG)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def cfg_active(scale: float) -> bool:
    """CFG runs only for scales above 1, as in the stock pipelines (1 would equal the conditional output)."""
    return scale > 1.0


class ClassifierFreeGuidance:
    """Batch negative and positive conditioning, run the denoiser once, mix: u + s * (c - u)."""

    def active(self, scale: float) -> bool:
        return cfg_active(scale)

    def batch_conditioning(self, state: Mapping[str, Any], keys: tuple[str, ...], engine: Any, scale: float) -> dict:
        """Per conditioning key: [negative; positive] when active. A key without a negative_ twin
        (e.g. SDXL's size conditioning) uses the positive value for both halves."""
        batched = {}
        for key in keys:
            positive = state[key]
            if self.active(scale):
                negative = state.get(f"negative_{key}")
                batched[key] = engine.cat([positive if negative is None else negative, positive])
            else:
                batched[key] = positive
        return batched

    def expand(self, latents: Any, engine: Any, scale: float) -> Any:
        return engine.cat([latents, latents]) if self.active(scale) else latents

    def combine(self, prediction: Any, scale: float) -> Any:
        if not self.active(scale):
            return prediction
        uncond, cond = prediction.chunk(2)
        return uncond + scale * (cond - uncond)


class NoGuidance:
    """The prediction as the model makes it: for guidance-distilled models (Flux.1), which take the
    guidance scale as an input instead of a second, unconditional pass."""

    def active(self, scale: float) -> bool:
        return False

    def batch_conditioning(self, state: Mapping[str, Any], keys: tuple[str, ...], engine: Any, scale: float) -> dict:
        return {key: state[key] for key in keys}

    def expand(self, latents: Any, engine: Any, scale: float) -> Any:
        return latents

    def combine(self, prediction: Any, scale: float) -> Any:
        return prediction
