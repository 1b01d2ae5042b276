"""Fused projections for PyTorch modules: one Linear computing several, with exact split-back.

`fuse` concatenates the weights of several Linear layers that read the same input (Q, K, V of one
attention module) into one Linear and returns stand-ins for the originals: the first stand-in called
with an input runs the fused product, the others return their slices of that same result. Attention
processors keep calling `to_q(x)`, `to_k(x)`, `to_v(x)` unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from components.fusion_cache import SharedProduct


def is_linear(module: Any) -> bool:
    """A plain Linear (a LoRA-carrying one is not fused: its adapter would be lost)."""
    return isinstance(module, nn.Linear) and getattr(module, "lora_layer", None) is None


def in_features(module: nn.Linear) -> int:
    return module.in_features


class FusedProjection(nn.Module):
    def __init__(self, linear: nn.Linear, sizes: list[int], classes: list[type]) -> None:
        super().__init__()
        self.linear = linear
        self.sizes = sizes
        self.classes = classes  # of the fused layers (Linear subclasses stay what they were), restored by split
        self._shared = SharedProduct(len(sizes))

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return self._shared.take(x, index, lambda v: self.linear(v).split(self.sizes, dim=-1))


class ProjectionPart(nn.Module):
    """Stands where one of the fused Linear layers was; holds no weights of its own."""

    def __init__(self, holder: FusedProjection, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "_holder", holder)  # not a submodule: its weights belong to the holder
        self.index = index
        self.in_features = holder.linear.in_features
        self.out_features = holder.sizes[index]

    def forward(self, x: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
        # Extra arguments (the LoRA scale some processors pass) do not apply: fused layers carry no LoRA.
        return self._holder.part(x, self.index)


def fuse(linears: list[nn.Linear]) -> tuple[FusedProjection, list[ProjectionPart]]:
    first = linears[0]
    has_bias = first.bias is not None
    sizes = [layer.out_features for layer in linears]
    fused = nn.Linear(
        first.in_features, sum(sizes), bias=has_bias, device=first.weight.device, dtype=first.weight.dtype
    )
    with torch.no_grad():
        fused.weight.copy_(torch.cat([layer.weight for layer in linears], dim=0))
        if has_bias:
            fused.bias.copy_(torch.cat([layer.bias for layer in linears], dim=0))
    fused.requires_grad_(False)
    holder = FusedProjection(fused, sizes, [type(layer) for layer in linears])
    return holder, [ProjectionPart(holder, i) for i in range(len(linears))]


def split(holder: FusedProjection) -> list[nn.Linear]:
    """The original Linear layers back, bit for bit."""
    layers, start = [], 0
    weight, bias = holder.linear.weight, holder.linear.bias
    for size, cls in zip(holder.sizes, holder.classes):
        layer = cls(weight.shape[1], size, bias=bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight[start : start + size])
            if bias is not None:
                layer.bias.copy_(bias[start : start + size])
        layer.requires_grad_(False)
        layers.append(layer)
        start += size
    return layers
