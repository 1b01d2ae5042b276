"""Prompt encoding with CLIP text encoders (SD 1.x / 2.x: one encoder; SDXL: two, plus pooled output)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from components.stages.common import repeat_per_image
from components.stages.guidance import cfg_active
from runner.errors import ConfigError
from runner.graph import RunContext, Stage

log = logging.getLogger(__name__)

LAYERS = ("last", "penultimate")


class ClipTextEncode(Stage):
    """Encode prompts (and negative prompts when classifier-free guidance is on) with CLIP encoders.

    encoders: list of {tokenizer: role, text_encoder: role}; their hidden states are concatenated on
        the feature axis (SDXL concatenates CLIP-L and OpenCLIP-bigG this way).
    layer: "last" (last_hidden_state, SD 1.x/2.x) or "penultimate" (hidden_states[-2], SDXL).
    pooled: also output the first output of the last encoder (CLIPTextModelWithProjection's
        text_embeds), as SDXL's added conditioning.
    force_zeros_for_empty_prompt: with no negative prompt, use zeros as the negative embeddings
        (SDXL's default). A weights directory's model_index.json value overrides this default.
    """

    def __init__(
        self,
        *,
        name: str,
        encoders: Sequence[Mapping[str, str]],
        layer: str = "last",
        pooled: bool = False,
        force_zeros_for_empty_prompt: bool = False,
    ) -> None:
        super().__init__(name=name)
        if layer not in LAYERS:
            raise ConfigError(f"stage {name!r}: layer={layer!r} is not one of {', '.join(LAYERS)}")
        if not encoders:
            raise ConfigError(f"stage {name!r}: encoders must list at least one tokenizer/text_encoder pair")
        self.pairs = []
        for pair in encoders:
            if set(pair) != {"tokenizer", "text_encoder"}:
                raise ConfigError(
                    f"stage {name!r}: each encoder needs exactly 'tokenizer' and 'text_encoder', got {pair}"
                )
            self.pairs.append((pair["tokenizer"], pair["text_encoder"]))
        self.layer = layer
        self.pooled = pooled
        self.force_zeros_default = force_zeros_for_empty_prompt
        self.inputs = ("prompts", "negative_prompts", "images_per_prompt", "guidance")
        self.components = tuple(role for pair in self.pairs for role in pair)
        outputs = ["prompt_embeds", "negative_prompt_embeds"]
        if pooled:
            outputs += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        self.outputs = tuple(outputs)

    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        prompts = list(state["prompts"])
        n = state["images_per_prompt"]
        embeds, pooled = self._encode(prompts, ctx)
        negative, negative_pooled = None, None
        if cfg_active(state["guidance"]):
            negatives = state["negative_prompts"]
            force_zeros = ctx.pipeline_config.get("force_zeros_for_empty_prompt", self.force_zeros_default)
            if negatives is None and force_zeros:
                negative = ctx.engine.zeros_like(embeds)
                negative_pooled = ctx.engine.zeros_like(pooled) if pooled is not None else None
            else:
                negative, negative_pooled = self._encode(list(negatives or [""] * len(prompts)), ctx)
        out = {
            "prompt_embeds": repeat_per_image(embeds, n),
            "negative_prompt_embeds": None if negative is None else repeat_per_image(negative, n),
        }
        if self.pooled:
            out["pooled_prompt_embeds"] = repeat_per_image(pooled, n)
            out["negative_pooled_prompt_embeds"] = (
                None if negative_pooled is None else repeat_per_image(negative_pooled, n)
            )
        return out

    def _encode(self, texts: list[str], ctx: RunContext) -> tuple[Any, Any]:
        engine = ctx.engine
        hidden, pooled = [], None
        for tokenizer_role, encoder_role in self.pairs:
            tokenizer = ctx.components[tokenizer_role]
            encoder = ctx.components[encoder_role]
            max_length = tokenizer.model_max_length
            _warn_truncation(tokenizer, texts, max_length)
            ids = engine.tokenize(tokenizer, texts, max_length)
            output = encoder(ids, output_hidden_states=self.layer != "last")
            hidden.append(output[0] if self.layer == "last" else output.hidden_states[-2])
            pooled = output[0]
        embeds = hidden[0] if len(hidden) == 1 else engine.cat(hidden, dim=-1)
        embeds = engine.cast(embeds, engine.dtype)
        return embeds, (engine.cast(pooled, engine.dtype) if self.pooled else None)


def _warn_truncation(tokenizer: Any, texts: list[str], max_length: int) -> None:
    for text in texts:
        count = len(tokenizer(text)["input_ids"])
        if count > max_length:
            log.warning("prompt truncated to %d of its %d tokens: %r", max_length, count, text)
