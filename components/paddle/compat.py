"""A math attention for Paddle builds without fused attention kernels (CPU builds).

ppdiffusers 0.29 routes SD3's joint attention (and other processors) through
`paddle.nn.functional.scaled_dot_product_attention_`, with tensors laid out [batch, seq, heads, dim].
It defines that function only when GPU memory-efficient attention works, so on a CPU build SD3 fails
with AttributeError. This module installs the same computation written with matmul + softmax, and
only when the fused function is absent.
"""

from __future__ import annotations

import math
from typing import Any


def attention_bshd(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    training: bool = True,
    attention_op: Any = None,
) -> Any:
    """softmax(q k^T * scale + mask) v for [batch, seq, heads, dim] tensors."""
    import paddle
    import paddle.nn.functional as F

    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    q, k, v = (paddle.transpose(t, [0, 2, 1, 3]) for t in (query, key, value))
    scores = paddle.matmul(q * scale, k, transpose_y=True)
    if is_causal:
        length, source = scores.shape[-2], scores.shape[-1]
        scores = scores + paddle.triu(paddle.full([length, source], float("-inf"), dtype=scores.dtype), diagonal=1)
    elif attn_mask is not None:
        if attn_mask.dtype == paddle.bool:
            attn_mask = paddle.where(
                attn_mask,
                paddle.zeros(attn_mask.shape, dtype=scores.dtype),
                paddle.full(attn_mask.shape, float("-inf"), dtype=scores.dtype),
            )
        scores = scores + attn_mask.cast(scores.dtype)
    probs = F.softmax(scores, axis=-1)
    if dropout_p > 0.0 and training:
        probs = F.dropout(probs, dropout_p, training=training)
    return paddle.transpose(paddle.matmul(probs, v), [0, 2, 1, 3])


def install_cpu_attention_fallback() -> bool:
    """Install `attention_bshd` where ppdiffusers expects the fused kernel; True if installed."""
    import paddle.nn.functional as F

    if hasattr(F, "scaled_dot_product_attention_"):
        return False
    F.scaled_dot_product_attention_ = attention_bshd
    return True
