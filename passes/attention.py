"""attention: choose the attention kernel for the backend and device, and record the choice.

Requires: a component with attention (diffusers/ppdiffusers attention processors, or this project's
Flux attention). Changes: PyTorch runs its attention through scaled_dot_product_attention restricted
to the chosen kernels (flash / memory-efficient / cuDNN / math; `auto` leaves the choice to PyTorch
and records what this device offers); Paddle uses its fused memory-efficient or flash kernel where the
build has one (GPU builds) and the math fallback elsewhere. The choice lands in report.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.errors import ConfigError
from runner.pass_base import Pass, PassContext, PassOptions

KERNELS = ("auto", "flash", "efficient", "cudnn", "math")


@dataclass(frozen=True)
class AttentionOptions(PassOptions):
    kernel: str = "auto"  # one of KERNELS; auto leaves the choice to the framework and records it


class AttentionKernel(Pass):
    name = "attention"
    engines = ("paddle", "torch")
    requires = "attention layers (processors or this project's Flux attention)"
    changes = "attention computed by the chosen kernel (flash / memory-efficient / cuDNN / math), recorded"
    after = ("qkv_fusion",)
    # With kernel=auto the pass records the kernel and leaves the choice to the framework: it costs
    # nothing (CPU, tiny families: 0.97x-1.06x per step, i.e. noise) and puts the choice in the report.
    eager_only = True  # a PyTorch kernel choice: a converted graph's runtime picks its own kernels
    defaults = ("paddle", "torch")
    options_schema = AttentionOptions

    def __init__(self, options: AttentionOptions | None = None) -> None:
        super().__init__(options)
        if self.options.kernel not in KERNELS:
            raise ConfigError(f"passes.attention.kernel={self.options.kernel!r} is not one of {', '.join(KERNELS)}")

    def check(self, component: Any, ctx: PassContext) -> str | None:
        reason, _ = ctx.engine.select_attention(component, self.options.kernel, ctx.changes, dry_run=True)
        return reason

    def apply(self, component: Any, ctx: PassContext) -> dict[str, Any]:
        _, details = ctx.engine.select_attention(component, self.options.kernel, ctx.changes)
        return details
