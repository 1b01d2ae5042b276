"""Pipeline directories for tests: tiny random weights saved the way the model hub ships checkpoints.

The weights are built from the tiny model configs by the torch engine (random, seeded), assembled into
the stock diffusers pipeline and saved with its `save_pretrained`, so the directory has exactly the
hub's diffusers layout (PyTorch safetensors, transformers-format text encoders, tokenizer files).
A Paddle-layout copy is made by loading that directory into ppdiffusers and saving it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.configs import compose_config


def stock_pipeline_from_random(model_name: str) -> Any:
    """diffusers' stock pipeline class around the runner's torch-engine random components."""
    from runner.app import build_pipeline
    from runner.plan import plan_run

    plan = plan_run(compose_config([f"model={model_name}", "backend=torch", "backend.device=cpu"]))
    built = build_pipeline(plan)
    return built.engine.stock_pipeline(plan.model.pipeline_classes[0], built.components)


def save_torch_layout(model_name: str, out_dir: Path) -> Path:
    pipe = stock_pipeline_from_random(model_name)
    pipe.save_pretrained(str(out_dir))
    return out_dir


def save_paddle_layout(torch_dir: Path, out_dir: Path) -> Path:
    """Convert a hub-layout directory to ppdiffusers' own layout (Paddle safetensors)."""
    from components.paddle.runtime import import_ppdiffusers

    ppdiffusers = import_ppdiffusers()
    pipe = ppdiffusers.DiffusionPipeline.from_pretrained(str(torch_dir), from_diffusers=True)
    pipe.save_pretrained(str(out_dir))
    return out_dir
