"""The Triton kernel of groupnorm_silu: one program per (sample, group) of a 4-D NCHW or NHWC tensor.

Imported only for CUDA tensors (components/torch/groupnorm_silu.py); importing it imports triton. Each
program reads its group three times: the sum (mean), the squared deviations (variance; two passes as in
`groupnorm_silu.reference`, so a large mean does not cancel the spread), then normalize and affine (folded
into one scale and shift per channel), SiLU, and a store in the input dtype. Statistics and arithmetic
are fp32. Addresses come from the tensor's strides, so contiguous NCHW and channels-last (NHWC) inputs
run without a layout copy; the group's elements are visited in memory order for either layout
(channel-major for NCHW, pixel-major for NHWC).

Under TRITON_INTERPRET=1 (set before triton is imported) the kernel also runs on CPU tensors, which is
how tests check it without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 2048  # elements per loop iteration; groups are usually far larger (C/G * H * W)


@triton.jit
def _group_offsets(start, size, hw, channels_per_group, base, stride_c, stride_hw, CHANNELS_LAST, BLOCK):
    """The addresses, channel indices and mask of one block of a group's elements, in memory order."""
    i = start + tl.arange(0, BLOCK)
    mask = i < size
    if CHANNELS_LAST:
        c, p = i % channels_per_group, i // channels_per_group
    else:
        c, p = i // hw, i % hw
    return base + c.to(tl.int64) * stride_c + p.to(tl.int64) * stride_hw, c, mask


@triton.jit
def _group_norm_silu_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    groups,
    hw,
    channels_per_group,
    stride_n,
    stride_c,
    stride_hw,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid // groups
    g = pid % groups
    first_channel = g * channels_per_group
    base = n.to(tl.int64) * stride_n + first_channel.to(tl.int64) * stride_c
    size = channels_per_group * hw

    total = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, size, BLOCK):
        offsets, c, mask = _group_offsets(
            start, size, hw, channels_per_group, base, stride_c, stride_hw, CHANNELS_LAST, BLOCK
        )
        total += tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(total, axis=0) / size

    squares = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, size, BLOCK):
        offsets, c, mask = _group_offsets(
            start, size, hw, channels_per_group, base, stride_c, stride_hw, CHANNELS_LAST, BLOCK
        )
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        deviation = tl.where(mask, x - mean, 0.0)
        squares += deviation * deviation
    rstd = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / size + eps)

    for start in range(0, size, BLOCK):
        offsets, c, mask = _group_offsets(
            start, size, hw, channels_per_group, base, stride_c, stride_hw, CHANNELS_LAST, BLOCK
        )
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        # Normalize and affine folded into one scale and shift per channel, as in the reference.
        scale = tl.zeros([BLOCK], dtype=tl.float32) + rstd
        if HAS_WEIGHT:
            scale = scale * tl.load(w_ptr + first_channel + c, mask=mask, other=1.0).to(tl.float32)
        shift = -mean * scale
        if HAS_BIAS:
            shift = shift + tl.load(b_ptr + first_channel + c, mask=mask, other=0.0).to(tl.float32)
        y = x * scale + shift
        y = y * tl.sigmoid(y)
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


def group_norm_silu(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int, eps: float
) -> torch.Tensor:
    """silu(group_norm(x)) for a 4-D tensor; the output keeps x's dtype and memory layout."""
    if x.dim() != 4:
        raise ValueError(f"the Triton kernel takes [N, C, H, W] tensors, not {x.dim()}-D")
    n, channels, height, width = x.shape
    if channels % groups:
        raise ValueError(f"{channels} channels do not split into {groups} groups")
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if not (channels_last or x.is_contiguous()):
        x = x.contiguous()
    y = torch.empty_like(x)  # same strides as x (preserve_format on a dense tensor)
    # H and W are merged into one pixel index: valid for both layouts, where stride(H) == W * stride(W).
    size = channels // groups * height * width
    block = min(MAX_BLOCK, triton.next_power_of_2(size))
    _group_norm_silu_kernel[(n * groups,)](
        x,
        weight if weight is not None else x,  # unused pointers when absent (HAS_WEIGHT / HAS_BIAS false)
        bias if bias is not None else x,
        y,
        groups,
        height * width,
        channels // groups,
        x.stride(0),
        x.stride(1),
        x.stride(3),
        eps,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        CHANNELS_LAST=channels_last,
        BLOCK=block,
        num_warps=8 if block >= 1024 else 4,
    )
    return y
