"""Denoiser calls inside the denoise loop: map state entries to the model's keyword arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.errors import ConfigError


class UNetPredictor:
    """One UNet2DConditionModel call: noise (or v) prediction for a batch of latents at timestep t.

    conditioning: UNet keyword -> state key (e.g. encoder_hidden_states: prompt_embeds).
    added_conditioning: added_cond_kwargs entry -> state key (SDXL: text_embeds, time_ids).
    """

    def __init__(
        self,
        *,
        denoiser: str = "unet",
        conditioning: Mapping[str, str] | None = None,
        added_conditioning: Mapping[str, str] | None = None,
    ) -> None:
        self.denoiser = denoiser
        self.conditioning = dict(conditioning or {"encoder_hidden_states": "prompt_embeds"})
        self.added_conditioning = dict(added_conditioning or {})
        self.state_keys = tuple(self.conditioning.values()) + tuple(self.added_conditioning.values())
        self.components = (denoiser,)

    def check(self, components: Mapping[str, Any]) -> None:
        unet = components[self.denoiser]
        if getattr(unet.config, "time_cond_proj_dim", None) is not None:
            raise ConfigError(
                "this UNet takes a guidance-scale embedding (time_cond_proj_dim, as LCM models do); "
                "the unet predictor does not provide one"
            )

    def __call__(self, components: Mapping[str, Any], latents: Any, t: Any, cond: Mapping[str, Any]) -> Any:
        kwargs = {name: cond[key] for name, key in self.conditioning.items()}
        if self.added_conditioning:
            kwargs["added_cond_kwargs"] = {name: cond[key] for name, key in self.added_conditioning.items()}
        return components[self.denoiser](latents, t, return_dict=False, **kwargs)[0]
