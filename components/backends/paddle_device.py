"""Paddle eager (dygraph) execution on the devices a Paddle build can target.

One class serves `paddle` (CPU, or a CUDA GPU when the build has CUDA), `dcu` (ROCm builds expose DCUs
as "gpu"), `xpu` (Kunlun) and `custom_device` (plugins such as npu or mlu); their YAML files say which
build feature they need and which device to use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.backends.base import Backend
from components.paddle import runtime
from runner.errors import CapabilityError
from runner.schema import BackendOptions

FEATURE_NAMES = {
    "cuda": "CUDA (paddle.is_compiled_with_cuda())",
    "rocm": "ROCm (paddle.is_compiled_with_rocm())",
    "xpu": "Kunlun XPU (paddle.is_compiled_with_xpu())",
    "cinn": "CINN (paddle.is_compiled_with_cinn())",
    "tensorrt": "TensorRT (paddle.inference.get_trt_compile_version() is 0.0.0)",
}
ACCELERATOR_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class PaddleDeviceOptions(BackendOptions):
    requires: list[str] = field(default_factory=list)  # build features the backend needs (FEATURE_NAMES)
    dtypes: list[str] = field(default_factory=lambda: list(ACCELERATOR_DTYPES))  # off the CPU; the CPU runs fp32


def require_features(backend: str, needed: list[str]) -> None:
    """Raise CapabilityError naming every feature in `needed` that the installed build lacks."""
    features = runtime.build_features()
    missing = [f for f in needed if not features.get(f, False)]
    if missing:
        paddle = runtime.import_paddle()
        lacks = " and ".join(FEATURE_NAMES.get(f, f) for f in missing)
        raise CapabilityError(
            f"backend={backend} needs a Paddle build with {lacks}; the installed paddlepaddle "
            f"{paddle.__version__} was compiled without it"
        )


class PaddleDeviceBackend(Backend):
    """Eager Paddle on one device. `device: auto` picks the first GPU when the build and machine have one."""

    options_schema = PaddleDeviceOptions

    def resolve_device(self) -> str:
        needed = list(self.spec.options.requires)
        require_features(self.spec.name, needed)
        device = self.spec.device
        if device == "auto":
            features = runtime.build_features()
            has_gpu = (features["cuda"] or features["rocm"]) and runtime.device_count("gpu") > 0
            return "gpu:0" if has_gpu else "cpu"
        kind = device.split(":")[0]
        if kind in ("gpu", "xpu"):
            if kind == "gpu" and not needed:  # a plain GPU request needs CUDA; dcu/cinn/tensorrt say what they need
                require_features(self.spec.name, ["cuda"])
            if runtime.device_count(kind) == 0:
                raise CapabilityError(f"backend={self.spec.name} asks for device {device}, but no {kind} is visible")
        elif kind != "cpu":
            raise CapabilityError(
                f"backend={self.spec.name}: device {device!r} is not a built-in Paddle device (cpu, gpu, xpu); "
                "use backend=custom_device for plugin devices"
            )
        return device

    def supported_dtypes(self, device: str) -> tuple[str, ...]:
        if device == "cpu":
            return ("float32",)
        return tuple(self.spec.options.dtypes)

    def dtype_reason(self, device: str) -> str:
        if device == "cpu":
            return "Paddle's CPU kernels run float32 only (fp16/bf16 pipelines fail there)"
        return "this backend's config does not list it"


class PaddleCustomDeviceBackend(PaddleDeviceBackend):
    """A Paddle custom-device plugin (npu, mlu, ...), probed in a child process before use."""

    def resolve_device(self) -> str:
        device = self.spec.device
        kind = device.split(":")[0]
        usable, detail = runtime.probe_custom_device(kind)
        if not usable:
            raise CapabilityError(f"backend={self.spec.name} device {device}: {detail}")
        return device
