"""The backend contract: which engine, which device, what the build must have, how modules run."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any

from runner.errors import CapabilityError
from runner.schema import BackendOptions, BackendSpec, PrecisionSpec

DENOISER_ROLES = ("unet", "transformer")  # the roles compiling backends compile by default


def denoiser_roles() -> list[str]:
    return list(DENOISER_ROLES)


class Backend(abc.ABC):
    """An engine plus a way to run it. Checks capabilities before any weights load."""

    # The keys its YAML may set, their types and defaults (runner/schema.py: BackendOptions).
    options_schema: type[BackendOptions] = BackendOptions
    # The modules it runs read their Parameters at every call, so an in-place weight update (set_loras) takes
    # effect without compiling again; False where it runs a converted copy of the weights.
    updates_weights_in_place = True

    def __init__(self, *, spec: BackendSpec, precision: PrecisionSpec | None = None, verify: bool = False) -> None:
        self.spec = spec
        self.precision = precision  # the run's (None when only capabilities are checked)
        self.verify = verify  # verify=true: backends that convert components check them against eager

    @abc.abstractmethod
    def resolve_device(self) -> str:
        """The concrete device string (e.g. "cpu", "gpu:0"), or CapabilityError naming what is missing."""

    @abc.abstractmethod
    def supported_dtypes(self, device: str) -> tuple[str, ...]:
        """Dtypes the engine can run on `device`."""

    def quantized_formats(self) -> tuple[str, ...]:
        """Quantized formats this backend runs ("int8 weights", "int8 activations"); none by default."""
        return ()

    def engine_dtype(self, precision: PrecisionSpec) -> str:
        """The dtype the engine loads the weights in: the precision's, unless the backend converts them itself."""
        return precision.dtype

    def check(self, precision: PrecisionSpec) -> str:
        """Run every capability check; return the device the run will use."""
        device = self.resolve_device()
        quantized = [f"{v} {k}" for k, v in (("weights", precision.weights), ("activations", precision.activations))
                     if v is not None]  # fmt: skip
        if quantized and not set(quantized) <= set(self.quantized_formats()):
            what = " and ".join(quantized)
            raise CapabilityError(
                f"precision={precision.name} ({what}) cannot run on backend={self.spec.name}: {what} run on "
                "backend=openvino"
            )
        allowed = self.supported_dtypes(device)
        if precision.dtype not in allowed:
            names = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
            allowed_names = ", ".join(names.get(d, d) for d in allowed)
            raise CapabilityError(
                f"precision={precision.name} ({precision.dtype}) cannot run on backend={self.spec.name} "
                f"device {device}: {self.dtype_reason(device)}; supported there: {allowed_names}"
            )
        return device

    def dtype_reason(self, device: str) -> str:
        return "the engine has no kernels for it there"

    def prepare(self, components: Mapping[str, Any], engine: Any) -> None:
        """Make the components run the way this backend runs them (compiled, exported...), in place, with
        hooks (runner.hooks) on the `compile` roles. Default: eager, nothing to do."""
        return None

    def compile_roles(self, components: Mapping[str, Any]) -> list[str]:
        """The configured `compile` roles this model has (denoisers: unet or transformer)."""
        return [role for role in getattr(self.spec.options, "compile", ()) if role in components]

    def describe(self) -> dict[str, Any]:
        """Backend facts for report.json."""
        options = dataclasses.asdict(self.spec.options)
        for key in ("name", "engine", "device"):  # the run section reports the device actually used
            options.pop(key)
        return {"name": self.spec.name, "engine": self.spec.engine, **options}
