"""Paddle Inference backends: `paddle_inference` (CPU with oneDNN, or GPU) and `tensorrt`.

The denoiser (the `compile` roles) runs through exported static programs and inference predictors, from
a hook on its call (the module stays itself); text encoders and the VAE stay eager (they run once per
image, the denoiser once per step).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.backends.paddle_device import PaddleDeviceBackend
from runner.hooks import register_hook


class PaddleInferenceBackend(PaddleDeviceBackend):
    def prepare(self, components: Mapping[str, Any], engine: Any) -> None:
        from components.paddle.inference import HOOK_NAME, InferenceHook, InferenceOptions, default_cache_dir

        o = self.spec.options
        options = InferenceOptions(
            device=engine.device,
            dtype=engine.dtype_name,
            onednn=bool(o.get("onednn", True)) and engine.device == "cpu",
            tensorrt=bool(o.get("tensorrt", False)),
            cache_dir=Path(o["cache_dir"]).expanduser() if o.get("cache_dir") else default_cache_dir(),
            workspace_mb=int(o.get("workspace_mb", 4096)),
            min_subgraph_size=int(o.get("min_subgraph_size", 3)),
        )
        for role in self.compile_roles(components):
            register_hook(components[role], HOOK_NAME, InferenceHook(options))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "compiled": list(self.spec.options.get("compile", []))}
