"""Paddle dynamic-to-static compilation of the denoiser: `paddle_jit` (any device) and `cinn`.

`paddle.jit.to_static(layer, full_graph=True)` traces the denoiser into one static program per input
signature (first call per shape pays the trace: ~12 s for the tiny SDXL UNet on a 2-core CPU), which
Paddle's executor then runs without Python overhead. With `backend: CINN` the program is compiled by
the CINN compiler (operator fusion, generated kernels); that needs a CUDA build compiled with CINN.
Full-graph mode is used because SOT mode re-traced on every Python-level branch (34 s first call) and
was slower than eager on the CPU measurements behind this choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.backends.base import denoiser_roles
from components.backends.paddle_device import PaddleDeviceBackend, PaddleDeviceOptions
from components.paddle import runtime


@dataclass(frozen=True)
class PaddleJitOptions(PaddleDeviceOptions):
    compile: list[str] = field(default_factory=denoiser_roles)  # component roles converted to static graphs
    compiler: str | None = None  # None: Paddle's executor; "CINN": the CINN compiler


class PaddleJitBackend(PaddleDeviceBackend):
    """Eager Paddle for everything, the `compile` roles (denoisers) converted to static graphs."""

    options_schema = PaddleJitOptions

    def prepare(self, components: Mapping[str, Any], engine: Any) -> dict[str, Any]:
        paddle = runtime.import_paddle()
        compiler = self.spec.options.compiler
        prepared = dict(components)
        for role in self.spec.options.compile:
            if role in prepared:
                prepared[role] = paddle.jit.to_static(prepared[role], full_graph=True, backend=compiler)
        return prepared

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "compiled": list(self.spec.options.compile)}
