"""Paddle building blocks of the Flux transformer, with diffusers' parameter names and shapes.

Linear weights are stored [out_features, in_features] as in PyTorch (Paddle's own Linear stores
[in, out]), so a diffusers safetensors checkpoint loads tensor for tensor, with no transposes.
Each block computes what its diffusers namesake computes, in the same order of operations.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn


class Linear(nn.Layer):
    """y = x W^T + b with W stored [out, in]; matmul(transpose_y=True) reads it without a copy."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)  # PyTorch's default Linear init range
        init = nn.initializer.Uniform(-bound, bound)
        self.weight = self.create_parameter([out_features, in_features], default_initializer=init)
        self.bias = self.create_parameter([out_features], default_initializer=init, is_bias=True) if bias else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = paddle.matmul(x, self.weight, transpose_y=True)
        return y + self.bias if self.bias is not None else y


class RMSNorm(nn.Layer):
    """diffusers.models.normalization.RMSNorm with a weight (the q/k norms of Flux attention)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = self.create_parameter([dim], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        variance = x.cast(paddle.float32).pow(2).mean(-1, keepdim=True)
        x = x * paddle.rsqrt(variance + self.eps)
        if self.weight.dtype in (paddle.float16, paddle.bfloat16):
            x = x.cast(self.weight.dtype)
        return x * self.weight


def layer_norm_no_affine(dim: int, eps: float = 1e-6) -> nn.LayerNorm:
    return nn.LayerNorm(dim, epsilon=eps, weight_attr=False, bias_attr=False)


class AdaLayerNormZero(nn.Layer):
    """LayerNorm modulated by 6 vectors from the conditioning (shift/scale/gate for attention and MLP)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = Linear(dim, 6 * dim)
        self.norm = layer_norm_no_affine(dim)

    def forward(self, x: paddle.Tensor, emb: paddle.Tensor) -> tuple[paddle.Tensor, ...]:
        emb = self.linear(F.silu(emb))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.chunk(6, axis=1)
        x = self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormZeroSingle(nn.Layer):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = Linear(dim, 3 * dim)
        self.norm = layer_norm_no_affine(dim)

    def forward(self, x: paddle.Tensor, emb: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        shift_msa, scale_msa, gate_msa = self.linear(F.silu(emb)).chunk(3, axis=1)
        return self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None], gate_msa


class AdaLayerNormContinuous(nn.Layer):
    """The output norm: scale then shift from the conditioning (note the order: scale first)."""

    def __init__(self, dim: int, conditioning_dim: int) -> None:
        super().__init__()
        self.linear = Linear(conditioning_dim, 2 * dim)
        self.norm = layer_norm_no_affine(dim)

    def forward(self, x: paddle.Tensor, conditioning: paddle.Tensor) -> paddle.Tensor:
        scale, shift = self.linear(F.silu(conditioning).cast(x.dtype)).chunk(2, axis=1)
        return self.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :]


class GELUProjection(nn.Layer):
    """diffusers' GELU module: a projection followed by tanh-approximated GELU."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = Linear(dim_in, dim_out)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.gelu(self.proj(x), approximate=True)


class FeedForward(nn.Layer):
    """net.0 = GELU projection to 4x, net.1 = dropout (identity at inference), net.2 = projection back."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.LayerList([GELUProjection(dim, dim * mult), nn.Dropout(0.0), Linear(dim * mult, dim)])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


def timestep_embedding(timesteps: paddle.Tensor, dim: int = 256, max_period: int = 10000) -> paddle.Tensor:
    """Sinusoidal embedding, cos first (flip_sin_to_cos=True, downscale_freq_shift=0), as Flux uses."""
    half = dim // 2
    exponent = -math.log(max_period) * paddle.arange(0, half, dtype=paddle.float32) / half
    emb = timesteps[:, None].cast(paddle.float32) * paddle.exp(exponent)[None, :]
    return paddle.concat([paddle.cos(emb), paddle.sin(emb)], axis=-1)


class MLPEmbedder(nn.Layer):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding and PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = Linear(in_dim, out_dim)
        self.linear_2 = Linear(out_dim, out_dim)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeTextGuidanceEmbedding(nn.Layer):
    """Timestep (+ guidance, for guidance-distilled models) + pooled text embedding, summed."""

    def __init__(self, embedding_dim: int, pooled_projection_dim: int, guidance_embeds: bool) -> None:
        super().__init__()
        self.timestep_embedder = MLPEmbedder(256, embedding_dim)
        self.guidance_embedder = MLPEmbedder(256, embedding_dim) if guidance_embeds else None
        self.text_embedder = MLPEmbedder(pooled_projection_dim, embedding_dim)

    def forward(self, timestep: paddle.Tensor, guidance: paddle.Tensor | None, pooled: paddle.Tensor) -> paddle.Tensor:
        emb = self.timestep_embedder(timestep_embedding(timestep).cast(pooled.dtype))
        if self.guidance_embedder is not None:
            emb = emb + self.guidance_embedder(timestep_embedding(guidance).cast(pooled.dtype))
        return emb + self.text_embedder(pooled)


def rope_frequencies(ids: paddle.Tensor, axes_dim: list[int], theta: int = 10000) -> tuple[paddle.Tensor, ...]:
    """cos/sin [S, sum(axes_dim)] for 3-axis position ids [S, 3], computed in float64 as diffusers does,
    each frequency repeated twice (interleaved real/imaginary pairs)."""
    pos = ids.cast(paddle.float32).cast(paddle.float64)
    cos_out, sin_out = [], []
    for axis, dim in enumerate(axes_dim):
        freqs = 1.0 / (theta ** (paddle.arange(0, dim, 2, dtype=paddle.float64)[: dim // 2] / dim))
        angles = paddle.outer(pos[:, axis], freqs)
        cos_out.append(paddle.repeat_interleave(paddle.cos(angles), 2, axis=1).cast(paddle.float32))
        sin_out.append(paddle.repeat_interleave(paddle.sin(angles), 2, axis=1).cast(paddle.float32))
    return paddle.concat(cos_out, axis=-1), paddle.concat(sin_out, axis=-1)


def apply_rotary(x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
    """Rotate interleaved pairs of x [B, H, S, D] by the angles behind cos/sin [S, D]."""
    pairs = x.reshape([*x.shape[:-1], -1, 2])
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = paddle.stack([-imag, real], axis=-1).flatten(3)
    out = x.cast(paddle.float32) * cos[None, None] + rotated.cast(paddle.float32) * sin[None, None]
    return out.cast(x.dtype)
