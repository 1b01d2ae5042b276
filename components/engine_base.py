"""What every engine provides to the runner and to the engine-neutral stages.

An engine is a framework plus its model library. It builds components (from a weights folder or at
random from an architecture), and offers the handful of tensor operations the stages need; stages
otherwise use methods that Paddle and PyTorch tensors share (reshape, tile, chunk, arithmetic).
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.host_memory import PeakRssSampler
from components.loading import ComponentType, bundled_tokenizer
from components.lora import LoraFile, LoraWeights, apply_loras, read_lora
from components.single_file import component_state
from components.step_timer import HostStepTimer
from components.tokenizer_files import needs_rebuild, rebuilt_slow_files, slow_tokenizer_files
from runner.errors import ConfigError
from runner.registry import import_object
from runner.schema import ComponentSpec


class EngineBase(abc.ABC):
    """Shared building logic; subclasses fill in the framework hooks."""

    name: str = ""
    component_types: Mapping[str, ComponentType] = {}
    library: Any = None  # the stock pipeline library (ppdiffusers / diffusers)

    def __init__(self, *, device: str, dtype: str) -> None:
        self.device = device
        self.dtype_name = dtype
        self._rss = PeakRssSampler()

    def __deepcopy__(self, memo: dict[int, Any]) -> EngineBase:
        # One engine per run: hooks that hold it (caches) share it when a component is copied.
        return self

    # ----------------------------------------------------------------- components
    def load_component(
        self, spec: ComponentSpec, weights: str | None, *, seed: int, single_file: str | None = None
    ) -> Any:
        """Load `spec` from its folder in the pipeline directory `weights`, from the single-file checkpoint
        `weights` (`single_file`: its layout, runner/single_file.py), or with random weights when None.

        Random weights are seeded per component role, so adding a component never changes the others.
        """
        ctype = self.component_type(spec.type)
        cls = import_object(ctype.cls)
        if ctype.kind == "tokenizer":
            return self._load_tokenizer(ctype, cls, spec, None if single_file else weights)
        if weights is None:
            self._manual_seed(component_seed(seed, spec.role))
            with self._building_dtype():
                module = self._construct(ctype, cls, spec.config)
        elif single_file:
            module = self._from_single_file(ctype, cls, spec, Path(weights), single_file)
        else:
            module = self._from_pretrained(ctype, cls, Path(weights) / spec.path)
        return self._place(module)

    @staticmethod
    def _load_tokenizer(ctype: ComponentType, cls: Any, spec: ComponentSpec, weights_dir: str | None) -> Any:
        # The model YAML's max_length (conf/family/*.yaml) where the tokenizer's own files do not say.
        limit = {} if spec.max_length is None else {"model_max_length": spec.max_length}
        if weights_dir is None:
            # Weights that carry no tokenizer (random, a single file): the bundled one the model YAML names.
            folder = bundled_tokenizer(spec.asset or ctype.asset or "")
            pad = {} if spec.pad_token is None else {"pad_token": spec.pad_token}
            return cls.from_pretrained(str(folder), **limit, **pad)
        folder = Path(weights_dir) / spec.path
        slow_files = slow_tokenizer_files(cls)
        if slow_files and needs_rebuild(folder, slow_files):
            # Saved by transformers >= 5: tokenizer.json only, which this (slow) class cannot read.
            rebuilt, config = rebuilt_slow_files(folder, slow_files)
            return cls(*(str(rebuilt / name) for name in slow_files.values()), **config)
        if ctype.vocab_file and (folder / ctype.vocab_file).is_file():
            config_path = folder / "tokenizer_config.json"
            config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
            limit = {"model_max_length": config["model_max_length"]} if "model_max_length" in config else limit
            return cls(str(folder / ctype.vocab_file), **limit)
        return cls.from_pretrained(str(folder))

    def component_type(self, type_name: str) -> ComponentType:
        if type_name not in self.component_types:
            known = ", ".join(sorted(self.component_types))
            raise ConfigError(f"engine {self.name} has no component type {type_name!r}; it knows: {known}")
        return self.component_types[type_name]

    @staticmethod
    def _construct(ctype: ComponentType, cls: Any, config: Mapping[str, Any]) -> Any:
        if ctype.kind == "text_model":
            return cls(import_object(ctype.config_cls)(**config))
        return cls.from_config(dict(config))

    @abc.abstractmethod
    def _from_pretrained(self, ctype: ComponentType, cls: Any, folder: Path) -> Any:
        """Load a model from a component folder (either framework's weight layout)."""

    def _from_single_file(self, ctype: ComponentType, cls: Any, spec: ComponentSpec, path: Path, layout: str) -> Any:
        """Build the model from the YAML architecture and fill it with its converted weights from the file.

        In memory: nothing is written next to the file. Parameters are created in the run's dtype (as with
        random weights) and the file's values copied into them, cast as `from_pretrained` casts them.
        """
        state = component_state(path, spec, layout)
        with self._building_dtype():
            module = self._construct_to_load(ctype, cls, spec.config)
        return self._load_state(module, state, path, spec.role)

    def _construct_to_load(self, ctype: ComponentType, cls: Any, config: Mapping[str, Any]) -> Any:
        """Build a model that weights are loaded into, set up as `from_pretrained` sets it up."""
        return self._construct(ctype, cls, config)

    @abc.abstractmethod
    def _load_state(self, module: Any, state: dict[str, np.ndarray], path: Path, role: str) -> Any:
        """Copy PyTorch-layout NumPy weights (diffusers / transformers names) into a built module; return it.
        Raises ConfigError (components/single_file.check_state) when names or shapes do not match."""

    @abc.abstractmethod
    def _manual_seed(self, seed: int) -> None: ...

    @abc.abstractmethod
    def _building_dtype(self) -> contextlib.AbstractContextManager[None]:
        """Context in which parameters are created directly in the run's dtype."""

    @abc.abstractmethod
    def _place(self, module: Any) -> Any:
        """Put a built or loaded model on the device, in the run's dtype, in eval mode."""

    @abc.abstractmethod
    def make_scheduler(self, class_name: str, config: Mapping[str, Any]) -> Any: ...

    # ----------------------------------------------------------------- placement (memory modes)
    @abc.abstractmethod
    def move_module(self, module: Any, where: str, *, recurse: bool = True) -> None:
        """Put a module's weights on the run's device (`where="device"`) or in host memory (`"host"`), in place.
        recurse=False: only the tensors the module holds itself, not its submodules' (layer-by-layer offload,
        where each submodule moves on its own call). On a CPU run both places are the host: nothing is copied."""

    @abc.abstractmethod
    def tensor_holders(self, component: Any) -> list[Any]:
        """The component's submodules (itself included) that hold parameters or buffers of their own."""

    # ----------------------------------------------------------------- tensors
    @abc.abstractmethod
    def cat(self, tensors: Sequence[Any], dim: int = 0) -> Any: ...

    @abc.abstractmethod
    def zeros_like(self, x: Any) -> Any: ...

    @abc.abstractmethod
    def zeros(self, shape: Sequence[int], dtype: Any) -> Any: ...

    @abc.abstractmethod
    def tensor(self, data: Any, dtype: Any = None) -> Any:
        """A tensor on the run's device from Python or NumPy data."""

    @abc.abstractmethod
    def to_numpy(self, x: Any) -> np.ndarray: ...

    @abc.abstractmethod
    def cast(self, x: Any, dtype: Any) -> Any: ...

    @property
    @abc.abstractmethod
    def dtype(self) -> Any:
        """The framework dtype of this run's precision."""

    @abc.abstractmethod
    def generator(self, seed: int) -> Any:
        """The generator the stock pipelines use for `seed` (passed on to scheduler steps too)."""

    @abc.abstractmethod
    def randn(self, shape: Sequence[int], generator: Any, dtype: Any) -> Any:
        """Standard normal noise drawn exactly as the stock pipelines draw it from `generator`."""

    def numpy_randn(self, shape: Sequence[int], seed: int, dtype: Any) -> Any:
        """Framework-neutral noise: the same numbers on every engine for the same seed."""
        noise = np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)
        return self.cast(self.tensor(noise), dtype)

    @abc.abstractmethod
    def tokenize(self, tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
        """Token ids [len(texts), max_length], padded to and truncated at `max_length`."""

    # ----------------------------------------------------------------- LoRA
    @property
    @abc.abstractmethod
    def lora_weights(self) -> LoraWeights:
        """How this engine's layers hold the weights a LoRA changes (components/lora.py)."""

    def read_loras(self, specs: Sequence[Any], family: str, roles: Sequence[str]) -> list[LoraFile]:
        """Read and check LoRA files (`LoraSpec`s) before any weights load: format, family, components."""
        return [read_lora(spec.path, spec.scale, family, roles) for spec in specs]

    def apply_loras(
        self,
        components: Mapping[str, Any],
        files: Sequence[LoraFile],
        roles: Sequence[str],
        model_name: str,
        copies: Mapping[str, Sequence[Any]] | None = None,
    ) -> dict[str, int]:
        """Merge `files` into the components' weights in place, replacing any LoRA merged before (none: the
        original weights, bit for bit), and into `copies` of them; return the changed modules per component."""
        return apply_loras(components, self.lora_weights, files, roles, model_name, copies)

    # ----------------------------------------------------------------- passes
    @property
    @abc.abstractmethod
    def fusion(self) -> Any:
        """Module with is_linear(m), fuse(linears) -> (holder, parts), split(holder) -> linears."""

    @abc.abstractmethod
    def select_attention(
        self, component: Any, kernel: str, changes: Any, dry_run: bool = False
    ) -> tuple[str | None, dict[str, Any]]:
        """Make `component` use the `kernel` attention ("auto", "flash", "efficient", "cudnn", "math"),
        recording each change in `changes` (a runner.pass_base.Changes journal); return (None, what was
        chosen) or (why it cannot, {}). dry_run: only answer whether it can."""

    # ----------------------------------------------------------------- measurement
    @abc.abstractmethod
    def flop_counter(self, modules: Sequence[Any]) -> Any:
        """Context manager counting matmul/conv FLOPs inside it; its `total` is read after exit."""

    def stock_pipeline(self, class_name: str, components: Mapping[str, Any]) -> Any:
        """The library's own pipeline class around these components (for reference measurements).

        Raises ConfigError when the library has no such pipeline (ppdiffusers has no FluxPipeline).
        """
        pipeline_cls = getattr(self.library, class_name, None)
        if pipeline_cls is None:
            version = getattr(self.library, "__version__", "?")
            raise ConfigError(f"{self.library.__name__} {version} has no {class_name}")
        accepted = inspect.signature(pipeline_cls.__init__).parameters
        extra = {k: v for k, v in STOCK_PIPELINE_EXTRAS.items() if k in accepted and k not in components}
        pipe = pipeline_cls(**{k: v for k, v in components.items() if k in accepted}, **extra)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ----------------------------------------------------------------- runtime
    @abc.abstractmethod
    def inference_mode(self) -> contextlib.AbstractContextManager[None]: ...

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait for queued device work, so host timers measure it."""

    def step_timer(self) -> Any:
        """A timer with mark() / durations_ms(); engines with device events avoid a sync per mark."""
        return HostStepTimer(None if self.runs_on_host else self.synchronize)

    @property
    def runs_on_host(self) -> bool:
        return self.device == "cpu"

    def reset_peak_memory(self) -> None:
        """Start a new peak: the device allocator's where the engine tracks one, sampled RSS otherwise."""
        if not self._reset_device_peak():
            self._rss.reset()

    def peak_memory_mb(self) -> float:
        """Peak device memory since the last reset (host RSS on CPU and untracked devices)."""
        device_peak = self._device_peak_mb()
        if device_peak is not None:
            return device_peak
        peak = self._rss.peak_mb()
        self._rss.stop()
        return peak

    @property
    def peak_memory_source(self) -> str:
        """What `peak_memory_mb` measures here: the device allocator's peak, or the process's resident set."""
        return "host_rss" if self._device_peak_mb() is None else "device_allocator"

    def _reset_device_peak(self) -> bool:
        """Reset the device allocator's peak; False where this device has none to reset."""
        return False

    def _device_peak_mb(self) -> float | None:
        return None

    @abc.abstractmethod
    def versions(self) -> dict[str, str]: ...


# Optional pipeline constructor arguments the runner never uses (no safety checker, no watermark).
STOCK_PIPELINE_EXTRAS = {
    "safety_checker": None,
    "feature_extractor": None,
    "image_encoder": None,
    "requires_safety_checker": False,
    "add_watermarker": False,
}


def component_seed(seed: int, role: str) -> int:
    """A stable per-role seed (crc32 of the role name mixed into the base seed)."""
    return (seed * 1_000_003 + zlib.crc32(role.encode())) % (2**31 - 1)
