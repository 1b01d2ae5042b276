"""The PaddlePaddle engine: ppdiffusers models and schedulers, Paddle tensors and generators."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.engine_base import EngineBase
from components.loading import ComponentType, folder_is_torch_format
from components.paddle.runtime import cpu_threads, import_paddle, import_ppdiffusers
from components.paddle.torch_weights import load_torch_layout_text_model, rename_torch_text_state
from components.single_file import check_state
from runner.errors import ConfigError
from runner.registry import import_object

paddle = import_paddle()
ppdiffusers = import_ppdiffusers()

DTYPES = {"float32": paddle.float32, "float16": paddle.float16, "bfloat16": paddle.bfloat16}

_TF = "ppdiffusers.transformers"
COMPONENT_TYPES: dict[str, ComponentType] = {
    "clip_tokenizer": ComponentType("tokenizer", f"{_TF}:CLIPTokenizer", asset="clip"),
    # Built from spiece.model alone: paddlenlp rejects the <extra_id_*> numbering that transformers
    # writes into tokenizer_config.json; prompts never use those ids.
    "t5_tokenizer": ComponentType("tokenizer", f"{_TF}:T5Tokenizer", asset="t5", vocab_file="spiece.model"),
    "clip_text_model": ComponentType("text_model", f"{_TF}:CLIPTextModel", f"{_TF}:CLIPTextConfig"),
    "clip_text_model_with_projection": ComponentType(
        "text_model", f"{_TF}:CLIPTextModelWithProjection", f"{_TF}:CLIPTextConfig"
    ),
    "t5_encoder": ComponentType("text_model", f"{_TF}:T5EncoderModel", f"{_TF}:T5Config"),
    "unet_2d_condition": ComponentType("model", "ppdiffusers:UNet2DConditionModel"),
    "autoencoder_kl": ComponentType("model", "ppdiffusers:AutoencoderKL"),
    "sd3_transformer": ComponentType("model", "ppdiffusers:SD3Transformer2DModel"),
    # ppdiffusers has no Flux: this project's Paddle port, loading diffusers checkpoints as they are.
    "flux_transformer": ComponentType("model", "components.paddle.flux.transformer:FluxTransformer2DModel"),
}
# Samplers ppdiffusers 0.29 has only in an older form (no resolution-dependent shift for Flux).
SCHEDULER_OVERRIDES = {
    "FlowMatchEulerDiscreteScheduler": "components.paddle.schedulers:FlowMatchEulerDiscreteScheduler",
}


# Options of diffusers' schedulers (0.42, saved in every scheduler_config.json they write) that ppdiffusers
# 0.29's class of the same name lacks, with the value that leaves the schedule as that class computes it.
# from_config drops a key its class lacks without a word, so an option set otherwise would change diffusers'
# schedule and nothing here; check_scheduler_options refuses that. Keys neither library's class has (leftovers
# of another sampler's config, such as PNDM's skip_prk_steps under DDIM) are dropped by both, as before.
# The FlowMatchEuler port follows time_shift_type, shift_terminal and invert_sigmas itself.
_SIGMA_SCHEDULES = {"use_exponential_sigmas": False, "use_beta_sigmas": False}
_FLOW_OPTIONS = {"use_flow_sigmas": False, "use_dynamic_shifting": False, "rescale_betas_zero_snr": False}
OPTIONS_PPDIFFUSERS_LACKS: dict[str, dict[str, Any]] = {
    "EulerDiscreteScheduler": {**_SIGMA_SCHEDULES, "rescale_betas_zero_snr": False},
    "EulerAncestralDiscreteScheduler": {"rescale_betas_zero_snr": False},
    "HeunDiscreteScheduler": dict(_SIGMA_SCHEDULES),
    "DPMSolverMultistepScheduler": {**_SIGMA_SCHEDULES, **_FLOW_OPTIONS},
    "UniPCMultistepScheduler": {**_SIGMA_SCHEDULES, **_FLOW_OPTIONS, "sigma_min": None, "sigma_max": None,
                                "shift_terminal": None},
    "FlowMatchEulerDiscreteScheduler": {**_SIGMA_SCHEDULES, "use_karras_sigmas": False, "stochastic_sampling": False},
}  # fmt: skip


def check_scheduler_options(class_name: str, config: Mapping[str, Any]) -> None:
    """Refuse, in one line, a scheduler config that sets an option of diffusers' class which the Paddle class
    lacks (and would silently drop) to a value that changes the schedule."""
    lacking = OPTIONS_PPDIFFUSERS_LACKS.get(class_name, {})
    changing = [f"{key}={config[key]!r}" for key, neutral in lacking.items() if config.get(key, neutral) != neutral]
    if changing:
        raise ConfigError(
            f"scheduler config sets {', '.join(changing)}, which ppdiffusers {ppdiffusers.__version__}'s "
            f"{class_name} does not have: the Paddle engine cannot follow that schedule (the torch engine can)"
        )


class PaddleEngine(EngineBase):
    name = "paddle"
    component_types = COMPONENT_TYPES
    library = ppdiffusers

    def __init__(self, *, device: str, dtype: str) -> None:
        super().__init__(device=device, dtype=dtype)
        paddle.set_device(device)
        if device == "cpu":
            paddle.base.core.set_num_threads(cpu_threads())

    # ----------------------------------------------------------------- components
    def _from_pretrained(self, ctype: ComponentType, cls: Any, folder: Path) -> Any:
        # Hub checkpoints are PyTorch-layout: ppdiffusers converts diffusers models in memory; text
        # encoders are converted by our own loader, which (unlike paddlenlp's) writes nothing to disk.
        torch_layout = folder_is_torch_format(folder)
        if ctype.kind == "text_model" and torch_layout:
            return load_torch_layout_text_model(cls, folder)
        return cls.from_pretrained(str(folder), from_diffusers=torch_layout, paddle_dtype=self.dtype_name)

    def _load_state(self, module: Any, state: dict[str, np.ndarray], path: Path, role: str) -> Any:
        # The PyTorch-layout names and shapes go through the conversions directories use: ppdiffusers' own for
        # its models (Linear weights transposed), paddlenlp's name mappings for text encoders.
        state = dict(state)
        if isinstance(module, ppdiffusers.ModelMixin):
            from ppdiffusers.models.modeling_pytorch_paddle_utils import convert_pytorch_state_dict_to_paddle

            state = convert_pytorch_state_dict_to_paddle(module, state)
        else:
            state = rename_torch_text_state(type(module), module.config, state)
        params = module.state_dict()
        check_state({k: tuple(v.shape) for k, v in params.items()}, state, path, role)
        with paddle.no_grad():
            for key, array in state.items():  # one converted weight at a time beside the module
                target = params[key]
                target.set_value(paddle.to_tensor(np.ascontiguousarray(array)).cast(target.dtype))
        return module

    def _manual_seed(self, seed: int) -> None:
        paddle.seed(seed)

    @contextlib.contextmanager
    def _building_dtype(self) -> Iterator[None]:
        # Parameters are created in the target dtype: a 12B model never exists as an fp32 copy.
        previous = paddle.get_default_dtype()
        paddle.set_default_dtype(self.dtype_name)
        try:
            yield
        finally:
            paddle.set_default_dtype(previous)

    def _place(self, module: Any) -> Any:
        # Models built from configs start in train mode (T5 dropout would be active).
        module.eval()
        if module.dtype != self.dtype:
            module.to(dtype=self.dtype)
        return module

    def make_scheduler(self, class_name: str, config: Mapping[str, Any]) -> Any:
        override = SCHEDULER_OVERRIDES.get(class_name)
        cls = import_object(override) if override else getattr(ppdiffusers, class_name)
        check_scheduler_options(class_name, config)
        return cls.from_config(dict(config))

    def move_module(self, module: Any, where: str, *, recurse: bool = True) -> None:
        place = self.device if where == "device" else "cpu"
        # Layer.to always recurses; _to_impl (what it calls) can leave the sublayers where they are.
        module._to_impl(device=place, include_sublayers=recurse)

    def tensor_holders(self, component: Any) -> list[Any]:
        return [
            layer
            for layer in component.sublayers(include_self=True)
            if layer.parameters(include_sublayers=False) or layer.buffers(include_sublayers=False)
        ]

    # ----------------------------------------------------------------- tensors
    def cat(self, tensors: Sequence[Any], dim: int = 0) -> Any:
        return paddle.concat(list(tensors), axis=dim)

    def zeros_like(self, x: Any) -> Any:
        return paddle.zeros_like(x)

    def zeros(self, shape: Sequence[int], dtype: Any) -> Any:
        return paddle.zeros(list(shape), dtype=dtype)

    def tensor(self, data: Any, dtype: Any = None) -> Any:
        return paddle.to_tensor(data, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.cast(paddle.float32).numpy()

    def cast(self, x: Any, dtype: Any) -> Any:
        return x.cast(dtype)

    @property
    def dtype(self) -> Any:
        return DTYPES[self.dtype_name]

    def generator(self, seed: int) -> Any:
        return paddle.Generator().manual_seed(seed)

    def randn(self, shape: Sequence[int], generator: Any, dtype: Any) -> Any:
        from ppdiffusers.utils.paddle_utils import randn_tensor

        return randn_tensor(list(shape), generator=generator, dtype=dtype)

    def tokenize(self, tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
        encoded = tokenizer(
            list(texts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pd"
        )
        return encoded.input_ids

    def flop_counter(self, modules: Sequence[Any]) -> Any:
        from components.paddle.flops import PaddleFlopCounter

        return PaddleFlopCounter(modules)

    @property
    def lora_weights(self) -> Any:
        from components.paddle.lora import PaddleLoraWeights

        return PaddleLoraWeights()

    @property
    def fusion(self) -> Any:
        from components.paddle import fusion

        return fusion

    def select_attention(
        self, component: Any, kernel: str, changes: Any, dry_run: bool = False
    ) -> tuple[str | None, dict]:
        from components.paddle.attention import select_attention

        return select_attention(component, kernel, self.device, changes, dry_run)

    # ----------------------------------------------------------------- runtime
    def inference_mode(self) -> contextlib.AbstractContextManager[None]:
        return paddle.no_grad()

    def synchronize(self) -> None:
        if not self.runs_on_host:
            paddle.device.synchronize()

    def _reset_device_peak(self) -> bool:
        if self.device.startswith("gpu"):
            paddle.device.cuda.reset_max_memory_allocated()
            return True
        return False

    def _device_peak_mb(self) -> float | None:
        return paddle.device.cuda.max_memory_allocated() / 2**20 if self.device.startswith("gpu") else None

    def versions(self) -> dict[str, str]:
        import paddlenlp

        return {
            "paddlepaddle": paddle.__version__,
            "ppdiffusers": ppdiffusers.__version__,
            "paddlenlp": paddlenlp.__version__,
        }
