"""`backend=openvino`: the components converted with `openvino.convert_model` (no ONNX detour) and compiled
for an OpenVINO device (CPU by default; GPU and NPU where OpenVINO finds them).

Static shapes per input signature, cached on disk (components/torch/converted.py); OpenVINO's own blob cache
(CACHE_DIR) keeps the compiled form too, so a second run loads in seconds. Precisions: fp32; bf16 and fp16
as OpenVINO's inference precision hint where the device has them; int8 weights through NNCF's data-free
weight compression, applied when converting.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.backends.converted import INSTALL_HINT, ConvertedBackend, ConvertedOptions
from runner.errors import CapabilityError

HINTS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
CAPABILITIES = {"bfloat16": "BF16", "float16": "FP16"}  # OPTIMIZATION_CAPABILITIES entries


@functools.cache
def core() -> Any:
    import openvino as ov

    return ov.Core()


@dataclass(frozen=True)
class OpenVinoOptions(ConvertedOptions):
    performance_hint: str = "LATENCY"  # OpenVINO's PERFORMANCE_HINT: LATENCY (one request at a time) or THROUGHPUT


class OpenVinoRuntime:
    name = "openvino"

    def __init__(self, *, device: str, dtype: str, weights: str | None, cache_dir: Path, performance_hint: str) -> None:
        self.device, self.dtype, self.weights = device, dtype, weights
        self.config = {"INFERENCE_PRECISION_HINT": HINTS[dtype], "PERFORMANCE_HINT": performance_hint,
                       "CACHE_DIR": str(cache_dir / "compiled")}  # fmt: skip

    def cache_facts(self) -> tuple:
        import openvino as ov

        facts: tuple = ("openvino", ov.__version__, self.weights)
        if self.weights:
            import nncf

            facts += (nncf.__version__,)
        return facts

    def convert(self, graph: Any, example: Sequence[Any], names: list[str], folder: Path) -> None:
        import openvino as ov

        model = ov.convert_model(graph, example_input=tuple(example))
        if len(model.inputs) != len(example):
            raise RuntimeError(f"OpenVINO kept {len(model.inputs)} of the call's {len(example)} inputs")
        model.reshape({port: ov.PartialShape(list(x.shape)) for port, x in zip(model.inputs, example)})  # static
        if self.weights == "int8":
            import nncf

            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)

    def load(self, folder: Path) -> Any:
        compiled = core().compile_model(str(folder / "model.xml"), self.device, self.config)
        request = compiled.create_infer_request()
        count = len(compiled.outputs)

        def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
            request.infer(inputs)
            return [request.get_output_tensor(i).data.copy() for i in range(count)]

        return run


class OpenVinoBackend(ConvertedBackend):
    """Options: device (auto = CPU, or an OpenVINO device: CPU, GPU, GPU.1, NPU), compile, cache_dir,
    performance_hint."""

    options_schema = OpenVinoOptions
    package = "openvino"

    def runtime_device(self) -> str:
        wanted = self.spec.device
        device = "CPU" if wanted in ("auto", "cpu") else wanted.upper()
        found = core().available_devices
        if device not in found and not any(d.split(".")[0] == device for d in found):
            import openvino as ov

            raise CapabilityError(
                f"backend={self.spec.name} device={wanted}: OpenVINO {ov.__version__} finds {', '.join(found)} "
                "here (GPU needs Intel's GPU driver, NPU Intel's NPU driver)"
            )
        return device

    def supported_dtypes(self, device: str) -> tuple[str, ...]:
        capabilities = core().get_property(self.runtime_device(), "OPTIMIZATION_CAPABILITIES")
        return ("float32", *(d for d, cap in CAPABILITIES.items() if cap in capabilities))

    def dtype_reason(self, device: str) -> str:
        capabilities = core().get_property(self.runtime_device(), "OPTIMIZATION_CAPABILITIES")
        return f"OpenVINO's {self.runtime_device()} reports {', '.join(capabilities)} (no such kernels there)"

    def weight_formats(self) -> tuple[str, ...]:
        try:
            import nncf  # noqa: F401
        except ImportError as exc:
            raise CapabilityError(f"int8 weights on backend=openvino need nncf ({exc}); {INSTALL_HINT}") from exc
        return ("int8",)

    def make_runtime(self, cache_dir: Path) -> OpenVinoRuntime:
        precision = self.precision
        return OpenVinoRuntime(
            device=self.runtime_device(),
            dtype=precision.dtype if precision else "float32",
            weights=precision.weights if precision else None,
            cache_dir=cache_dir,
            performance_hint=self.spec.options.performance_hint,
        )
