"""Paddle dynamic-to-static compilation of the denoiser: `paddle_jit` (any device) and `cinn`.

`paddle.jit.to_static(layer.forward, full_graph=True)`, run by a hook on the layer, traces the
denoiser into one static program per input signature (first call per shape pays the trace: ~12 s for
the tiny SDXL UNet on a 2-core CPU), which Paddle's executor then runs without Python overhead.
With `backend: CINN` the program is compiled by the CINN compiler (operator fusion, generated
kernels); that needs a CUDA build compiled with CINN.
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
from runner.hooks import HookRegistry, ModelHook, bypassed, register_hook, registries_in

HOOK_NAME = "paddle_jit"


class PaddleStaticHook(ModelHook):
    """Runs the module's call as a static program: `paddle.jit.to_static` of the module's own method,
    traced per input signature on first use. Registered first on its module (nothing below it), as
    Paddle's converter traces the method's source, not a hook chain; hooks on other methods and submodules (rope_cache)
    are bypassed while the program runs (a cache cannot be traced; the program computes the values)."""

    def __init__(self, compiler: str | None) -> None:
        self.compiler = compiler
        self._static: Any = None
        self._submodule_hooks: list[HookRegistry] | None = None

    def initialize(self, module: Any) -> None:
        registry = HookRegistry.of(module)
        if registry.names():
            raise ValueError(
                f"{HOOK_NAME} must be the first hook on {type(module).__name__}: it has {registry.names()}"
            )
        paddle = runtime.import_paddle()
        self._static = paddle.jit.to_static(registry.original(), full_graph=True, backend=self.compiler)

    def new_forward(self, module: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
        if self._submodule_hooks is None:  # found once: walking a large model's tree costs a little
            self._submodule_hooks = [r for r in registries_in(module) if r is not HookRegistry.find(module)]
        with bypassed(self._submodule_hooks):
            return self._static(*args, **kwargs)

    def deinitialize(self, module: Any) -> None:
        self._static = None


@dataclass(frozen=True)
class PaddleJitOptions(PaddleDeviceOptions):
    compile: list[str] = field(default_factory=denoiser_roles)  # component roles converted to static graphs
    compiler: str | None = None  # None: Paddle's executor; "CINN": the CINN compiler


class PaddleJitBackend(PaddleDeviceBackend):
    """Eager Paddle for everything, the `compile` roles (denoisers) converted to static graphs."""

    options_schema = PaddleJitOptions

    def prepare(self, components: Mapping[str, Any], engine: Any) -> None:
        for role in self.compile_roles(components):
            register_hook(components[role], HOOK_NAME, PaddleStaticHook(self.spec.options.compiler))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "compiled": list(self.spec.options.compile)}
