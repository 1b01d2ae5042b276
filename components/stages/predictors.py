"""Denoiser calls inside the denoise loop: state entries to the model's keyword arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from runner.errors import ConfigError


class Predictor:
    """A denoiser call. `batched_keys` follow the latent batch (CFG doubles them); `prepare` builds the
    per-run inputs that do not (position ids, guidance embedding input)."""

    state_keys: tuple[str, ...] = ()
    batched_keys: tuple[str, ...] = ()
    components: tuple[str, ...] = ()

    def check(self, components: Mapping[str, Any]) -> None:
        """Refuse a loaded model this predictor cannot drive correctly."""

    def prepare(self, state: Mapping[str, Any], components: Mapping[str, Any], engine: Any) -> dict[str, Any]:
        return {}

    def __call__(
        self, components: Mapping[str, Any], engine: Any, latents: Any, t: Any, cond: Mapping[str, Any]
    ) -> Any:
        raise NotImplementedError


class UNetPredictor(Predictor):
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
        self.state_keys = self.batched_keys = (*self.conditioning.values(), *self.added_conditioning.values())
        self.components = (denoiser,)

    def check(self, components: Mapping[str, Any]) -> None:
        if getattr(components[self.denoiser].config, "time_cond_proj_dim", None) is not None:
            raise ConfigError(
                "this UNet takes a guidance-scale embedding (time_cond_proj_dim, as LCM models do); "
                "the unet predictor does not provide one"
            )

    def __call__(
        self, components: Mapping[str, Any], engine: Any, latents: Any, t: Any, cond: Mapping[str, Any]
    ) -> Any:
        kwargs = {name: cond[key] for name, key in self.conditioning.items()}
        if self.added_conditioning:
            kwargs["added_cond_kwargs"] = {name: cond[key] for name, key in self.added_conditioning.items()}
        return components[self.denoiser](latents, t, return_dict=False, **kwargs)[0]


class SD3TransformerPredictor(Predictor):
    """One SD3Transformer2DModel call: the timestep broadcast over the batch, the joint text sequence and
    the pooled projections as conditioning."""

    def __init__(self, *, denoiser: str = "transformer") -> None:
        self.denoiser = denoiser
        self.state_keys = self.batched_keys = ("prompt_embeds", "pooled_prompt_embeds")
        self.components = (denoiser,)

    def __call__(
        self, components: Mapping[str, Any], engine: Any, latents: Any, t: Any, cond: Mapping[str, Any]
    ) -> Any:
        return components[self.denoiser](
            hidden_states=latents,
            timestep=t.expand([latents.shape[0]]),
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"],
            return_dict=False,
        )[0]


class FluxTransformerPredictor(Predictor):
    """One FluxTransformer2DModel call on packed latents. Guidance-distilled models (guidance_embeds)
    take the guidance scale as an input; timesteps go in divided by 1000 (the model multiplies them
    back), as the stock pipeline passes them."""

    def __init__(self, *, denoiser: str = "transformer") -> None:
        self.denoiser = denoiser
        self.batched_keys = ("prompt_embeds", "pooled_prompt_embeds")
        self.state_keys = (*self.batched_keys, "text_ids", "latent_image_ids", "guidance", "latents")
        self.components = (denoiser,)

    def prepare(self, state: Mapping[str, Any], components: Mapping[str, Any], engine: Any) -> dict[str, Any]:
        batch = state["latents"].shape[0]
        guidance = None
        if components[self.denoiser].config.guidance_embeds:
            guidance = engine.tensor(np.full([batch], state["guidance"], dtype=np.float32))
        return {
            "guidance_input": guidance,
            "text_ids": state["text_ids"],
            "latent_image_ids": state["latent_image_ids"],
        }

    def __call__(
        self, components: Mapping[str, Any], engine: Any, latents: Any, t: Any, cond: Mapping[str, Any]
    ) -> Any:
        timestep = engine.cast(t.expand([latents.shape[0]]), latents.dtype)
        return components[self.denoiser](
            hidden_states=latents,
            timestep=timestep / 1000,
            guidance=cond["guidance_input"],
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=cond["text_ids"],
            img_ids=cond["latent_image_ids"],
            return_dict=False,
        )[0]
