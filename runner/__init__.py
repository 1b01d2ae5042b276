"""diffusion-runner: a declarative, Hydra-driven inference runner for text-to-image diffusion models.

    import runner
    pipe = runner.load(["model=tiny_sd15", "backend=torch"])
    image = pipe.text_to_image("a red fox", seed=3)

Importing the package imports the API (Hydra, OmegaConf, NumPy, Pillow) but no engine: PyTorch or Paddle load
with the first pipeline that needs them (through the registry).
"""

from __future__ import annotations

from runner.api import Generation, Pipeline, compose, load

__all__ = ["Generation", "Pipeline", "compose", "load"]
