"""The PyTorch engine: diffusers models and schedulers, transformers text encoders, torch tensors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.engine_base import EngineBase
from components.loading import (
    ComponentType,
    folder_is_torch_format,
    weight_files,
    with_model_names,
    with_module_prefix,
)
from components.single_file import check_state
from components.torch.runtime import import_diffusers, import_torch, transformers_major
from runner.errors import ConfigError
from runner.registry import import_object

torch = import_torch()
diffusers = import_diffusers()

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

COMPONENT_TYPES: dict[str, ComponentType] = {
    "clip_tokenizer": ComponentType("tokenizer", "transformers:CLIPTokenizer", asset="clip"),
    "t5_tokenizer": ComponentType("tokenizer", "transformers:T5Tokenizer", asset="t5"),
    "clip_text_model": ComponentType("text_model", "transformers:CLIPTextModel", "transformers:CLIPTextConfig"),
    "clip_text_model_with_projection": ComponentType(
        "text_model", "transformers:CLIPTextModelWithProjection", "transformers:CLIPTextConfig"
    ),
    "t5_encoder": ComponentType("text_model", "transformers:T5EncoderModel", "transformers:T5Config"),
    "unet_2d_condition": ComponentType("model", "diffusers:UNet2DConditionModel"),
    "autoencoder_kl": ComponentType("model", "diffusers:AutoencoderKL"),
    "sd3_transformer": ComponentType("model", "diffusers:SD3Transformer2DModel"),
    "flux_transformer": ComponentType("model", "diffusers:FluxTransformer2DModel"),
}


def _attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    """q k^T and attn v for [B, H, S, D] inputs: 2*B*H*Sq*Sk*(D + Dv)."""
    b, h, sq, d = query_shape
    return 2 * b * h * sq * key_shape[-2] * (d + value_shape[-1])


class TorchFlopCounter:
    """torch.utils.flop_counter.FlopCounterMode, with the count in `total` after exit.

    FlopCounterMode has no formula for the CPU flash-attention kernel that scaled_dot_product_attention
    dispatches to on CPU, so attention would count as zero there; that kernel is added here (counted once:
    the total equals FlopCounterMode's own with the math kernel forced, where attention runs as bmm;
    tests/e2e/test_bench.py).
    """

    def __init__(self) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        mapping = {}
        cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        if cpu_flash is not None:
            mapping[cpu_flash] = _attention_flops
        self._mode = FlopCounterMode(display=False, custom_mapping=mapping)
        self.total = 0

    def __enter__(self) -> TorchFlopCounter:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        self.total = int(self._mode.get_total_flops())

    def per_op(self) -> dict[str, int]:
        """FLOPs per aten op (after exit)."""
        return {str(op): int(n) for op, n in self._mode.get_flop_counts()["Global"].items()}


class TorchEngine(EngineBase):
    name = "torch"
    component_types = COMPONENT_TYPES
    library = diffusers

    def __init__(self, *, device: str, dtype: str) -> None:
        super().__init__(device=device, dtype=dtype)
        self.torch_device = torch.device(device)

    # ----------------------------------------------------------------- components
    def _from_pretrained(self, ctype: ComponentType, cls: Any, folder: Path) -> Any:
        if not folder_is_torch_format(folder):
            raise ConfigError(
                f"{folder} holds Paddle-layout weights; the torch engine reads PyTorch-layout checkpoints "
                "(as the model hub ships them)"
            )
        # transformers 5 renamed torch_dtype to dtype; diffusers kept torch_dtype.
        key = "dtype" if ctype.kind == "text_model" and transformers_major() >= 5 else "torch_dtype"
        if ctype.kind != "text_model":
            return cls.from_pretrained(str(folder), **{key: self.dtype})
        model, info = cls.from_pretrained(str(folder), output_loading_info=True, **{key: self.dtype})
        if info["missing_keys"]:
            # transformers < 5 reading a CLIPTextModel saved by transformers 5, whose weights lack the
            # `text_model.` prefix: from_pretrained keeps random weights for every one of them, with only a
            # log line. The same weights under the names this class reads load it.
            model, info = self._text_model_with_prefixed_names(cls, folder, model, info, key)
        missing = sorted(info["missing_keys"])  # a list in transformers 4, a set in 5
        if missing:
            raise ConfigError(
                f"{folder}: the checkpoint lacks {len(missing)} weight(s) of {cls.__name__}, e.g. {missing[0]!r}"
            )
        return model

    def _text_model_with_prefixed_names(
        self, cls: Any, folder: Path, model: Any, info: dict, key: str
    ) -> tuple[Any, dict]:
        from safetensors.torch import load_file

        files = weight_files(folder)
        if any(f.suffix != ".safetensors" for f in files):
            return model, info
        state: dict[str, Any] = {}
        for path in files:
            state.update(load_file(str(path)))
        renamed = with_module_prefix(state, set(model.state_dict()))
        if renamed is state:
            return model, info
        return cls.from_pretrained(
            None, config=model.config, state_dict=renamed, output_loading_info=True, **{key: self.dtype}
        )

    def _construct_to_load(self, ctype: ComponentType, cls: Any, config: Mapping[str, Any]) -> Any:
        if ctype.kind == "text_model":
            # As from_pretrained builds it: _from_config picks the attention implementation (SDPA where available)
            # that a directory's encoder gets; the plain constructor keeps eager attention, a last-bit difference.
            return cls._from_config(import_object(ctype.config_cls)(**config))
        return super()._construct_to_load(ctype, cls, config)

    def _load_state(self, module: Any, state: dict[str, np.ndarray], path: Path, role: str) -> Any:
        # Tensor by tensor: only one converted weight exists beside the module at a time (copy_ casts it).
        params = module.state_dict(keep_vars=True)
        state = with_model_names(state, set(params))
        check_state({k: tuple(v.shape) for k, v in params.items()}, state, path, role)
        with torch.no_grad():
            for key, array in state.items():
                params[key].copy_(torch.from_numpy(np.array(array)))  # np.array: a writable copy of the mapped file
        return module

    def _manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    @contextlib.contextmanager
    def _building_dtype(self) -> Iterator[None]:
        # Parameters are created on the device in the target dtype: no fp32 host copy of a large model.
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with self.torch_device:
                yield
        finally:
            torch.set_default_dtype(previous)

    def _place(self, module: Any) -> Any:
        module.eval()
        module.requires_grad_(False)
        return module.to(device=self.torch_device, dtype=self.dtype)

    def make_scheduler(self, class_name: str, config: Mapping[str, Any]) -> Any:
        return getattr(diffusers, class_name).from_config(dict(config))

    def move_module(self, module: Any, where: str, *, recurse: bool = True) -> None:
        target = self.torch_device if where == "device" else torch.device("cpu")
        # Outside inference mode: the moved copies become the parameters' data, which must not be inference
        # tensors (the stages run under torch.inference_mode, where the hooks that move weights are called).
        with torch.inference_mode(False), torch.no_grad():
            if recurse:
                module.to(target)
            else:  # Module.to always recurses; _apply(recurse=False) moves only the module's own tensors
                module._apply(lambda t: t.to(target), recurse=False)

    def tensor_holders(self, component: Any) -> list[Any]:
        return [
            m
            for m in component.modules()
            if next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None
        ]

    # ----------------------------------------------------------------- tensors
    def cat(self, tensors: Sequence[Any], dim: int = 0) -> Any:
        return torch.cat(list(tensors), dim=dim)

    def zeros_like(self, x: Any) -> Any:
        return torch.zeros_like(x)

    def zeros(self, shape: Sequence[int], dtype: Any) -> Any:
        return torch.zeros(tuple(shape), dtype=dtype, device=self.torch_device)

    def tensor(self, data: Any, dtype: Any = None) -> Any:
        return torch.tensor(
            np.asarray(data) if isinstance(data, np.ndarray) else data, dtype=dtype, device=self.torch_device
        )

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.detach().float().cpu().numpy()

    def cast(self, x: Any, dtype: Any) -> Any:
        return x.to(dtype)

    @property
    def dtype(self) -> Any:
        return DTYPES[self.dtype_name]

    def generator(self, seed: int) -> Any:
        # A CPU generator, as diffusers' docs recommend for reproducibility: the same seed gives the
        # same initial noise on CPU and GPU (randn_tensor draws on the CPU and moves the result).
        return torch.Generator("cpu").manual_seed(seed)

    def randn(self, shape: Sequence[int], generator: Any, dtype: Any) -> Any:
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(tuple(shape), generator=generator, device=self.torch_device, dtype=dtype)

    def tokenize(self, tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
        encoded = tokenizer(
            list(texts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        return encoded.input_ids.to(self.torch_device)

    def flop_counter(self, modules: Sequence[Any]) -> Any:
        return TorchFlopCounter()

    @property
    def lora_weights(self) -> Any:
        from components.torch.lora import TorchLoraWeights

        return TorchLoraWeights()

    @property
    def fusion(self) -> Any:
        from components.torch import fusion

        return fusion

    def select_attention(
        self, component: Any, kernel: str, changes: Any, dry_run: bool = False
    ) -> tuple[str | None, dict]:
        from components.torch.attention import select_attention

        return select_attention(component, kernel, self.torch_device, changes, dry_run)

    # ----------------------------------------------------------------- runtime
    def inference_mode(self) -> contextlib.AbstractContextManager[None]:
        return torch.inference_mode()

    def step_timer(self) -> Any:
        if self.torch_device.type == "cuda":
            from components.step_timer import CudaEventStepTimer

            return CudaEventStepTimer(torch)
        return super().step_timer()

    @property
    def runs_on_host(self) -> bool:
        return self.torch_device.type == "cpu"

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def _reset_device_peak(self) -> bool:
        if self.torch_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.torch_device)
            return True
        return False

    def _device_peak_mb(self) -> float | None:
        if self.torch_device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.torch_device) / 2**20

    def versions(self) -> dict[str, str]:
        import transformers

        return {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        }
