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

from components.backends.base import DENOISER_ROLES
from components.backends.converted import INSTALL_HINT, ConvertedBackend, ConvertedOptions
from runner.errors import CapabilityError, ConfigError
from runner.schema import PrecisionSpec

HINTS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
CAPABILITIES = {"bfloat16": "BF16", "float16": "FP16"}  # OPTIMIZATION_CAPABILITIES entries


@functools.cache
def core() -> Any:
    import openvino as ov

    return ov.Core()


@dataclass(frozen=True)
class OpenVinoOptions(ConvertedOptions):
    performance_hint: str = "LATENCY"  # OpenVINO's PERFORMANCE_HINT: LATENCY (one request at a time) or THROUGHPUT
    calibration_calls: int = 40  # precision=int8_hybrid: denoiser calls (run eagerly) whose inputs calibrate it


def quiet_nncf() -> Any:
    import logging

    import nncf

    # Its statistics tables would fill the run's output. Only the logger's own level: nncf.set_log_level also
    # sets the level of every handler it finds, which can be handlers the application shares with other loggers.
    logging.getLogger("nncf").setLevel(logging.ERROR)
    return nncf


def compress_weights(model: Any, ignored_types: tuple[str, ...] = ()) -> Any:
    """Every weight to int8 (asymmetric, per output channel; data-free)."""
    nncf = quiet_nncf()

    ignored = nncf.IgnoredScope(types=list(ignored_types), validate=False) if ignored_types else None
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)


def hybrid_quantize(model: Any, calibration: list[list[np.ndarray]]) -> Any:
    """Optimum-intel's hybrid int8 for diffusion denoisers: matmul weights compressed to int8 (data-free),
    convolutions fully quantized (weights and activations) with scales calibrated on `calibration`."""
    nncf = quiet_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    model = compress_weights(model, ignored_types=("Convolution",))
    matmuls = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"]
    return nncf.quantize(
        model,
        nncf.Dataset(calibration),
        subset_size=len(calibration),
        model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(names=matmuls, validate=False),
        advanced_parameters=AdvancedQuantizationParameters(smooth_quant_alpha=-1),  # no SmoothQuant: convs only
    )


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

    def convert(self, graph: Any, example: Sequence[Any], names: list[str], folder: Path,
                calibration: list[list[np.ndarray]] | None = None) -> None:  # fmt: skip
        import openvino as ov

        model = ov.convert_model(graph, example_input=tuple(example))
        if len(model.inputs) != len(example):
            raise RuntimeError(f"OpenVINO kept {len(model.inputs)} of the call's {len(example)} inputs")
        model.reshape({port: ov.PartialShape(list(x.shape)) for port, x in zip(model.inputs, example)})  # static
        if self.weights == "int8":
            model = hybrid_quantize(model, calibration) if calibration else compress_weights(model)
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

    def quantized_formats(self) -> tuple[str, ...]:
        try:
            import nncf  # noqa: F401
        except ImportError as exc:
            raise CapabilityError(f"int8 on backend=openvino needs nncf ({exc}); {INSTALL_HINT}") from exc
        return ("int8 weights", "int8 activations")

    def check(self, precision: PrecisionSpec) -> str:
        device = super().check(precision)
        calls = self.spec.options.calibration_calls
        if precision.activations is not None and calls < 1:
            raise ConfigError(f"backend.calibration_calls={calls} must be >= 1 for precision={precision.name}")
        return device

    def calibration_calls(self, role: str) -> int:
        if self.precision is None or self.precision.activations is None or role not in DENOISER_ROLES:
            return 0
        return self.spec.options.calibration_calls

    def make_runtime(self, cache_dir: Path) -> OpenVinoRuntime:
        precision = self.precision
        return OpenVinoRuntime(
            device=self.runtime_device(),
            dtype=precision.dtype if precision else "float32",
            weights=precision.weights if precision else None,
            cache_dir=cache_dir,
            performance_hint=self.spec.options.performance_hint,
        )
