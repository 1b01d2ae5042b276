"""Paddle Inference backends: `paddle_inference` (CPU with oneDNN, or GPU) and `tensorrt`.

The denoiser (the `compile` roles) runs through exported static programs and inference predictors;
text encoders and the VAE stay eager (they run once per image, the denoiser once per step).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.backends.paddle_device import PaddleDeviceBackend


class PaddleInferenceBackend(PaddleDeviceBackend):
    def prepare(self, components: Mapping[str, Any], engine: Any) -> dict[str, Any]:
        from components.paddle.inference import InferenceModule, InferenceOptions, default_cache_dir

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
        prepared = dict(components)
        for role in o.get("compile", []):
            if role in prepared:
                prepared[role] = InferenceModule(prepared[role], options)
        return prepared

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "compiled": list(self.spec.options.get("compile", []))}
