"""Count the FLOPs of Paddle models: matrix products and convolutions, as PyTorch's FlopCounterMode does.

Paddle has no counter for models with keyword inputs (`paddle.flops` takes one input shape), so this
counts the operations that carry a diffusion model's compute: Linear and Conv2D layers (forward
hooks), `paddle.matmul` and the fused attention function (patched for the duration). One
multiply-add is 2 FLOPs. A product nested inside a counted call (the CPU attention fallback's
matmuls) is not counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import paddle
import paddle.nn.functional as F
from paddle import nn


def _matmul_flops(x: Any, y: Any, transpose_x: bool, transpose_y: bool) -> int:
    xs, ys = list(x.shape), list(y.shape)
    if len(xs) == 1 or len(ys) == 1:
        return 2 * math.prod(xs) * (ys[-1] if len(ys) > 1 and len(xs) == 1 else 1)
    m, k = (xs[-1], xs[-2]) if transpose_x else (xs[-2], xs[-1])
    n = ys[-2] if transpose_y else ys[-1]
    batch = max(math.prod(xs[:-2]), math.prod(ys[:-2]))
    return 2 * batch * m * n * k


class PaddleFlopCounter:
    """Context manager; `total` holds the FLOPs counted inside it."""

    def __init__(self, modules: Iterable[Any]) -> None:
        self.modules = [m for m in modules if isinstance(m, nn.Layer)]
        self.total = 0
        self._depth = 0
        self._hooks: list[Any] = []
        self._saved: dict[str, Any] = {}

    def _count(self, flops: int) -> None:
        if self._depth == 0:
            self.total += int(flops)

    def _wrap(self, fn: Any, flops_of: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self._count(flops_of(*args, **kwargs))
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1

        return counted

    def _layer_hook(self, layer: Any, inputs: tuple, output: Any) -> None:
        x = inputs[0]
        if isinstance(layer, nn.Linear):
            in_features, out_features = layer.weight.shape
            self._count(2 * math.prod(x.shape[:-1]) * in_features * out_features)
        else:  # Conv2D: every output element is a dot product over in_channels/groups x kernel
            weight = layer.weight.shape
            self._count(2 * math.prod(output.shape) * math.prod(weight[1:]))

    def __enter__(self) -> PaddleFlopCounter:
        for module in self.modules:
            for layer in module.sublayers(include_self=True):
                if isinstance(layer, nn.Linear | nn.Conv2D):
                    self._hooks.append(layer.register_forward_post_hook(self._layer_hook))
        self._saved = {"matmul": paddle.matmul, "sdpa_": getattr(F, "scaled_dot_product_attention_", None)}

        def matmul_flops(x: Any, y: Any, transpose_x: bool = False, transpose_y: bool = False, name: Any = None) -> int:
            return _matmul_flops(x, y, transpose_x, transpose_y)

        def attention_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
            b, sq, h, d = query.shape  # [batch, seq, heads, dim]
            return 4 * b * h * sq * key.shape[1] * d

        paddle.matmul = self._wrap(self._saved["matmul"], matmul_flops)
        if self._saved["sdpa_"] is not None:
            F.scaled_dot_product_attention_ = self._wrap(self._saved["sdpa_"], attention_flops)
        return self

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        paddle.matmul = self._saved["matmul"]
        if self._saved["sdpa_"] is not None:
            F.scaled_dot_product_attention_ = self._saved["sdpa_"]
