"""Fused projections for Paddle layers (see components/torch/fusion.py for the idea).

Two Linear layouts occur: Paddle's nn.Linear stores its weight [in, out] (fused along axis 1), this
project's Flux Linear stores [out, in] as PyTorch does (fused along axis 0).
"""

from __future__ import annotations

from typing import Any

import paddle
from paddle import nn

from components.fusion_cache import SharedProduct
from components.paddle.flux.layers import Linear as TorchLayoutLinear


def is_linear(module: Any) -> bool:
    """A plain Linear (a LoRA-carrying one is not fused: its adapter would be lost)."""
    return isinstance(module, nn.Linear | TorchLayoutLinear) and getattr(module, "lora_layer", None) is None


def _out_axis(layer: Any) -> int:
    return 1 if isinstance(layer, nn.Linear) else 0


def _new_linear(template: Any, in_features: int, out_features: int, has_bias: bool, cls: type | None = None) -> Any:
    """A Linear like `template` (layout, dtype); of class `cls` when given (a subclass such as
    ppdiffusers' LoRACompatibleLinear, whose callers pass it an extra scale argument)."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(str(template.weight.dtype).replace("paddle.", ""))
    try:
        if isinstance(template, nn.Linear):
            return (cls or nn.Linear)(in_features, out_features, bias_attr=None if has_bias else False)
        return (cls or TorchLayoutLinear)(in_features, out_features, bias=has_bias)
    finally:
        paddle.set_default_dtype(previous)


def in_features(layer: Any) -> int:
    return layer.weight.shape[1 - _out_axis(layer)]


class FusedProjection(nn.Layer):
    def __init__(self, linear: Any, sizes: list[int], classes: list[type]) -> None:
        super().__init__()
        self.linear = linear
        self.sizes = sizes
        self.classes = classes  # of the fused layers, restored by split
        self._shared = SharedProduct(len(sizes))

    def part(self, x: Any, index: int) -> Any:
        return self._shared.take(x, index, lambda v: paddle.split(self.linear(v), self.sizes, axis=-1))


class ProjectionPart(nn.Layer):
    def __init__(self, holder: FusedProjection, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "_holder", holder)  # not a sublayer: its weights belong to the holder
        self.index = index

    def forward(self, x: Any, *_: Any, **__: Any) -> Any:
        # Extra arguments (the LoRA scale some processors pass) do not apply: fused layers carry no LoRA.
        return self._holder.part(x, self.index)


def fuse(linears: list[Any]) -> tuple[FusedProjection, list[ProjectionPart]]:
    first = linears[0]
    axis = _out_axis(first)
    sizes = [layer.weight.shape[axis] for layer in linears]
    has_bias = first.bias is not None
    fused = _new_linear(first, in_features(first), sum(sizes), has_bias)
    fused.weight.set_value(paddle.concat([layer.weight for layer in linears], axis=axis))
    if has_bias:
        fused.bias.set_value(paddle.concat([layer.bias for layer in linears], axis=0))
    holder = FusedProjection(fused, sizes, [type(layer) for layer in linears])
    return holder, [ProjectionPart(holder, i) for i in range(len(linears))]


def split(holder: FusedProjection) -> list[Any]:
    fused = holder.linear
    axis = _out_axis(fused)
    weights = paddle.split(fused.weight, holder.sizes, axis=axis)
    biases = paddle.split(fused.bias, holder.sizes, axis=0) if fused.bias is not None else [None] * len(holder.sizes)
    layers = []
    for size, weight, bias, cls in zip(holder.sizes, weights, biases, holder.classes):
        layer = _new_linear(fused, in_features(fused), size, bias is not None, cls)
        layer.weight.set_value(weight)
        if bias is not None:
            layer.bias.set_value(bias)
        layers.append(layer)
    return layers
