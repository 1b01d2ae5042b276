"""Prompt encoding: CLIP (SD 1.x/2.x, SDXL), CLIP-L + CLIP-G + T5 (SD3), CLIP pooled + T5 (Flux)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from components.stages.common import repeat_per_image
from components.stages.guidance import GUIDANCE_INPUTS, wants_negative
from runner.errors import ConfigError
from runner.graph import RunContext, Stage

log = logging.getLogger(__name__)

LAYERS = ("last", "penultimate")
MAX_T5_TOKENS = 512  # the T5 tokenizers of SD3 and Flux checkpoints (and their pipelines) stop at 512


def _pair(name: str, pair: Mapping[str, str]) -> tuple[str, str]:
    if set(pair) != {"tokenizer", "text_encoder"}:
        raise ConfigError(f"stage {name!r}: an encoder needs exactly 'tokenizer' and 'text_encoder', got {dict(pair)}")
    return pair["tokenizer"], pair["text_encoder"]


def _warn_truncation(tokenizer: Any, texts: Sequence[str], max_length: int) -> None:
    for text in texts:
        count = len(tokenizer(text)["input_ids"])
        if count > max_length:
            log.warning("prompt truncated to %d of its %d tokens: %r", max_length, count, text)


def encode(ctx: RunContext, pair: tuple[str, str], texts: Sequence[str], max_length: int, hidden: bool) -> Any:
    """Tokenize (pad/truncate to max_length) and run one text encoder; returns its output object."""
    tokenizer, encoder = ctx.components[pair[0]], ctx.components[pair[1]]
    _warn_truncation(tokenizer, texts, max_length)
    ids = ctx.engine.tokenize(tokenizer, list(texts), max_length)
    return encoder(ids, output_hidden_states=hidden)


def negatives_for(state: Mapping[str, Any]) -> list[str]:
    return list(state["negative_prompts"] or [""] * len(state["prompts"]))


class ClipTextEncode(Stage):
    """Encode prompts (and negative prompts when the run's guidance method uses them) with CLIP encoders.

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
        self.pairs = [_pair(name, pair) for pair in encoders]
        self.layer = layer
        self.pooled = pooled
        self.force_zeros_default = force_zeros_for_empty_prompt
        self.inputs = ("prompts", "negative_prompts", "images_per_prompt", *GUIDANCE_INPUTS)
        self.components = tuple(role for pair in self.pairs for role in pair)
        outputs = ["prompt_embeds", "negative_prompt_embeds"]
        if pooled:
            outputs += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        self.outputs = tuple(outputs)

    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        n = state["images_per_prompt"]
        embeds, pooled = self._encode(state["prompts"], ctx)
        negative, negative_pooled = None, None
        if wants_negative(state, ctx):
            force_zeros = ctx.pipeline_config.get("force_zeros_for_empty_prompt", self.force_zeros_default)
            if state["negative_prompts"] is None and force_zeros:
                negative = ctx.engine.zeros_like(embeds)
                negative_pooled = ctx.engine.zeros_like(pooled) if pooled is not None else None
            else:
                negative, negative_pooled = self._encode(negatives_for(state), ctx)
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

    def _encode(self, texts: Sequence[str], ctx: RunContext) -> tuple[Any, Any]:
        engine = ctx.engine
        hidden, pooled = [], None
        for pair in self.pairs:
            max_length = ctx.components[pair[0]].model_max_length
            output = encode(ctx, pair, texts, max_length, hidden=self.layer != "last")
            hidden.append(output[0] if self.layer == "last" else output.hidden_states[-2])
            pooled = output[0]
        embeds = hidden[0] if len(hidden) == 1 else engine.cat(hidden, dim=-1)
        embeds = engine.cast(embeds, engine.dtype)
        return embeds, (engine.cast(pooled, engine.dtype) if self.pooled else None)


def _check_t5_length(name: str, max_sequence_length: int) -> None:
    if not 1 <= max_sequence_length <= MAX_T5_TOKENS:
        raise ConfigError(
            f"model.max_sequence_length={max_sequence_length} is out of range for stage {name!r}: "
            f"T5 takes 1 to {MAX_T5_TOKENS} tokens (longer prompts are truncated, with a warning)"
        )


class SD3TextEncode(Stage):
    """SD3's three encoders: CLIP-L and CLIP-G penultimate states concatenated and zero-padded (or, wider than
    T5, cropped) to T5's width, then T5's states appended on the sequence axis; pooled = both CLIP projections
    side by side."""

    def __init__(
        self,
        *,
        name: str,
        clip_encoders: Sequence[Mapping[str, str]],
        t5: Mapping[str, str],
        max_sequence_length: int = 256,
    ) -> None:
        super().__init__(name=name)
        _check_t5_length(name, max_sequence_length)
        self.clips = [_pair(name, pair) for pair in clip_encoders]
        self.t5 = _pair(name, t5)
        self.max_sequence_length = max_sequence_length
        self.inputs = ("prompts", "negative_prompts", "images_per_prompt", *GUIDANCE_INPUTS)
        self.outputs = (
            "prompt_embeds",
            "negative_prompt_embeds",
            "pooled_prompt_embeds",
            "negative_pooled_prompt_embeds",
        )
        self.components = (*(role for pair in self.clips for role in pair), *self.t5)

    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        n = state["images_per_prompt"]
        embeds, pooled = self._encode(state["prompts"], ctx)
        out = {"prompt_embeds": repeat_per_image(embeds, n), "pooled_prompt_embeds": repeat_per_image(pooled, n)}
        out["negative_prompt_embeds"] = out["negative_pooled_prompt_embeds"] = None
        if wants_negative(state, ctx):
            negative, negative_pooled = self._encode(negatives_for(state), ctx)
            out["negative_prompt_embeds"] = repeat_per_image(negative, n)
            out["negative_pooled_prompt_embeds"] = repeat_per_image(negative_pooled, n)
        return out

    def _encode(self, texts: Sequence[str], ctx: RunContext) -> tuple[Any, Any]:
        engine = ctx.engine
        hidden, pooled = [], []
        for pair in self.clips:
            output = encode(ctx, pair, texts, ctx.components[pair[0]].model_max_length, hidden=True)
            hidden.append(engine.cast(output.hidden_states[-2], engine.dtype))
            pooled.append(output[0])
        clip = engine.cat(hidden, dim=-1)
        t5 = engine.cast(encode(ctx, self.t5, texts, self.max_sequence_length, hidden=False)[0], engine.dtype)
        width = t5.shape[-1] - clip.shape[-1]
        if width >= 0:
            clip = engine.cat([clip, engine.zeros([clip.shape[0], clip.shape[1], width], clip.dtype)], dim=-1)
        else:  # the stock pipelines pad with F.pad by a negative amount here, which crops: so do we
            clip = clip[:, :, : t5.shape[-1]]
        embeds = engine.cat([clip, t5], dim=-2)
        return embeds, engine.cat(pooled, dim=-1)


class FluxTextEncode(Stage):
    """Flux's encoders: CLIP-L's pooled output as the global conditioning, T5's hidden states as the
    sequence; text position ids are zeros. No negative prompt: Flux.1 is guidance-distilled."""

    def __init__(
        self,
        *,
        name: str,
        clip: Mapping[str, str],
        t5: Mapping[str, str],
        max_sequence_length: int = 512,
    ) -> None:
        super().__init__(name=name)
        _check_t5_length(name, max_sequence_length)
        self.clip, self.t5 = _pair(name, clip), _pair(name, t5)
        self.max_sequence_length = max_sequence_length
        self.inputs = ("prompts", "images_per_prompt")
        self.outputs = ("prompt_embeds", "pooled_prompt_embeds", "text_ids")
        self.components = (*self.clip, *self.t5)

    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        engine, n, texts = ctx.engine, state["images_per_prompt"], state["prompts"]
        clip_max = ctx.components[self.clip[0]].model_max_length
        pooled = engine.cast(encode(ctx, self.clip, texts, clip_max, hidden=False)[1], engine.dtype)
        embeds = engine.cast(encode(ctx, self.t5, texts, self.max_sequence_length, hidden=False)[0], engine.dtype)
        text_ids = engine.cast(engine.tensor(np.zeros((embeds.shape[1], 3), dtype=np.float32)), engine.dtype)
        return {
            "prompt_embeds": repeat_per_image(embeds, n),
            "pooled_prompt_embeds": repeat_per_image(pooled, n),
            "text_ids": text_ids,
        }
