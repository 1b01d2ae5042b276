"""Pipeline directories for tests: tiny random weights saved the way the model hub ships checkpoints.

The weights are built from the tiny model configs by the torch engine (random, seeded), assembled into
the stock diffusers pipeline and saved with its `save_pretrained`, so the directory has exactly the
hub's diffusers layout (PyTorch safetensors, transformers-format text encoders, tokenizer files).
A Paddle-layout copy is made by loading that directory into ppdiffusers and saving it again.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from tests.support.configs import model_spec

OPTIONAL_PIPELINE_ARGS = {
    "safety_checker": None,
    "feature_extractor": None,
    "image_encoder": None,
    "requires_safety_checker": False,
    "add_watermarker": False,
}


def stock_pipeline_from_random(model_name: str, library: Any) -> Any:
    """Assemble `library`'s stock pipeline class around torch-engine random components."""
    from components.torch.engine import TorchEngine

    model = model_spec(model_name)
    engine = TorchEngine(device="cpu", dtype="float32")
    components = {
        role: engine.load_component(spec, None, seed=model.init_seed) for role, spec in model.components.items()
    }
    components["scheduler"] = engine.make_scheduler(model.scheduler_class, model.scheduler_config)
    pipeline_cls = getattr(library, model.pipeline_classes[0])
    accepted = inspect.signature(pipeline_cls.__init__).parameters
    extra = {k: v for k, v in OPTIONAL_PIPELINE_ARGS.items() if k in accepted and k not in components}
    return pipeline_cls(**components, **extra)


def save_torch_layout(model_name: str, out_dir: Path) -> Path:
    import diffusers

    pipe = stock_pipeline_from_random(model_name, diffusers)
    pipe.save_pretrained(str(out_dir))
    return out_dir


def save_paddle_layout(torch_dir: Path, out_dir: Path) -> Path:
    """Convert a hub-layout directory to ppdiffusers' own layout (Paddle safetensors)."""
    from components.paddle.runtime import import_ppdiffusers

    ppdiffusers = import_ppdiffusers()
    pipe = ppdiffusers.DiffusionPipeline.from_pretrained(str(torch_dir), from_diffusers=True)
    pipe.save_pretrained(str(out_dir))
    return out_dir
