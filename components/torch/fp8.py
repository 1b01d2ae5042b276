"""fp8 e4m3 Linear layers for the fp8_linear pass (PyTorch).

A weight is quantized once, per output row (scale = row amax / 448, the largest finite e4m3fn value); the
activations are quantized per row (one scale per token) at every call, so one outlier token does not
flatten the others. `torch._scaled_mm` multiplies the two fp8 matrices and applies both scales: fp8 tensor
cores on CUDA (compute capability 8.9 and newer), a reference kernel on the CPU (which is how the pass is
checked on machines without such a GPU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
MIN_CAPABILITY = (8, 9)  # Ada / Hopper and newer: the first GPUs with fp8 matrix units
ALIGNMENT = 16  # cuBLASLt's fp8 GEMM needs K and N (in_features, out_features) divisible by 16
_TINY = 1e-12  # an all-zero row keeps a finite scale (its quantized values are all 0)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (q [M, K] e4m3fn, scale [M, 1] float32) with x ~= q * scale, each row scaled to fill +-448."""
    scale = x.detach().abs().amax(dim=-1, keepdim=True).float().clamp(min=_TINY) / FP8_MAX
    q = (x.detach().float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.contiguous(), scale  # contiguous: _scaled_mm on CUDA wants the left operand row-major


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


def qualifies(linear: nn.Linear) -> bool:
    """Whether the fp8 GEMM takes this layer's shape (the CUDA rule, applied on every device alike)."""
    return linear.in_features % ALIGNMENT == 0 and linear.out_features % ALIGNMENT == 0


def fp8_refusal(device: str) -> str | None:
    """None when `device` can run fp8 GEMMs (the CPU, CUDA >= 8.9); otherwise why not, in one line."""
    if not device.startswith("cuda"):
        return None
    capability = tuple(torch.cuda.get_device_capability(device))
    if capability >= MIN_CAPABILITY:
        return None
    return (
        f"pass fp8_linear needs a GPU with fp8 matrix units (compute capability "
        f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer: Ada, Hopper, Blackwell); {device} "
        f"({torch.cuda.get_device_name(device)}) has compute capability {capability[0]}.{capability[1]}; "
        "remove fp8_linear from passes"
    )


class Fp8Linear(nn.Module):
    """Stands where an nn.Linear was: the same call, computed from fp8 weights and fp8 activations.

    The weight is kept as `weight_fp8` (not `weight`), so code that edits Linear weights in place (LoRA merging)
    fails loudly here instead of writing unscaled values into fp8 storage. The bias is the original Parameter.
    With `reference` (the original weight, wherever it is kept), the first call also runs the unquantized
    product on the same input and keeps the relative error (`first_call_error`), then drops the reference.
    """

    def __init__(self, linear: nn.Linear, reference: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight)
        self.register_buffer("weight_fp8", weight)
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # (1, N): scale_b of _scaled_mm
        self.bias = linear.bias
        self.reference = reference
        self.first_call_error: torch.Tensor | None = None  # a tensor: no device sync inside the call
        # Squared norms of the weight's quantization error and of the weight: summed over layers, their ratio
        # is the component's relative weight error.
        original = linear.weight.detach().float()
        self.weight_error_sq = float((dequantize_rows(weight, scale) - original).pow(2).sum())
        self.weight_norm_sq = float(original.pow(2).sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = quantize_rows(x.reshape(-1, self.in_features))
        # Row-wise scaled GEMMs on CUDA write bfloat16 (float16 / float32 only with some cuBLAS / CUTLASS
        # versions); the CPU kernel writes any float type.
        out_dtype = torch.bfloat16 if x.is_cuda else x.dtype
        bias = self.bias
        fused = bias if bias is not None and bias.dtype == out_dtype else None
        out = torch._scaled_mm(
            q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale, bias=fused, out_dtype=out_dtype
        ).to(x.dtype)
        if bias is not None and fused is None:
            out = out + bias.to(x.dtype)
        out = out.reshape(*x.shape[:-1], self.out_features)
        if self.reference is not None:
            self._measure(x, out)
        return out

    def _measure(self, x: torch.Tensor, out: torch.Tensor) -> None:
        # One weight on the device at a time (the reference may live on the host), once per layer.
        weight, self.reference = self.reference.to(device=x.device, dtype=x.dtype), None
        exact = nn.functional.linear(x, weight, self.bias).float()
        self.first_call_error = ((out.float() - exact).norm() / exact.norm().clamp(min=_TINY)).detach()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_layer(linear: nn.Linear, measure: bool) -> tuple[Fp8Linear, Callable[[], None]]:
    """The fp8 stand-in for `linear` (the caller puts it in place and records that), with the original weight
    moved to the host so that the accelerator holds only the fp8 copy; returns it and the undo of the move."""
    weight = linear.weight
    fp8 = Fp8Linear(linear)
    if weight.device.type != "cpu":
        weight.data = weight.data.to("cpu")  # the same Parameter object, its storage on the host
    fp8.reference = weight.data if measure else None  # on the CPU: the original itself, no copy

    def restore() -> None:
        # Back onto the device the fp8 layer lives on now (the component may have moved since).
        target = fp8.weight_fp8.device
        if weight.device != target:
            weight.data = weight.data.to(target)

    return fp8, restore
