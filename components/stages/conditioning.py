"""SDXL micro-conditioning: original size, crop top-left and target size, embedded by the UNet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runner.graph import RunContext, Stage


class SizeConditioning(Stage):
    """Build `add_time_ids` = original_size + crops_coords_top_left + target_size for every image.

    original_size / target_size default to the requested (height, width), as in the stock pipeline.
    The UNet's added-embedding width is checked against what these ids and the pooled text
    embedding make, so a mismatched text encoder fails with the two numbers.
    """

    def __init__(
        self,
        *,
        name: str,
        denoiser: str = "unet",
        pooled_encoder: str = "text_encoder_2",
        crops_coords_top_left: Sequence[int] = (0, 0),
        original_size: Sequence[int] | None = None,
        target_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(name=name)
        self.denoiser, self.pooled_encoder = denoiser, pooled_encoder
        self.crop = tuple(crops_coords_top_left)
        self.original_size = tuple(original_size) if original_size else None
        self.target_size = tuple(target_size) if target_size else None
        self.inputs = ("prompts", "images_per_prompt", "height", "width")
        self.outputs = ("add_time_ids",)
        self.components = (denoiser, pooled_encoder)

    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        size = (state["height"], state["width"])
        ids = list((self.original_size or size) + self.crop + (self.target_size or size))
        unet = ctx.components[self.denoiser]
        projection_dim = ctx.components[self.pooled_encoder].config.projection_dim
        made = unet.config.addition_time_embed_dim * len(ids) + projection_dim
        expected = unet.add_embedding.linear_1.in_features
        if made != expected:
            raise ValueError(
                f"the UNet's added embedding takes {expected} features but the size ids and pooled text "
                f"embedding make {made}; the text encoder does not fit this UNet"
            )
        rows = len(state["prompts"]) * state["images_per_prompt"]
        return {"add_time_ids": ctx.engine.tensor([ids] * rows, dtype=ctx.engine.dtype)}
