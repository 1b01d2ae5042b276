"""Flux attention in Paddle: joint (image + text streams) and single-stream, with RMS q/k norms and RoPE.

Parameter names follow diffusers' `Attention` as Flux configures it: to_q/to_k/to_v, norm_q/norm_k,
to_out.0 (double-stream only), and for the text stream add_q_proj/add_k_proj/add_v_proj,
norm_added_q/norm_added_k, to_add_out.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from components.paddle.flux.layers import Linear, RMSNorm, apply_rotary


def _fused_attention_available() -> bool:
    # Paddle's fused (flash) attention exists only in GPU builds; CPU builds compute it with matmuls.
    return paddle.is_compiled_with_cuda() and paddle.get_device().startswith("gpu")


def scaled_dot_product_attention(
    q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, kernel: str = "auto"
) -> paddle.Tensor:
    """softmax(q k^T / sqrt(d)) v for [B, H, S, D] tensors; kernel "math" forces the matmul path."""
    fused = kernel != "math" and _fused_attention_available() and q.dtype in (paddle.float16, paddle.bfloat16)
    if fused:
        # Paddle's fused kernel takes [B, S, H, D].
        out = F.scaled_dot_product_attention(q.transpose([0, 2, 1, 3]), k.transpose([0, 2, 1, 3]),
                                             v.transpose([0, 2, 1, 3]))  # fmt: skip
        return out.transpose([0, 2, 1, 3])
    scores = paddle.matmul(q, k, transpose_y=True) * (1.0 / math.sqrt(q.shape[-1]))
    return paddle.matmul(F.softmax(scores.cast(paddle.float32), axis=-1).cast(q.dtype), v)


class FluxAttention(nn.Layer):
    def __init__(self, dim: int, heads: int, head_dim: int, joint: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.kernel = "auto"  # set by the attention pass: "auto" (fused where available) or "math"
        inner = heads * head_dim
        self.to_q, self.to_k, self.to_v = Linear(dim, inner), Linear(dim, inner), Linear(dim, inner)
        self.norm_q, self.norm_k = RMSNorm(head_dim), RMSNorm(head_dim)
        self.joint = joint
        if joint:
            self.to_out = nn.LayerList([Linear(inner, dim), nn.Dropout(0.0)])
            self.add_q_proj, self.add_k_proj = Linear(dim, inner), Linear(dim, inner)
            self.add_v_proj = Linear(dim, inner)
            self.norm_added_q, self.norm_added_k = RMSNorm(head_dim), RMSNorm(head_dim)
            self.to_add_out = Linear(inner, dim)

    def _heads(self, x: paddle.Tensor) -> paddle.Tensor:
        return x.reshape([x.shape[0], -1, self.heads, self.head_dim]).transpose([0, 2, 1, 3])

    def forward(
        self,
        hidden_states: paddle.Tensor,
        rotary: tuple[paddle.Tensor, paddle.Tensor],
        encoder_hidden_states: paddle.Tensor | None = None,
    ) -> paddle.Tensor | tuple[paddle.Tensor, paddle.Tensor]:
        q = self.norm_q(self._heads(self.to_q(hidden_states)))
        k = self.norm_k(self._heads(self.to_k(hidden_states)))
        v = self._heads(self.to_v(hidden_states))
        if encoder_hidden_states is not None:
            q = paddle.concat([self.norm_added_q(self._heads(self.add_q_proj(encoder_hidden_states))), q], axis=2)
            k = paddle.concat([self.norm_added_k(self._heads(self.add_k_proj(encoder_hidden_states))), k], axis=2)
            v = paddle.concat([self._heads(self.add_v_proj(encoder_hidden_states)), v], axis=2)
        cos, sin = rotary
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = scaled_dot_product_attention(q, k, v, self.kernel)
        out = out.transpose([0, 2, 1, 3]).reshape([out.shape[0], -1, self.heads * self.head_dim]).cast(q.dtype)
        if encoder_hidden_states is None:
            return out
        text_len = encoder_hidden_states.shape[1]
        context, image = out[:, :text_len], out[:, text_len:]
        return self.to_out[0](image), self.to_add_out(context)
