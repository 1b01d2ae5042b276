"""`backend=onnxruntime`: the components exported with `torch.onnx.export` and run by an
`onnxruntime.InferenceSession` with every graph optimization on; CPUExecutionProvider by default, other
execution providers as the `providers` option where the installed onnxruntime has them.

Static shapes per input signature, cached on disk (components/torch/converted.py). fp32 only: ONNX Runtime's
CPU provider has no bf16/fp16 kernels worth running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.backends.converted import ConvertedBackend, ConvertedOptions
from runner.errors import CapabilityError

OPSET = 17


def cpu_provider() -> list[str]:
    return ["CPUExecutionProvider"]


@dataclass(frozen=True)
class OnnxRuntimeOptions(ConvertedOptions):
    providers: list[str] = field(default_factory=cpu_provider)  # execution providers, in order of preference
    threads: int = 0  # intra-op threads; 0: ONNX Runtime's default (the physical cores)


class OnnxRuntimeGraphs:
    name = "onnxruntime"

    def __init__(self, *, providers: list[str], threads: int) -> None:
        self.providers, self.threads = providers, threads

    def cache_facts(self) -> tuple:
        return ("onnx", OPSET)

    def convert(self, graph: Any, example: Sequence[Any], names: list[str], folder: Path,
                calibration: list[list[np.ndarray]] | None = None) -> None:  # fmt: skip
        import torch

        torch.onnx.export(graph, tuple(example), str(folder / "model.onnx"), input_names=names,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)  # fmt: skip

    def load(self, folder: Path) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        if self.threads:
            options.intra_op_num_threads = self.threads
        session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=self.providers)
        kept = {i.name for i in session.get_inputs()}  # the exporter drops inputs the graph does not read

        def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
            feed = {f"input_{i}": x for i, x in enumerate(inputs) if f"input_{i}" in kept}
            return session.run(None, feed)

        return run


class OnnxRuntimeBackend(ConvertedBackend):
    """Options: providers (default [CPUExecutionProvider]), threads, compile, cache_dir."""

    options_schema = OnnxRuntimeOptions
    package = "onnxruntime"

    def runtime_device(self) -> str:
        if self.spec.device not in ("auto", "cpu"):
            raise CapabilityError(
                f"backend={self.spec.name} device={self.spec.device}: choose the device with the providers option "
                "(e.g. backend.providers=[CUDAExecutionProvider]); device takes auto or cpu"
            )
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in self.spec.options.providers if p not in available]
        if missing or not self.spec.options.providers:
            raise CapabilityError(
                f"backend={self.spec.name} providers={list(self.spec.options.providers)}: onnxruntime "
                f"{ort.__version__} has {', '.join(available)} (other providers need their onnxruntime build)"
            )
        return self.spec.options.providers[0]

    def supported_dtypes(self, device: str) -> tuple[str, ...]:
        return ("float32",)

    def dtype_reason(self, device: str) -> str:
        return "the converted graphs run in float32 (use backend=openvino for bf16 and int8)"

    def make_runtime(self, cache_dir: Path) -> OnnxRuntimeGraphs:
        o = self.spec.options
        return OnnxRuntimeGraphs(providers=list(o.providers), threads=o.threads)
