"""mode=bench mode.quality=true: what a job's settings do to the images, beside what they do to the speed.

The job draws a fixed prompt set (runner/shapes.evaluation_prompts; prompt i with seed + i) with its own
pipeline (backend, precision, passes applied), and the same prompts and seeds with the unoptimized fp32
pipeline of its model on its engine's eager backend. It reports prompt adherence of both (runner/quality.py)
and PSNR / SSIM of its images against the reference's. Reference images are kept per process, so a sweep
(-m, one process) draws them once per model, engine and run settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from runner.api import Pipeline, compose
from runner.images import save_png
from runner.quality import adherence_score, similarity
from runner.shapes import evaluation_prompts

EAGER_BACKEND = {"paddle": "paddle", "torch": "torch"}  # each engine's unoptimized backend
CHUNK = 8  # prompts per denoise batch, the same for the job and its reference
GRID_NAME = "quality_grid.png"
_REFERENCES: dict[str, list[np.ndarray]] = {}


def draw(pipe: Pipeline, prompts: Sequence[str], seed: int) -> list[np.ndarray]:
    """One image per prompt, prompt i drawn from seed + i, in batches of CHUNK where the sampler allows."""
    requests = [pipe.settings(prompt=p, seed=seed + i, batch=1) for i, p in enumerate(prompts)]
    size = CHUNK if pipe.merges_requests else 1
    images: list[np.ndarray] = []
    for start in range(0, len(requests), size):
        for generation in pipe.generate_batch(requests[start : start + size]):
            images.extend(generation.arrays)
    return images


def reference_overrides(cfg: Mapping[str, Any]) -> list[str]:
    """What makes a job its reference: fp32, no passes, its engine's eager backend."""
    return ["precision=fp32", "passes=none", f"backend={EAGER_BACKEND[cfg['backend']['engine']]}"]


def reference_config(cfg: Mapping[str, Any]) -> Any:
    """The job's config with the reference's precision, passes and backend groups."""
    groups = compose(reference_overrides(cfg))
    ref = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for group in ("precision", "passes", "backend"):
        ref[group] = groups[group]
    ref["mode"] = {"name": "run"}
    return ref


def reference_images(cfg: Mapping[str, Any], prompts: Sequence[str], seed: int, key: str) -> list[np.ndarray]:
    if key not in _REFERENCES:
        _REFERENCES[key] = draw(Pipeline.from_config(reference_config(cfg)), prompts, seed)
    return _REFERENCES[key]


def measure_quality(cfg: Mapping[str, Any], pipe: Pipeline, count: int, output_dir: Path) -> dict[str, Any]:
    """The `quality` section of a bench report (and a grid of the job's images in the run folder)."""
    prompts = evaluation_prompts(count)
    s = pipe.defaults
    images = draw(pipe, prompts, s.seed)
    settings = {k: getattr(s, k) for k in ("seed", "steps", "guidance", "guidance_rescale", "height", "width")}
    key = repr((OmegaConf.to_container(cfg["model"], resolve=True), cfg["backend"]["engine"], settings,
                str(cfg.get("noise")), prompts))  # fmt: skip
    references = reference_images(cfg, prompts, s.seed, key)
    save_png(output_dir / GRID_NAME, grid(images), {"prompts": "\n".join(prompts)})
    return {
        "prompts": len(prompts),
        "reference": " ".join(reference_overrides(cfg)),
        "adherence": adherence_score(images, prompts),
        "reference_adherence": adherence_score(references, prompts),
        "vs_reference": similarity(images, references),
        "grid": GRID_NAME,
        "settings": settings,
    }


def grid(images: Sequence[np.ndarray], columns: int = 8, gap: int = 2) -> np.ndarray:
    """Images side by side, `columns` per row, on a white canvas with `gap` pixels between them."""
    h, w, _ = images[0].shape
    rows = -(-len(images) // columns)
    canvas = np.full((rows * (h + gap) - gap, min(columns, len(images)) * (w + gap) - gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image
    return canvas
