"""Attention kernel choice for diffusers models on PyTorch (scaled_dot_product_attention backends)."""

from __future__ import annotations

from typing import Any

import torch

from runner.hooks import ModelHook

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


class SdpaKernelHook(ModelHook):
    """Runs the module's call with scaled_dot_product_attention restricted to one backend."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def new_forward(self, module: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel([self.backend]):
            return call(*args, **kwargs)


def select_attention(
    component: Any, kernel: str, device: torch.device, changes: Any, dry_run: bool
) -> tuple[str | None, dict]:
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
        from torch.nn.attention import SDPBackend

        changes.register_hook(component, "attention", SdpaKernelHook(getattr(SDPBackend, BACKENDS[kernel])))
    return None, details
