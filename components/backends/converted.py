"""PyTorch components run by another runtime after conversion: the shared part of `openvino` and `onnxruntime`.

The engine loads the weights in float32 (the conversion's source; the precision is then the runtime's), the
passes apply to the eager modules, and at the first call of each input signature the `compile` roles are
converted and cached (components/torch/converted.py): denoisers through their call, VAEs through `decode`,
text encoders through their call. Passes that only act on eager PyTorch execution are skipped with a note
(runner/pass_manager.py reads `eager_only_passes_apply`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.backends.torch_backends import TorchBackend
from components.call_signature import default_cache_dir
from components.torch import runtime
from runner.errors import CapabilityError
from runner.hooks import register_hook
from runner.pass_base import TOLERANCE
from runner.schema import BackendOptions, PrecisionSpec

CONVERTED_ROLES = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
LOSSY_WEIGHTS_TOLERANCE = 0.1  # int8 weights: verify's bound, relative to the output's peak (measured 2-4%)
LOSSY_ACTIVATIONS_TOLERANCE = 0.5  # int8 activations too (measured 0.39 on a random-weight tiny UNet)
INSTALL_HINT = "install the cpu extra: pip install -e '.[cpu]'"


def converted_roles() -> list[str]:
    return list(CONVERTED_ROLES)


@dataclass(frozen=True)
class ConvertedOptions(BackendOptions):
    compile: list[str] = field(default_factory=converted_roles)  # component roles converted (others stay eager)
    cache_dir: str | None = None  # converted graphs; None: ~/.cache/diffusion-runner/<backend>


class ConvertedBackend(TorchBackend):
    """A TorchBackend whose `compile` roles run as converted graphs; subclasses name the runtime."""

    options_schema = ConvertedOptions
    package = ""  # the Python package the runtime needs (checked before any weights load)
    eager_only_passes_apply = False
    updates_weights_in_place = False  # the runtime holds its own copy of the converted weights

    def __init__(self, *, spec: Any, **kwargs: Any) -> None:
        super().__init__(spec=spec, **kwargs)
        self.hooks: dict[str, Any] = {}

    def import_runtime(self) -> Any:
        try:
            return importlib.import_module(self.package)
        except ImportError as exc:
            raise CapabilityError(
                f"backend={self.spec.name} needs the {self.package} package ({exc}); {INSTALL_HINT}"
            ) from exc

    def resolve_device(self) -> str:
        runtime.import_torch()
        runtime.import_diffusers()
        self.import_runtime()
        self.runtime_device()
        return "cpu"  # the engine's tensors live on the host; the runtime's device is runtime_device()

    def runtime_device(self) -> str:
        """The device the runtime runs on, from the backend's `device`; CapabilityError when it has none."""
        return "cpu"

    def engine_dtype(self, precision: PrecisionSpec) -> str:
        return "float32"

    def make_runtime(self, cache_dir: Path) -> Any:
        raise NotImplementedError

    def calibration_calls(self, role: str) -> int:
        """Calls of `role` whose inputs calibrate its conversion (quantized activations); 0: none."""
        return 0

    def cache_dir(self) -> Path:
        option = self.spec.options.cache_dir
        return Path(option).expanduser() if option else default_cache_dir(self.spec.name)

    def tolerance(self) -> float:
        precision = self.precision
        if precision is None:
            return TOLERANCE["float32"]
        if precision.activations:
            return LOSSY_ACTIVATIONS_TOLERANCE
        return LOSSY_WEIGHTS_TOLERANCE if precision.weights else TOLERANCE[precision.dtype]

    def prepare(self, components: Mapping[str, Any], engine: Any) -> None:
        from components.torch.converted import HOOK_NAME, ConvertedCallHook

        cache_dir = self.cache_dir()
        graph_runtime = self.make_runtime(cache_dir)
        for role in self.compile_roles(components):
            module = components[role]
            method = "decode" if callable(getattr(module, "decode", None)) else "forward"
            hook = ConvertedCallHook(graph_runtime, role, method, cache_dir, tolerance=self.tolerance(),
                                     verify=self.verify, calibration_calls=self.calibration_calls(role))  # fmt: skip
            # Innermost: the hooks the passes left on the method (a text-embedding cache) run around it.
            self.hooks[role] = register_hook(module, HOOK_NAME, hook, method=method, innermost=True)

    def describe(self) -> dict[str, Any]:
        hooks = self.hooks.values()
        return {
            **super().describe(),
            "runtime_device": self.runtime_device(),
            "converted": sorted(Path(f).name for h in hooks for f in h.converted),
            "loaded_from_cache": sorted(Path(f).name for h in hooks for f in h.loaded),
            "first_call_ms": {r: round(h.first_call_ms, 1) for r, h in self.hooks.items() if h.first_call_ms},
            "max_abs_error": [e for h in hooks for e in h.errors],
        }
