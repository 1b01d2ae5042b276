"""Run a Paddle layer through Paddle Inference: exported once per input signature, cached on disk.

`InferenceHook` runs a denoiser's calls: the first call with a new input signature (shapes, dtypes,
keyword structure) traces the layer with `paddle.jit.to_static`, saves the program under a cache key
that includes a digest of the weights, and builds a predictor; later calls (and later runs) reuse it.
It is a hook on the layer's call, so the stages still hold the layer itself.

Two facts measured on Paddle 3.3.1 CPU shape the oneDNN path:
- oneDNN cannot run `nearest_interp` under PIR, so the 2x nearest upsample is exported as
  repeat_interleave (the same values);
- oneDNN's `inplace_pass` computes concat([sin(x), cos(x)]) as cos(sin(x)) and silently corrupts the
  timestep embedding, so that pass is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.call_signature import default_cache_dir as shared_cache_dir
from components.call_signature import flatten_call, module_config_text, rebuild_call, weights_digest
from components.paddle.runtime import cpu_threads, import_paddle
from runner.hooks import HookRegistry, ModelHook, bypassed, registries_in

paddle = import_paddle()
HOOK_NAME = "paddle_inference"


@dataclass(frozen=True)
class InferenceOptions:
    device: str
    dtype: str
    onednn: bool
    tensorrt: bool
    cache_dir: Path
    workspace_mb: int  # defaults: PaddleInferenceOptions (components/backends/paddle_inference.py)
    min_subgraph_size: int


def default_cache_dir() -> Path:
    return shared_cache_dir("paddle_inference")


def is_paddle_tensor(value: Any) -> bool:
    return isinstance(value, paddle.Tensor)


MAX_INPUTS = 8


class _CallGraph(paddle.nn.Layer):
    """The layer called with one fixed keyword structure; tensors are its positional inputs.

    `to_static` needs named parameters (it rejects *args with an input spec), hence the fixed arity.
    """

    def __init__(self, layer: Any, structure: tuple) -> None:
        super().__init__()
        self.layer = layer
        self.structure = structure

    def forward(self, input_0, input_1=None, input_2=None, input_3=None, input_4=None, input_5=None,
                input_6=None, input_7=None):  # fmt: skip
        given = [input_0, input_1, input_2, input_3, input_4, input_5, input_6, input_7]
        args, kwargs = rebuild_call(self.structure, [x for x in given if x is not None])
        out = self.layer(*args, **kwargs)
        return out[0] if isinstance(out, list | tuple) else out


@contextlib.contextmanager
def onednn_friendly_upsample() -> Iterator[None]:
    """Export the 2x nearest upsample as repeat_interleave (oneDNN cannot run nearest_interp under PIR)."""
    functional = paddle.nn.functional
    original = functional.interpolate

    def interpolate(x: Any, size: Any = None, scale_factor: Any = None, mode: str = "nearest", **kwargs: Any) -> Any:
        nchw = kwargs.get("data_format") in (None, "NCHW")
        if mode == "nearest" and size is None and scale_factor in (2, 2.0) and nchw and x.ndim == 4:
            return paddle.repeat_interleave(paddle.repeat_interleave(x, 2, axis=2), 2, axis=3)
        return original(x, size=size, scale_factor=scale_factor, mode=mode, **kwargs)

    functional.interpolate = interpolate
    try:
        yield
    finally:
        functional.interpolate = original


class InferenceHook(ModelHook):
    """Runs the hooked layer's calls with Paddle Inference predictors, one per input signature."""

    def __init__(self, options: InferenceOptions) -> None:
        self._options = options
        self._layer: Any = None
        self._digest: str | None = None
        self._predictors: dict[tuple, Any] = {}
        self.exports: list[str] = []

    def initialize(self, module: Any) -> None:
        self._layer = module

    def deinitialize(self, module: Any) -> None:
        self._predictors.clear()
        self._layer = None

    def new_forward(self, module: Any, call: Any, *args: Any, **kwargs: Any) -> tuple[Any]:
        leaves, structure = flatten_call(args, kwargs, is_paddle_tensor)
        predictor = self._predictors.get(structure)
        if predictor is None:
            # The export traces the layer as the hooks below this one leave it, not through this hook;
            # hooks on other methods and submodules (caches) cannot be traced and are bypassed while exporting.
            submodule_hooks = [r for r in registries_in(module) if r is not HookRegistry.find(module)]
            with HookRegistry.of(module).only_below(HOOK_NAME), bypassed(submodule_hooks):
                predictor = self._predictors[structure] = self._build(structure, leaves)
        return (self._run(predictor, leaves),)

    # ----------------------------------------------------------------- export
    def _build(self, structure: tuple, leaves: Sequence[Any]) -> Any:
        prefix = self._export(structure, leaves)
        return paddle.inference.create_predictor(self._config(prefix))

    def _cache_key(self, structure: tuple) -> str:
        if self._digest is None:
            self._digest = weights_digest((k, v.numpy()) for k, v in self._layer.state_dict().items())
        o = self._options
        config = module_config_text(self._layer)
        text = repr((paddle.__version__, structure, o.dtype, o.onednn, config, self._digest))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def _export(self, structure: tuple, leaves: Sequence[Any]) -> str:
        if len(leaves) > MAX_INPUTS:
            raise ValueError(f"{type(self._layer).__name__} takes {len(leaves)} tensors; export supports {MAX_INPUTS}")
        folder = self._options.cache_dir / f"{type(self._layer).__name__}-{self._cache_key(structure)}"
        prefix = str(folder / "inference")
        if (folder / "inference.pdiparams").is_file():
            return prefix
        self._options.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=self._options.cache_dir))
        try:
            specs = [
                paddle.static.InputSpec(shape=list(x.shape), dtype=x.dtype, name=f"input_{i}")
                for i, x in enumerate(leaves)
            ]
            graph = _CallGraph(self._layer, structure)
            upsample = onednn_friendly_upsample() if self._options.onednn else contextlib.nullcontext()
            with upsample:
                static = paddle.jit.to_static(graph, input_spec=specs, full_graph=True)
                paddle.jit.save(static, str(staging / "inference"))
            os.replace(staging, folder)  # atomic: a reader sees no export or a complete one
        except OSError:
            if not (folder / "inference.pdiparams").is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.exports.append(str(folder))
        return prefix

    def _config(self, prefix: str) -> Any:
        inference = paddle.inference
        model_file = prefix + (".json" if os.path.exists(prefix + ".json") else ".pdmodel")
        config = inference.Config(model_file, prefix + ".pdiparams")
        o = self._options
        config.disable_glog_info()
        config.switch_ir_optim(True)
        if o.device == "cpu":
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(cpu_threads())
            if o.onednn:
                config.enable_mkldnn()
                config.delete_pass("inplace_pass")  # corrupts concat([sin, cos]) with oneDNN (see module doc)
            else:
                config.disable_mkldnn()
            return config
        device_id = int(o.device.split(":")[1]) if ":" in o.device else 0
        config.enable_use_gpu(256, device_id)
        if o.tensorrt:
            precision = {
                "float32": inference.PrecisionType.Float32,
                "float16": inference.PrecisionType.Half,
                "bfloat16": inference.PrecisionType.Bfloat16,
            }[o.dtype]
            config.enable_tensorrt_engine(
                workspace_size=o.workspace_mb << 20,
                max_batch_size=1,
                min_subgraph_size=o.min_subgraph_size,
                precision_mode=precision,
                use_static=True,
                use_calib_mode=False,
            )
            config.set_optim_cache_dir(str(Path(prefix).parent / "trt"))
        return config

    # ----------------------------------------------------------------- run
    def _run(self, predictor: Any, leaves: Sequence[Any]) -> Any:
        if self._options.device != "cpu":
            # Device tensors in, device tensors out: no host round trip.
            return predictor.run(list(leaves))[0]
        for name, value in zip(predictor.get_input_names(), leaves):
            handle = predictor.get_input_handle(name)
            handle.reshape(list(value.shape))
            handle.copy_from_cpu(value.numpy())
        predictor.run()
        output = predictor.get_output_handle(predictor.get_output_names()[0])
        return paddle.to_tensor(output.copy_to_cpu())
