"""The Flux transformer (Flux.1-dev / schnell) in Paddle, loadable from diffusers checkpoints.

No installable ppdiffusers release has Flux. This is diffusers' `FluxTransformer2DModel` written for
Paddle: 19 double-stream blocks (separate image and text weights, joint attention), 38 single-stream
blocks (concatenated sequence, parallel attention + MLP), AdaLN-Zero modulation, 3-axis RoPE over text
and image position ids, and timestep + guidance + pooled-text conditioning. Its state dict has
diffusers' parameter names and shapes, so `transformer/` of a diffusers Flux directory (safetensors,
sharded or not, fp32/fp16/bf16) loads as is.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import paddle
from paddle import nn

from components.paddle.flux.attention import FluxAttention
from components.paddle.flux.layers import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
    FeedForward,
    Linear,
    TimeTextGuidanceEmbedding,
    layer_norm_no_affine,
    rope_frequencies,
)
from components.paddle.runtime import import_ppdiffusers
from components.paddle.safetensors_io import load_safetensors_folder

# Through the engine's importer, which undoes ppdiffusers' import-time patches of torch and NumPy.
_configuration = import_ppdiffusers().configuration_utils
ConfigMixin, register_to_config = _configuration.ConfigMixin, _configuration.register_to_config


def _clip_fp16(x: paddle.Tensor) -> paddle.Tensor:
    return x.clip(-65504, 65504) if x.dtype == paddle.float16 else x


class FluxTransformerBlock(nn.Layer):
    """Double-stream block: image and text keep their own weights and meet in joint attention."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1, self.norm1_context = AdaLayerNormZero(dim), AdaLayerNormZero(dim)
        self.attn = FluxAttention(dim, heads, head_dim, joint=True)
        self.norm2, self.norm2_context = layer_norm_no_affine(dim), layer_norm_no_affine(dim)
        self.ff, self.ff_context = FeedForward(dim), FeedForward(dim)

    def forward(self, hidden: Any, context: Any, temb: Any, rotary: tuple) -> tuple[Any, Any]:
        norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden, temb)
        norm_context, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(context, temb)
        attn_out, context_attn_out = self.attn(norm_hidden, rotary, encoder_hidden_states=norm_context)

        hidden = hidden + gate_msa.unsqueeze(1) * attn_out
        norm_hidden = self.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden = hidden + gate_mlp.unsqueeze(1) * self.ff(norm_hidden)

        context = context + c_gate_msa.unsqueeze(1) * context_attn_out
        norm_context = self.norm2_context(context) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        context = context + c_gate_mlp.unsqueeze(1) * self.ff_context(norm_context)
        return _clip_fp16(context), hidden


class FluxSingleTransformerBlock(nn.Layer):
    """Single-stream block on the concatenated [text; image] sequence: attention and MLP in parallel."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZeroSingle(dim)
        self.proj_mlp = Linear(dim, self.mlp_hidden_dim)
        self.proj_out = Linear(dim + self.mlp_hidden_dim, dim)
        self.attn = FluxAttention(dim, heads, head_dim, joint=False)

    def forward(self, hidden: Any, temb: Any, rotary: tuple) -> Any:
        residual = hidden
        norm_hidden, gate = self.norm(hidden, temb)
        mlp = paddle.nn.functional.gelu(self.proj_mlp(norm_hidden), approximate=True)
        attn = self.attn(norm_hidden, rotary)
        hidden = gate.unsqueeze(1) * self.proj_out(paddle.concat([attn, mlp], axis=2))
        return _clip_fp16(residual + hidden)


class FluxTransformer2DModel(nn.Layer, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        out_channels: int | None = None,  # None: in_channels (Flux Fill: 384 in, 64 out; text-to-image refuses it)
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, ...] = (16, 56, 56),
    ) -> None:
        super().__init__()
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(
                f"axes_dims_rope {list(axes_dims_rope)} must sum to attention_head_dim={attention_head_dim}"
            )
        self.out_channels = out_channels or in_channels
        self.inner_dim = num_attention_heads * attention_head_dim
        dim, heads, head_dim = self.inner_dim, num_attention_heads, attention_head_dim
        self.time_text_embed = TimeTextGuidanceEmbedding(dim, pooled_projection_dim, guidance_embeds)
        self.context_embedder = Linear(joint_attention_dim, dim)
        self.x_embedder = Linear(in_channels, dim)
        self.transformer_blocks = nn.LayerList([FluxTransformerBlock(dim, heads, head_dim) for _ in range(num_layers)])
        self.single_transformer_blocks = nn.LayerList(
            [FluxSingleTransformerBlock(dim, heads, head_dim) for _ in range(num_single_layers)]
        )
        self.norm_out = AdaLayerNormContinuous(dim, dim)
        self.proj_out = Linear(dim, patch_size * patch_size * self.out_channels)

    @property
    def dtype(self) -> Any:
        return self.x_embedder.weight.dtype

    def rotary_embedding(self, txt_ids: Any, img_ids: Any) -> tuple[Any, Any]:
        """RoPE cos/sin for the [text; image] sequence (a pass may cache this across steps)."""
        txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
        img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        return rope_frequencies(paddle.concat([txt_ids, img_ids], axis=0), list(self.config.axes_dims_rope))

    def forward(
        self,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        pooled_projections: Any = None,
        timestep: Any = None,
        img_ids: Any = None,
        txt_ids: Any = None,
        guidance: Any = None,
        joint_attention_kwargs: dict | None = None,
        return_dict: bool = True,
    ) -> Any:
        hidden = self.x_embedder(hidden_states)
        timestep = timestep.cast(hidden.dtype) * 1000
        guidance = guidance.cast(hidden.dtype) * 1000 if guidance is not None else None
        if (guidance is None) != (self.time_text_embed.guidance_embedder is None):
            raise ValueError("pass guidance exactly when the model has guidance_embeds")
        temb = self.time_text_embed(timestep, guidance, pooled_projections)
        context = self.context_embedder(encoder_hidden_states)
        rotary = self.rotary_embedding(txt_ids, img_ids)
        for block in self.transformer_blocks:
            context, hidden = block(hidden, context, temb, rotary)
        hidden = paddle.concat([context, hidden], axis=1)
        for block in self.single_transformer_blocks:
            hidden = block(hidden, temb, rotary)
        hidden = hidden[:, context.shape[1] :, ...]
        output = self.proj_out(self.norm_out(hidden, temb))
        return (output,) if not return_dict else {"sample": output}

    @classmethod
    def from_pretrained(cls, folder: str, paddle_dtype: str | None = None, **_: Any) -> FluxTransformer2DModel:
        """Load a diffusers `transformer/` folder (config.json + safetensors, sharded or not)."""
        folder_path = Path(folder)
        with open(folder_path / cls.config_name, encoding="utf-8") as f:
            config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
        known = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        unknown = sorted(set(config) - set(known))
        if unknown:  # a key that may change the model: refused, never dropped silently
            raise ValueError(
                f"{folder_path / cls.config_name}: FluxTransformer2DModel keys {unknown} are unknown to the Paddle "
                f"port, which takes {known}"
            )
        previous = paddle.get_default_dtype()
        paddle.set_default_dtype(paddle_dtype or "float32")
        try:
            with paddle.LazyGuard():  # parameters are filled from the checkpoint, not initialized first
                model = cls(**config)
        finally:
            paddle.set_default_dtype(previous)
        state = load_safetensors_folder(folder_path, "diffusion_pytorch_model")
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{folder}: checkpoint does not fit FluxTransformer2DModel{dict(config)}: "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        for name, value in state.items():
            if list(value.shape) != list(expected[name].shape):
                raise ValueError(
                    f"{folder}: {name} has shape {list(value.shape)}, the model expects {list(expected[name].shape)}"
                )
        model.set_state_dict({k: v.cast(expected[k].dtype) for k, v in state.items()})
        model.eval()
        return model
