"""Paddle Inference backends: `paddle_inference` (CPU with oneDNN, or GPU) and `tensorrt`.

The denoiser (the `compile` roles) runs through exported static programs and inference predictors, from
a hook on its call (the module stays itself); text encoders and the VAE stay eager (they run once per
image, the denoiser once per step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.backends.base import denoiser_roles
from components.backends.paddle_device import PaddleDeviceBackend, PaddleDeviceOptions
from runner.hooks import register_hook


@dataclass(frozen=True)
class PaddleInferenceOptions(PaddleDeviceOptions):
    compile: list[str] = field(default_factory=denoiser_roles)  # component roles run by Paddle Inference
    tensorrt: bool = False  # TensorRT subgraphs (GPU builds with TensorRT)
    onednn: bool = True  # oneDNN kernels on the CPU
    cache_dir: str | None = None  # exported programs; None: ~/.cache/diffusion-runner/paddle_inference
    workspace_mb: int = 4096  # TensorRT workspace
    min_subgraph_size: int = 3  # smallest subgraph TensorRT takes over


class PaddleInferenceBackend(PaddleDeviceBackend):
    options_schema = PaddleInferenceOptions
    updates_weights_in_place = False  # the predictor loads the exported weights into its own scope

    def prepare(self, components: Mapping[str, Any], engine: Any) -> None:
        from components.paddle.inference import HOOK_NAME, InferenceHook, InferenceOptions, default_cache_dir

        o = self.spec.options
        options = InferenceOptions(
            device=engine.device,
            dtype=engine.dtype_name,
            onednn=o.onednn and engine.device == "cpu",
            tensorrt=o.tensorrt,
            cache_dir=Path(o.cache_dir).expanduser() if o.cache_dir else default_cache_dir(),
            workspace_mb=o.workspace_mb,
            min_subgraph_size=o.min_subgraph_size,
        )
        for role in self.compile_roles(components):
            register_hook(components[role], HOOK_NAME, InferenceHook(options))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "compiled": list(self.spec.options.compile)}
