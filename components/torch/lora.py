"""How PyTorch layers hold the weights a LoRA changes (components/lora.py merges the deltas).

Linear and Conv2d weights are [out, in, ...] already; a projection fused by qkv_fusion keeps its rows in
the fused Linear, so a LoRA on `to_q` writes those rows in place. Every write is in place (`copy_` on the
same Parameter), so a compiled module (backend=inductor) sees the new weights without compiling again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from components.torch.fusion import ProjectionPart


def _weight_rows(layer: Any) -> tuple[torch.Tensor, slice | None] | None:
    if isinstance(layer, nn.Linear | nn.Conv2d):
        return layer.weight, None
    if isinstance(layer, ProjectionPart):
        holder = layer._holder
        start = sum(holder.sizes[: layer.index])
        return holder.linear.weight, slice(start, start + holder.sizes[layer.index])
    return None


def _view(layer: Any) -> torch.Tensor:
    weight, rows = _weight_rows(layer)  # type: ignore[misc]
    return weight if rows is None else weight[rows]


class TorchLoraWeights:
    def layers(self, component: Any) -> Iterator[tuple[str, Any]]:
        for name, module in component.named_modules():
            if _weight_rows(module) is not None:
                yield name, module

    def shape(self, layer: Any) -> tuple[int, ...] | None:
        return tuple(_view(layer).shape) if _weight_rows(layer) is not None else None

    def snapshot(self, layer: Any) -> torch.Tensor:
        return _view(layer).detach().to("cpu", copy=True)

    def restore(self, layer: Any, snapshot: torch.Tensor) -> None:
        with torch.no_grad():
            _view(layer).copy_(snapshot)

    def add(self, layer: Any, delta: np.ndarray) -> None:
        with torch.no_grad():
            view = _view(layer)
            update = torch.from_numpy(np.ascontiguousarray(delta)).to(view.device)
            if view.dtype == torch.float32:
                view.add_(update)
            else:  # fp16 / bf16: the sum in float32, rounded once
                view.copy_((view.float() + update).to(view.dtype))
