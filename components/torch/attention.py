"""Attention kernel choice for diffusers models on PyTorch (scaled_dot_product_attention backends)."""

from __future__ import annotations

import functools
from typing import Any

import torch

BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}


def _enabled_backends(device: torch.device) -> dict[str, bool]:
    if device.type != "cuda":
        return {"flash": True, "math": True}  # the CPU SDPA has a flash-style kernel and the math one
    cuda = torch.backends.cuda
    return {
        "flash": cuda.flash_sdp_enabled(),
        "efficient": cuda.mem_efficient_sdp_enabled(),
        "cudnn": cuda.cudnn_sdp_enabled() if hasattr(cuda, "cudnn_sdp_enabled") else False,
        "math": cuda.math_sdp_enabled(),
    }


def select_attention(component: Any, kernel: str, device: torch.device, dry_run: bool) -> tuple[str | None, dict]:
    processors = getattr(component, "attn_processors", None)
    if not processors:
        return "no attention processors", {}
    if kernel != "auto" and device.type != "cuda" and kernel not in ("flash", "math"):
        return f"kernel={kernel} exists only on CUDA; the CPU offers flash and math", {}
    if dry_run:
        return None, {}
    details = {
        "kernel": kernel,
        "processors": sorted({type(p).__name__ for p in processors.values()}),
        "sdpa_backends_enabled": _enabled_backends(device),
    }
    if kernel != "auto":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, BACKENDS[kernel])
        original = component.forward

        @functools.wraps(original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            with sdpa_kernel([backend]):
                return original(*args, **kwargs)

        object.__setattr__(component, "forward", forward)  # instance attribute: Module.__call__ finds it
    return None, details
