"""How Paddle layers hold the weights a LoRA changes (components/lora.py merges the deltas).

Paddle's nn.Linear stores its weight [in, out], the transpose of PyTorch's layout that LoRA deltas come in;
this project's Flux Linear and nn.Conv2D store [out, ...] as PyTorch does. A projection fused by qkv_fusion
keeps its part in the fused Linear. Writes go through `set_value` on the same Parameter (in place), so
compiled programs that hold it (backend=paddle_jit) read the new weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import paddle
from paddle import nn

from components.paddle.flux.layers import Linear as TorchLayoutLinear
from components.paddle.fusion import ProjectionPart


def _slot(layer: Any) -> tuple[Any, int, slice | None] | None:
    """(parameter, its axis of output features, the range of it this layer owns; None: all)."""
    if isinstance(layer, nn.Linear):
        return layer.weight, 1, None
    if isinstance(layer, TorchLayoutLinear | nn.Conv2D):
        return layer.weight, 0, None
    if isinstance(layer, ProjectionPart):
        holder = layer._holder
        weight = holder.linear.weight
        axis = 1 if isinstance(holder.linear, nn.Linear) else 0
        start = sum(holder.sizes[: layer.index])
        return weight, axis, slice(start, start + holder.sizes[layer.index])
    return None


def _index(axis: int, rows: slice) -> tuple[slice, ...]:
    return (slice(None), rows) if axis == 1 else (rows,)


def _read(layer: Any) -> Any:
    weight, axis, rows = _slot(layer)  # type: ignore[misc]
    return weight if rows is None else weight[_index(axis, rows)]


def _write(layer: Any, value: Any) -> None:
    weight, axis, rows = _slot(layer)  # type: ignore[misc]
    if rows is None:
        weight.set_value(value)
        return
    full = weight.clone()
    full[_index(axis, rows)] = value
    weight.set_value(full)


class PaddleLoraWeights:
    def layers(self, component: Any) -> Iterator[tuple[str, Any]]:
        for name, layer in component.named_sublayers():
            if _slot(layer) is not None:
                yield name, layer

    def shape(self, layer: Any) -> tuple[int, ...] | None:
        slot = _slot(layer)
        if slot is None:
            return None
        shape = list(_read(layer).shape)
        return (shape[1], shape[0], *shape[2:]) if slot[1] == 1 else tuple(shape)

    def snapshot(self, layer: Any) -> Any:
        return _read(layer).clone().cpu()

    def restore(self, layer: Any, snapshot: Any) -> None:
        _write(layer, snapshot.to(_slot(layer)[0].place))  # type: ignore[index]

    def add(self, layer: Any, delta: np.ndarray) -> None:
        weight, axis, _ = _slot(layer)  # type: ignore[misc]
        if axis == 1:
            delta = delta.T
        current = _read(layer)
        merged = current.astype("float32") + paddle.to_tensor(np.ascontiguousarray(delta), place=weight.place)
        _write(layer, merged.astype(current.dtype))
