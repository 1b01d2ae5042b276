"""diffusion-runner: a declarative, Hydra-driven inference runner for text-to-image diffusion models.

    import runner
    pipe = runner.load(["model=tiny_sd15", "backend=torch"])
    image = pipe.text_to_image("a red fox", seed=3)

The names below are imported on first use, so `import runner` (and every `runner.*` module) stays free of
engine imports until a pipeline is loaded.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Generation", "Pipeline", "compose", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from runner import api

        return getattr(api, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
