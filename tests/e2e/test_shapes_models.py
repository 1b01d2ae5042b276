"""The trained shapes models shipped in components/assets/models/: they follow their prompts, on both engines.

Adherence is read by runner/quality.py over the 24-prompt evaluation set (prompt i with seed i), at each
model's own defaults, as `mode=bench mode.quality=true` reads it. The default model is held to the issue's
targets: >= 90% colour and background, >= 80% shape (chance: 12.5% and 33%). shapes_flux (no guidance) is
held to what it ships at, less a margin. docs/benchmarks.md lists both models' figures.
"""

from __future__ import annotations

import numpy as np
import pytest

import runner
from runner.bench_quality import draw
from runner.quality import adherence_score
from runner.shapes import evaluation_prompts
from tests.support.configs import compose_config
from tests.support.runs import max_pixel_diff

THRESHOLDS = {
    "shapes_sd15": {"colour": 0.9, "background": 0.9, "shape": 0.8},
    # After an hour on one core and without guidance it gets the two colours but often swaps them, in blobs:
    # held above chance (1/8 for a colour) with a margin below what it ships at (docs/benchmarks.md).
    "shapes_flux": {"colour": 0.35, "background": 0.35},
}
ENGINES = ("torch", "paddle")


def test_the_default_is_the_trained_model_and_its_prompt() -> None:
    cfg = compose_config([])
    assert cfg.model.name == "shapes_sd15" and cfg.model.weights == "bundled:shapes_sd15"
    assert cfg.prompt == "a red circle on a blue background"


@pytest.fixture(scope="module")
def drawn() -> dict[tuple[str, str], list[np.ndarray]]:
    """(model, engine) -> the 24 evaluation images, drawn once for this module."""
    made: dict[tuple[str, str], list[np.ndarray]] = {}

    def get(model: str, engine: str) -> list[np.ndarray]:
        if (model, engine) not in made:
            pipe = runner.load([f"model={model}", f"backend={engine}", "noise=numpy", "quiet=true"])
            made[model, engine] = draw(pipe, evaluation_prompts(24), seed=0)
        return made[model, engine]

    return get


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model", sorted(THRESHOLDS))
def test_trained_models_follow_their_prompts(drawn, model: str, engine: str) -> None:
    score = adherence_score(drawn(model, engine), evaluation_prompts(24))
    assert score["images"] == 24
    for attribute, floor in THRESHOLDS[model].items():
        assert score[attribute] >= floor, f"{model} on {engine}: {attribute} adherence {score[attribute]} < {floor}"


@pytest.mark.paddle
@pytest.mark.parametrize("model", sorted(THRESHOLDS))
def test_engines_draw_the_same_images(drawn, model: str) -> None:
    """Same weights directory, same prompts and seeds, noise=numpy: within 2 levels (two frameworks' kernels)."""
    torch_images, paddle_images = drawn(model, "torch"), drawn(model, "paddle")
    assert max(max_pixel_diff(a, b) for a, b in zip(torch_images, paddle_images)) <= 2


def test_a_bundled_name_that_does_not_exist_is_refused_before_loading() -> None:
    from runner.errors import ConfigError
    from runner.plan import plan_run

    with pytest.raises(ConfigError) as err:
        plan_run(compose_config(["model=shapes_sd15", "model.weights=bundled:shapes_sdxl"]), check_capabilities=False)
    assert str(err.value) == (
        "model.weights='bundled:shapes_sdxl' names no bundled pipeline; bundled: shapes_flux, shapes_sd15"
    )


def test_the_default_run_equals_diffusers_on_the_shipped_directory() -> None:
    """The runner's default (torch) against diffusers' StableDiffusionPipeline loading the same folder itself."""
    import torch
    from diffusers import StableDiffusionPipeline

    from components.loading import ASSETS
    from tests.support.runs import runner_images, to_uint8

    ours = runner_images(["backend=torch", "seed=3"])
    pipe = StableDiffusionPipeline.from_pretrained(ASSETS / "models" / "shapes_sd15")
    cfg = compose_config([])
    defaults = cfg.model.run_defaults
    stock = pipe(cfg.prompt, num_inference_steps=defaults.steps, guidance_scale=defaults.guidance, height=64,
                 width=64, output_type="np", generator=torch.Generator().manual_seed(3)).images  # fmt: skip
    assert max_pixel_diff(ours, to_uint8(stock)) <= 1
