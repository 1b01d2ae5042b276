"""PyTorch backends: `torch` (eager; CUDA when present, else CPU) and `inductor` (torch.compile).

`inductor` compiles the `compile` roles (the denoiser) with torch.compile; compilation happens on the
first call of each input shape, so the first call's time is reported separately as compile time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.backends.base import Backend, denoiser_roles
from components.torch import runtime
from runner.errors import CapabilityError
from runner.schema import BackendOptions

ALL_DTYPES = ("float32", "float16", "bfloat16")


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


class TimedFirstCall:
    """Wraps a compiled module: records how long its first call took (compilation + one run)."""

    def __init__(self, module: Any, compiled: Any, synchronize: Any) -> None:
        self._module, self._compiled, self._synchronize = module, compiled, synchronize
        self.first_call_ms: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.first_call_ms is not None:
            return self._compiled(*args, **kwargs)
        start = time.perf_counter()
        out = self._compiled(*args, **kwargs)
        self._synchronize()
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

    def __init__(self, *, spec: Any) -> None:
        super().__init__(spec=spec)
        self._compiled: dict[str, TimedFirstCall] = {}

    def resolve_device(self) -> str:
        device = super().resolve_device()
        problem = runtime.compiler_toolchain_problem()
        if problem:
            raise CapabilityError(f"backend={self.spec.name} cannot compile here: {problem}")
        return device

    def prepare(self, components: Mapping[str, Any], engine: Any) -> dict[str, Any]:
        torch = runtime.import_torch()
        o = self.spec.options
        prepared = dict(components)
        for role in o.compile:
            if role in prepared:
                module = prepared[role]
                compiled = torch.compile(
                    module,
                    mode=o.mode or None,
                    fullgraph=o.fullgraph,
                    dynamic=o.dynamic,
                )
                prepared[role] = self._compiled[role] = TimedFirstCall(module, compiled, engine.synchronize)
        return prepared

    def describe(self) -> dict[str, Any]:
        first = {role: round(m.first_call_ms, 1) for role, m in self._compiled.items() if m.first_call_ms is not None}
        return {**super().describe(), "first_call_ms": first}
