"""Run a PyTorch module's call through a converted graph (OpenVINO, ONNX Runtime), cached on disk per signature.

`ConvertedCallHook` sits innermost on a component's entry method (a denoiser's call, a VAE's `decode`, a
text encoder's call). The first call with a new input signature (shapes, dtypes, keyword structure:
components/call_signature.py) converts the module as that call uses it, with static shapes, into a cache
folder keyed by the runtime's version and settings, the signature, the weights' digest and the entry
method; later calls and later runs load the folder. Being innermost, the hooks already on the method
(a text-embedding cache that answers without calling the encoder) still run around it.

Every conversion is checked once against the eager call on the inputs that caused it (the error is
reported); with verify=true the check also runs when a conversion is loaded from the cache, and an error
above the precision's bound stops the run.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.call_signature import (
    flatten_call,
    flatten_output,
    module_config_text,
    rebuild_call,
    rebuild_output,
    weights_digest,
)
from components.torch.runtime import import_torch
from runner.errors import VerificationError
from runner.hooks import HookRegistry, ModelHook, bypassed, registries_in

torch = import_torch()
log = logging.getLogger(__name__)
HOOK_NAME = "converted"
STRUCTURE_FILE = "outputs.json"  # the call's output structure: written last, so it marks a complete folder

RunGraph = Callable[[list[np.ndarray]], list[np.ndarray]]


def is_torch_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _array(value: Any) -> np.ndarray:
    tensor = value.detach().cpu().contiguous()
    return tensor.view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()  # numpy has no bf16


class GraphRuntime(abc.ABC):
    """One way to convert a traced module and run it: the converted files live in a folder of their own."""

    name: str = ""

    @abc.abstractmethod
    def cache_facts(self) -> tuple:
        """Everything besides the call and the weights that changes the converted files (versions, settings)."""

    @abc.abstractmethod
    def convert(self, graph: Any, example: Sequence[Any], names: list[str], folder: Path,
                calibration: list[list[np.ndarray]] | None = None) -> None:  # fmt: skip
        """Convert `graph` (a torch module taking `example` positionally) into files under `folder`;
        `calibration`: inputs of real calls, for runtimes that quantize activations."""

    @abc.abstractmethod
    def load(self, folder: Path) -> RunGraph:
        """Load a converted folder; the result runs numpy inputs (in `names` order) to numpy outputs."""


class _CallGraph(torch.nn.Module):
    """The hooked method called with one fixed keyword structure; tensors in and out, flat, in order."""

    def __init__(self, module: Any, call: Callable[..., Any], structure: tuple) -> None:
        super().__init__()
        self.module = module  # a submodule: its weights are the graph's weights
        self.call, self.structure = call, structure

    def forward(self, *tensors: Any) -> tuple[Any, ...]:
        args, kwargs = rebuild_call(self.structure, tensors)
        leaves, _ = flatten_output(self.call(*args, **kwargs), is_torch_tensor)
        return tuple(leaves)


# ----------------------------------------------------------------- output structures on disk
def _encode(node: tuple) -> list:
    kind = node[0]
    if kind in ("tensor", "none"):
        return [kind]
    cls = node[1]
    items = [[k, _encode(v)] for k, v in node[2]] if kind == "mapping" else [_encode(v) for v in node[2]]
    return [kind, f"{cls.__module__}:{cls.__qualname__}", items]


def _decode(node: list) -> tuple:
    kind = node[0]
    if kind in ("tensor", "none"):
        return (kind,)
    module_name, qualname = node[1].split(":")
    cls: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if kind == "mapping":
        return (kind, cls, tuple((k, _decode(v)) for k, v in node[2]))
    return (kind, cls, tuple(_decode(v) for v in node[2]))


@dataclass
class _Conversion:
    folder: Path
    run: RunGraph
    outputs: tuple  # flatten_output structure


def max_error(outputs: Sequence[np.ndarray], references: Sequence[Any]) -> tuple[float, float]:
    """(max abs difference over all outputs, max abs reference value)."""
    error = peak = 0.0
    for out, ref in zip(outputs, references):
        ref_np = ref.detach().float().cpu().numpy()
        if ref_np.size:
            error = max(error, float(np.abs(out.astype(np.float64) - ref_np).max()))
            peak = max(peak, float(np.abs(ref_np).max()))
    return error, peak


class ConvertedCallHook(ModelHook):
    """Runs the hooked method's calls through `runtime`, one conversion per input signature."""

    def __init__(self, runtime: GraphRuntime, role: str, method: str, cache_dir: Path, *,
                 tolerance: float, verify: bool, calibration_calls: int = 0) -> None:  # fmt: skip
        self.runtime, self.role, self.method, self.cache_dir = runtime, role, method, cache_dir
        self.tolerance, self.verify = tolerance, verify
        # > 0: the first calls of a new signature run eagerly and their inputs calibrate the conversion.
        self.calibration_calls = calibration_calls
        self._samples: dict[tuple, list[list[np.ndarray]]] = {}
        self._module: Any = None
        self._digest: str | None = None
        self._conversions: dict[tuple, _Conversion] = {}
        self.converted: list[str] = []  # folders this process converted
        self.loaded: list[str] = []  # folders found in the cache
        self.errors: list[dict[str, Any]] = []  # checks against the eager call
        self.first_call_ms: float | None = None

    def initialize(self, module: Any) -> None:
        self._module = module

    def deinitialize(self, module: Any) -> None:
        self._conversions.clear()
        self._module = None

    def new_forward(self, module: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
        leaves, structure = flatten_call(args, kwargs, is_torch_tensor)
        conversion = self._conversions.get(structure)
        if conversion is None and self.calibration_calls and not self._folder(module, structure).is_dir():
            samples = self._samples.setdefault(structure, [])
            if len(samples) < self.calibration_calls:
                samples.append([x.detach().cpu().numpy().copy() for x in leaves])
                return call(*args, **kwargs)
        if conversion is None:
            start = time.perf_counter()
            calibration = self._samples.pop(structure, None)
            conversion, outputs = self._prepare(module, call, structure, leaves, calibration)
            self._conversions[structure] = conversion
            if self.first_call_ms is None:
                self.first_call_ms = (time.perf_counter() - start) * 1e3
        else:
            outputs = None
        if outputs is None:
            outputs = conversion.run([x.detach().cpu().numpy() for x in leaves])
        return rebuild_output(conversion.outputs, [torch.from_numpy(np.ascontiguousarray(o)) for o in outputs])

    # ----------------------------------------------------------------- conversion
    def _key(self, structure: tuple) -> str:
        if self._digest is None:
            self._digest = weights_digest((name, _array(value)) for name, value in self._module.state_dict().items())
        config = module_config_text(self._module)
        facts = (self.runtime.cache_facts(), self.calibration_calls, torch.__version__, self.method)
        text = repr((facts, structure, config, self._digest))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def _folder(self, module: Any, structure: tuple) -> Path:
        return self.cache_dir / f"{type(module).__name__}-{self.method}-{self._key(structure)}"

    def _prepare(
        self, module: Any, call: Any, structure: tuple, leaves: list[Any], calibration: list[list[np.ndarray]] | None
    ) -> tuple[_Conversion, list[np.ndarray] | None]:
        """The conversion for this signature, and its outputs for `leaves` when checking already ran it."""
        folder = self._folder(module, structure)
        eager = None
        if (folder / STRUCTURE_FILE).is_file():
            self.loaded.append(str(folder))
        else:
            eager, outputs = self._eager(module, call, structure, leaves)
            self._convert(module, call, structure, leaves, outputs, folder, calibration)
            self.converted.append(str(folder))
            log.info("%s: converted %s.%s for inputs %s into %s", self.runtime.name, self.role, self.method,
                     [tuple(x.shape) for x in leaves], folder)  # fmt: skip
        run = self.runtime.load(folder)
        conversion = _Conversion(folder, run, _decode(json.loads((folder / STRUCTURE_FILE).read_text())))
        if eager is None and self.verify:
            eager, _ = self._eager(module, call, structure, leaves)
        if eager is None:
            return conversion, None
        outputs = run([x.detach().cpu().numpy() for x in leaves])
        self._check(outputs, eager)
        return conversion, outputs  # the call that caused the conversion does not run it twice

    def _eager(self, module: Any, call: Any, structure: tuple, leaves: list[Any]) -> tuple[list[Any], tuple]:
        """The module's own outputs for this call (the reference), and their structure."""
        args, kwargs = rebuild_call(structure, leaves)
        with self._tracing(module), torch.no_grad():
            return flatten_output(call(*args, **kwargs), is_torch_tensor)

    def _tracing(self, module: Any) -> Any:
        """The hooks on submodules (a RoPE cache keyed on tensor values) stay out of the eager reference and
        of the trace: the graph computes what they would cache."""
        own = HookRegistry.find(module, self.method)
        return bypassed([r for r in registries_in(module) if r is not own])

    def _convert(self, module: Any, call: Any, structure: tuple, leaves: list[Any], outputs: tuple,
                 folder: Path, calibration: list[list[np.ndarray]] | None) -> None:  # fmt: skip
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=self.cache_dir))
        try:
            graph = _CallGraph(module, call, structure).eval()
            with self._tracing(module), torch.no_grad(), warnings.catch_warnings():
                # The tracer warns where Python branches on shapes: static shapes per conversion are the design.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                self.runtime.convert(graph, leaves, [f"input_{i}" for i in range(len(leaves))], staging, calibration)
            (staging / STRUCTURE_FILE).write_text(json.dumps(_encode(outputs)))
            os.replace(staging, folder)  # atomic: a reader sees no conversion or a complete one
        except OSError:
            if not (folder / STRUCTURE_FILE).is_file():  # another process finished the same conversion first
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _check(self, outputs: list[np.ndarray], eager: list[Any]) -> None:
        error, peak = max_error(outputs, eager)
        bound = self.tolerance * max(1.0, peak)
        self.errors.append({"component": self.role, "method": self.method, "max_abs_error": error, "bound": bound})
        if error > bound:
            message = (
                f"backend={self.runtime.name} changed {self.role}.{self.method}'s output by {error:.3g} (max abs), "
                f"above the bound {bound:.3g}"
            )
            if self.verify:
                raise VerificationError(message)
            log.warning("%s (verify=true stops the run on this)", message)
