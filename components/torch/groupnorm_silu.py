"""GroupNorm followed by SiLU as one operation: the reference implementation and the dispatch to the kernel.

`group_norm_silu(x, weight, bias, groups, eps)` equals `F.silu(F.group_norm(x, groups, weight, bias, eps))`
within the precision's rounding, computed as one fused operation: per (sample, group) the mean, then the
variance of the deviations from it (two passes, fp32, as the Triton kernel does), then normalize, affine
and SiLU in fp32, rounded once to the input's dtype (the unfused pair rounds twice in fp16/bf16).

CUDA tensors run the Triton kernel (components/torch/groupnorm_silu_triton.py, imported only then, so the
module works without triton installed); every other device runs `reference`, the same algorithm written
in torch operations, so that CPU runs verify the algorithm the kernel implements. Both keep the input's
memory layout (NCHW or channels-last), so the channels_last pass stays NHWC end to end.
"""

from __future__ import annotations

import torch


def group_norm_silu(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int, eps: float
) -> torch.Tensor:
    """silu(group_norm(x)) fused; the output has x's shape, dtype and memory layout."""
    if x.is_cuda and x.dim() == 4:
        from components.torch import groupnorm_silu_triton  # lazily: triton is needed on CUDA only

        return groupnorm_silu_triton.group_norm_silu(x, weight, bias, groups, eps)
    return reference(x, weight, bias, groups, eps)


def reference(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int, eps: float
) -> torch.Tensor:
    """The kernel's algorithm in torch operations (any device, [N, C, *spatial] inputs of any layout)."""
    n, channels = x.shape[:2]
    if channels % groups:
        raise ValueError(f"{channels} channels do not split into {groups} groups")
    values = x.float()
    # Statistics per (sample, group): the mean, then the mean squared deviation from it (two passes:
    # no cancellation when the mean is large against the spread, as E[x^2] - E[x]^2 would have).
    grouped = values.reshape(n, groups, -1)
    mean = grouped.mean(dim=-1)
    var = (grouped - mean.unsqueeze(-1)).square().mean(dim=-1)
    rstd = torch.rsqrt(var + eps)
    # Normalize and affine folded into one scale and shift per (sample, channel), so the full-size tensor is
    # touched by one multiply-add and the SiLU: y = x * scale + shift, scale = rstd * w, shift = b - mean * scale.
    scale = rstd.repeat_interleave(channels // groups, dim=1)
    if weight is not None:
        scale = scale * weight.float()
    shift = -mean.repeat_interleave(channels // groups, dim=1) * scale
    if bias is not None:
        shift = shift + bias.float()
    # Broadcast over the spatial dimensions of x itself: elementwise ops on it keep its memory layout (a
    # channels-last input gives a channels-last output).
    per_channel = (n, channels) + (1,) * (x.dim() - 2)
    y = torch.addcmul(shift.reshape(per_channel), values, scale.reshape(per_channel))
    return torch.nn.functional.silu(y, inplace=True).to(x.dtype)  # y is this function's own tensor


class ActivationAfterFusedNorms(torch.nn.Module):
    """Stands for a block's activation module once its norms are fused: inputs of the fused norms' rank are
    their outputs, already activated, and pass through; others (a ResNet block's 2-D time embedding, which
    shares the activation module) get the original activation."""

    def __init__(self, original: torch.nn.Module, fused_rank: int) -> None:
        super().__init__()
        self.original = original
        self.fused_rank = fused_rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.dim() == self.fused_rank else self.original(x)


class FusedGroupNormSiLU(torch.nn.GroupNorm):
    """Stands where a GroupNorm was and computes GroupNorm+SiLU fused, with that layer's own parameters.

    A module, not a hook on the GroupNorm's call: backend=inductor bypasses hooks on submodules while its
    compiled code runs (components/backends/torch_backends.py), which would drop the fusion. It shares the
    original's Parameter objects (no copy; the state_dict keys stay `norm1.weight`, ...) and is a GroupNorm for
    isinstance checks.
    """

    def __init__(self, norm: torch.nn.GroupNorm) -> None:
        super().__init__(norm.num_groups, norm.num_channels, norm.eps, affine=False)  # allocates nothing
        self.affine = norm.affine
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_silu(x, self.weight, self.bias, self.num_groups, self.eps)
