"""Attention kernel choice on Paddle: the fused (flash / memory-efficient) kernels of GPU builds, or the
math path (matmul + softmax), which is all a CPU build has."""

from __future__ import annotations

from typing import Any

import paddle

from components.paddle.flux.attention import FluxAttention


def select_attention(component: Any, kernel: str, device: str, changes: Any, dry_run: bool) -> tuple[str | None, dict]:
    flux_layers = [m for m in component.sublayers() if isinstance(m, FluxAttention)]
    has_processors = hasattr(component, "set_attn_processor") and bool(getattr(component, "attn_processors", None))
    if not flux_layers and not has_processors:
        return "no attention layers", {}
    fused = paddle.is_compiled_with_cuda() and device.startswith("gpu")
    if kernel == "cudnn":
        return "Paddle has no cuDNN attention kernel (use flash or efficient)", {}
    if kernel in ("flash", "efficient") and not fused:
        return f"kernel={kernel} needs Paddle's fused attention, which only CUDA builds on a GPU have", {}
    choice = "math" if kernel == "math" or not fused else ("flash" if kernel in ("auto", "flash") else "efficient")
    if dry_run:
        return None, {}
    for layer in flux_layers:
        changes.set_attribute(layer, "kernel", "math" if choice == "math" else "auto")
    if has_processors and fused:
        processors = dict(component.attn_processors)  # restored exactly when the pass is removed
        changes.on_undo(lambda: component.set_attn_processor(processors))
        # ppdiffusers' switch between its fused kernels ("flash", "cutlass" = memory-efficient) and math.
        component.set_use_memory_efficient_attention_xformers(
            choice != "math", attention_op={"flash": "flash", "efficient": "cutlass"}.get(choice)
        )
    return None, {"kernel": choice, "fused_kernels_in_build": fused}
