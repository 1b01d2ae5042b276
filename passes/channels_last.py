"""channels_last: convolution weights and inputs in NHWC memory layout (PyTorch).

Requires: a component with 2-D convolutions (UNets, VAEs).
Changes: every 4-D parameter and buffer is stored channels-last (`module.to(memory_format=...)`), and the
component's entry methods (its call; a VAE's `decode` and `encode`) hand it their image-shaped inputs
channels-last, so the convolution kernels (cuDNN, oneDNN) run NHWC end to end instead of converting at every
layer. The values are the same; kernels for the two layouts may round differently (within the precision's
verification tolerance). Removing the pass stores everything contiguous again. PyTorch only: Paddle picks
the layout per layer (`data_format`), not per tensor.
"""

from __future__ import annotations

from typing import Any

from runner.hooks import ModelHook
from runner.pass_base import Pass, PassContext

ENTRY_METHODS = ("forward", "decode", "encode")


class ChannelsLastInputs(ModelHook):
    """Hands 4-D tensor arguments to the method channels-last."""

    def __init__(self, memory_format: Any) -> None:
        self.memory_format = memory_format

    def pre_forward(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        def convert(value: Any) -> Any:
            if hasattr(value, "dim") and value.dim() == 4:
                return value.contiguous(memory_format=self.memory_format)
            return value

        return tuple(convert(a) for a in args), {k: convert(v) for k, v in kwargs.items()}


class ChannelsLast(Pass):
    name = "channels_last"
    engines = ("torch",)
    requires = "2-D convolutions (UNets, VAEs)"
    changes = "4-D weights and image-shaped inputs stored channels-last (NHWC); contiguous again on removal"
    defaults = ()  # 1.2x on one small model on a CPU (docs/benchmarks.md); the GPU figures decide
    eager_only = True  # a converted graph (OpenVINO, ONNX Runtime) picks its own layout

    def check(self, component: Any, ctx: PassContext) -> str | None:
        import torch

        if not any(isinstance(m, torch.nn.Conv2d) for m in component.modules()):
            return "no 2-D convolutions"
        return None

    def apply(self, component: Any, ctx: PassContext) -> dict[str, Any]:
        import torch

        component.to(memory_format=torch.channels_last)
        ctx.changes.on_undo(lambda: component.to(memory_format=torch.contiguous_format))
        hooked = []
        for method in ENTRY_METHODS:
            if method == "forward" or callable(getattr(component, method, None)):
                ctx.changes.register_hook(component, self.name, ChannelsLastInputs(torch.channels_last), method)
                hooked.append(method)
        return {"entry_methods": hooked}
