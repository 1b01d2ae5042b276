"""PyTorch backends: `torch` (eager; CUDA when present, else CPU) and `inductor` (torch.compile).

`inductor` compiles the `compile` roles (the denoiser) with torch.compile, as a hook on the module's
call (the module stays itself); compilation happens on the first call of each input shape, so the
first call's time is reported separately as compile time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.backends.base import Backend, denoiser_roles
from components.torch import runtime
from runner.errors import CapabilityError
from runner.hooks import HookRegistry, ModelHook, bypassed, register_hook, registries_in
from runner.schema import BackendOptions

ALL_DTYPES = ("float32", "float16", "bfloat16")
HOOK_NAME = "inductor"


class TorchBackend(Backend):
    def resolve_device(self) -> str:
        torch = runtime.import_torch()
        runtime.import_diffusers()
        device = self.spec.device
        if device == "auto":
            return "cuda" if runtime.cuda_available() else "cpu"
        kind = device.split(":")[0]
        if kind == "cuda":
            if not runtime.cuda_available():
                raise CapabilityError(
                    f"backend={self.spec.name} asks for device {device}, but torch {torch.__version__} sees no CUDA GPU"
                )
            index = int(device.split(":")[1]) if ":" in device else 0
            if index >= torch.cuda.device_count():
                raise CapabilityError(f"backend={self.spec.name}: device {device} does not exist "
                                      f"({torch.cuda.device_count()} CUDA device(s))")  # fmt: skip
        elif kind != "cpu":
            raise CapabilityError(f"backend={self.spec.name}: device {device!r} is not one of auto, cpu, cuda, cuda:N")
        return device

    def supported_dtypes(self, device: str) -> tuple[str, ...]:
        torch = runtime.import_torch()
        if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            return ("float32", "float16")
        return ALL_DTYPES

    def dtype_reason(self, device: str) -> str:
        return "this GPU has no bfloat16 support (compute capability below 8.0)"


class TorchCompileHook(ModelHook):
    """Runs the module's call chain through torch.compile, compiled on first use; the first call's time
    (compilation plus one run) is recorded. The chain below this hook is what gets compiled, so hooks
    registered before it (an attention-kernel choice) are traced into the graph, later ones run around it.
    Hooks on other methods and submodules (rope_cache) are bypassed while the compiled code runs: a cache
    keyed on tensor values would break the graph at every comparison, and the graph computes the values."""

    def __init__(self, options: Mapping[str, Any], synchronize: Any) -> None:
        self.options, self.synchronize = dict(options), synchronize
        self.first_call_ms: float | None = None
        self._source: Any = None
        self._compiled: Any = None
        self._other_hooks: list[HookRegistry] | None = None

    def new_forward(self, module: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
        if call is not self._source:  # the chain below changed (a hook under this one was removed)
            self._source, self._compiled = call, runtime.import_torch().compile(call, **self.options)
        if self._other_hooks is None:  # found once: walking a large model's tree costs a little
            self._other_hooks = [r for r in registries_in(module) if r is not HookRegistry.find(module)]
        if self.first_call_ms is not None:
            with bypassed(self._other_hooks):
                return self._compiled(*args, **kwargs)
        start = time.perf_counter()
        with bypassed(self._other_hooks):
            out = self._compiled(*args, **kwargs)
        self.synchronize()
        self.first_call_ms = (time.perf_counter() - start) * 1e3
        return out


@dataclass(frozen=True)
class InductorOptions(BackendOptions):
    compile: list[str] = field(default_factory=denoiser_roles)  # component roles compiled
    mode: str | None = None  # torch.compile mode: None (default), reduce-overhead, max-autotune, ...
    fullgraph: bool = False
    dynamic: bool | None = None


class InductorBackend(TorchBackend):
    """torch.compile on the denoiser. Options: mode (default, reduce-overhead, max-autotune...),
    fullgraph, dynamic."""

    options_schema = InductorOptions

    def __init__(self, *, spec: Any, **kwargs: Any) -> None:
        super().__init__(spec=spec, **kwargs)
        self._hooks: dict[str, TorchCompileHook] = {}

    def resolve_device(self) -> str:
        device = super().resolve_device()
        problem = runtime.compiler_toolchain_problem()
        if problem:
            raise CapabilityError(f"backend={self.spec.name} cannot compile here: {problem}")
        return device

    def prepare(self, components: Mapping[str, Any], engine: Any) -> None:
        o = self.spec.options
        options = {"mode": o.mode or None, "fullgraph": o.fullgraph, "dynamic": o.dynamic}
        for role in self.compile_roles(components):
            hook = TorchCompileHook(options, engine.synchronize)
            self._hooks[role] = register_hook(components[role], HOOK_NAME, hook)

    def describe(self) -> dict[str, Any]:
        first = {role: round(h.first_call_ms, 1) for role, h in self._hooks.items() if h.first_call_ms is not None}
        return {**super().describe(), "first_call_ms": first}
