"""One registry of named building blocks, imported lazily.

Names map to "module:attribute" strings so that resolving `backend=paddle` never imports torch and
listing what exists costs nothing. A test checks that every registered backend, model stage and pass
has its config and that every config names a registered entry.
"""

from __future__ import annotations

import importlib
from typing import Any

from hydra.utils import get_object

from runner.errors import ConfigError

REGISTRY: dict[str, dict[str, str]] = {
    # An engine is a framework plus its model library (weights loading, tensors, generators).
    "engine": {
        "paddle": "components.paddle.engine:PaddleEngine",
        "torch": "components.torch.engine:TorchEngine",
    },
    # A backend is an engine plus a way to run it (device, graph compilation, inference runtime).
    "backend": {
        "paddle": "components.backends.paddle_device:PaddleDeviceBackend",
        "xpu": "components.backends.paddle_device:PaddleDeviceBackend",
        "dcu": "components.backends.paddle_device:PaddleDeviceBackend",
        "custom_device": "components.backends.paddle_device:PaddleCustomDeviceBackend",
        "paddle_jit": "components.backends.paddle_jit:PaddleJitBackend",
        "cinn": "components.backends.paddle_jit:PaddleJitBackend",
        "paddle_inference": "components.backends.paddle_inference:PaddleInferenceBackend",
        "tensorrt": "components.backends.paddle_inference:PaddleInferenceBackend",
        "torch": "components.backends.torch_backends:TorchBackend",
        "inductor": "components.backends.torch_backends:InductorBackend",
        "openvino": "components.backends.openvino_backend:OpenVinoBackend",
        "onnxruntime": "components.backends.onnxruntime_backend:OnnxRuntimeBackend",
    },
    # Stages are engine-neutral; they reach tensors through the engine's small op set.
    "stage": {
        "clip_text_encode": "components.stages.text:ClipTextEncode",
        "size_conditioning": "components.stages.conditioning:SizeConditioning",
        "sd3_text_encode": "components.stages.text:SD3TextEncode",
        "flux_text_encode": "components.stages.text:FluxTextEncode",
        "gaussian_latents": "components.stages.latents:GaussianLatents",
        "flow_latents": "components.stages.latents:FlowLatents",
        "packed_flow_latents": "components.stages.latents:PackedFlowLatents",
        "denoise_loop": "components.stages.denoise:DenoiseLoop",
        "vae_decode": "components.stages.decode:VaeDecode",
    },
    # Sub-steps of the denoise loop.
    "predictor": {
        "unet": "components.stages.predictors:UNetPredictor",
        "sd3_transformer": "components.stages.predictors:SD3TransformerPredictor",
        "flux_transformer": "components.stages.predictors:FluxTransformerPredictor",
    },
    # Optimization passes (passes/): conf/passes/<name>.yaml selects one, passes=[a,b] several.
    "pass": {
        "qkv_fusion": "passes.qkv_fusion:QKVFusion",
        "rope_cache": "passes.rope_cache:RopeCache",
        "attention": "passes.attention:AttentionKernel",
        "text_embedding_cache": "passes.text_embedding_cache:TextEmbeddingCache",
        "step_cache": "passes.step_cache:StepCache",
        "channels_last": "passes.channels_last:ChannelsLast",
        "groupnorm_silu": "passes.groupnorm_silu:GroupNormSiLU",
        "fp8_linear": "passes.fp8_linear:Fp8LinearPass",
        "cuda_graphs": "passes.cuda_graphs:CudaGraphs",
    },
    # Memory modes (conf/memory/<name>.yaml): where weights live during a run, how the VAE decodes.
    "memory": {
        "none": "components.memory.modes:KeepResident",
        "lean": "components.memory.modes:Lean",
        "offload": "components.memory.modes:ModelOffload",
        "sequential": "components.memory.modes:SequentialOffload",
    },
    "guidance": {
        "cfg": "components.stages.guidance:ClassifierFreeGuidance",
        "none": "components.stages.guidance:NoGuidance",
    },
}


def names(kind: str) -> list[str]:
    """Registered names of one kind, sorted."""
    return sorted(_table(kind))


def resolve(kind: str, name: str) -> Any:
    """Import and return the object registered as `name` under `kind`.

    Raises ConfigError naming the unknown value and what is allowed.
    """
    table = _table(kind)
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table))}")
    return import_object(table[name])


def import_object(path: str) -> Any:
    """Import "package.module:Attribute" (the attribute may be dotted: "package.module:Outer.Inner").

    Raises ValueError for a path without both parts, ModuleNotFoundError for a missing module and
    ImportError naming the part that is not there for a missing attribute.
    """
    module_name, colon, attr = path.partition(":")
    if not (colon and module_name and attr):
        raise ValueError(f"import path {path!r} is not of the form 'package.module:Attribute'")
    # The module is imported on its own first: hydra's lookup re-raises anything that goes wrong
    # while importing as ImportError, and the engine modules raise CapabilityError (with the extra to
    # install) when their framework is missing, which the CLI must receive as it is.
    importlib.import_module(module_name)
    # hydra-core 1.3.8's get_object reads dotted paths only (a colon would be taken as part of a
    # name); with the module imported, the dotted path walks to it and then down the attribute.
    return get_object(f"{module_name}.{attr}")


def _table(kind: str) -> dict[str, str]:
    if kind not in REGISTRY:
        raise KeyError(f"no registry kind {kind!r}; kinds: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[kind]
