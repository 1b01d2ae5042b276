"""The runner on the Paddle engine reproduces ppdiffusers' own pipelines pixel for pixel.

Same weights directory, seed and settings; fp32 on CPU. Tolerance: max |pixel difference| <= 1
(one rounding step of uint8; Tolerances.paddle_stock in tests/support/cases.py); in practice the images
are identical. SD3's comparison needs its own set-up and is in test_paddle_sd3_flux.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from runner.conf_index import group_options
from tests.support.cases import case, names, slow_except
from tests.support.configs import model_spec
from tests.support.runs import max_pixel_diff, runner_images, to_uint8

pytestmark = [pytest.mark.paddle, pytest.mark.filterwarnings("ignore")]


def stock_images(model: str, weights, scheduler: str, **call) -> np.ndarray:
    """Images from ppdiffusers' stock pipeline for the model's family, loaded from `weights`, with the
    sampler swapped the way users swap it: Class.from_config(pipe.scheduler.config, **options)."""
    from components.paddle.runtime import import_paddle, import_ppdiffusers

    ppdiffusers = import_ppdiffusers()
    paddle = import_paddle()
    pipeline_cls = getattr(ppdiffusers, model_spec(model).pipeline_classes[0])
    extra = {"add_watermarker": False} if "XL" in pipeline_cls.__name__ else {}
    pipe = pipeline_cls.from_pretrained(str(weights), from_diffusers=True, **extra)
    if scheduler != "default":
        option = group_options("scheduler")[scheduler]
        scheduler_cls = getattr(ppdiffusers, option["class_name"])
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **option.get("options", {}))
    pipe.set_progress_bar_config(disable=True)
    seed = call.pop("seed")
    out = pipe(generator=paddle.Generator().manual_seed(seed), output_type="np", **call)
    return to_uint8(out.images)


# SD3's stock pipeline needs a paddlenlp T5 tokenizer and 77 T5 tokens: test_paddle_sd3_flux.py compares it.
STOCK_MODELS = names(ppdiffusers_pipeline=True, exclude=("tiny_sd3",))
SCENARIOS = {
    # model: [(scheduler option, negative prompt, batch, height, width)]
    "tiny_sd15": [
        ("default", "blurry, low quality", 2, 64, 48),
        ("ddim", None, 1, 48, 64),
        ("euler_a", "blurry", 2, 64, 64),  # stochastic: noise from the shared generator
    ],
    "tiny_sd21": [
        ("default", "blurry, low quality", 2, 64, 48),  # DDIM, v-prediction
        ("dpmpp_2m", "blurry", 1, 64, 64),
        ("heun", None, 2, 40, 64),  # 2nd order: two UNet calls per step
    ],
    "tiny_sdxl": [
        ("default", "blurry, low quality", 2, 64, 48),
        ("default", None, 2, 64, 64),  # no negative prompt: SDXL's zero negative embeddings
        ("lms", "blurry", 1, 48, 64),
    ],
}
CASES = [(model, *scenario) for model in STOCK_MODELS for scenario in SCENARIOS.get(model, [])]


def test_every_model_with_a_stock_pipeline_has_scenarios():
    assert sorted(SCENARIOS) == sorted(STOCK_MODELS)


@pytest.mark.parametrize("model", names())
def test_the_table_knows_which_families_ppdiffusers_has(model):
    from components.paddle.runtime import import_ppdiffusers

    pipeline = model_spec(model).pipeline_classes[0]
    assert hasattr(import_ppdiffusers(), pipeline) == case(model).ppdiffusers_pipeline, pipeline


@pytest.mark.parametrize("model,scheduler,negative,batch,height,width", slow_except(CASES, CASES[0]))
def test_runner_matches_stock_pipeline(tiny_weights, model, scheduler, negative, batch, height, width):
    weights = tiny_weights(model)
    prompt = "a red fox in the snow"
    overrides = [
        f"model={model}",
        f"model.weights={weights}",
        f"scheduler={scheduler}",
        f"prompt='{prompt}'",
        f"batch={batch}",
        f"height={height}",
        f"width={width}",
        "steps=3",
        "guidance=6.0",
        "seed=7",
    ]
    if negative:
        overrides.append(f"negative_prompt='{negative}'")
    ours = runner_images(overrides)
    theirs = stock_images(
        model,
        weights,
        scheduler,
        prompt=prompt,
        negative_prompt=negative,
        num_images_per_prompt=batch,
        height=height,
        width=width,
        num_inference_steps=3,
        guidance_scale=6.0,
        seed=7,
    )
    assert ours.shape == (batch, height, width, 3)
    assert ours.std() > 1.0, "the image is flat: the comparison would prove nothing"
    assert max_pixel_diff(ours, theirs) <= case(model).tolerances.paddle_stock


@pytest.mark.slow
def test_paddle_layout_directory_gives_the_same_images(tiny_weights, paddle_layout_weights):
    """A directory saved by ppdiffusers (Paddle safetensors) loads and gives the hub-layout images."""
    common = ["model=tiny_sd15", "seed=5", "steps=2", "batch=2"]
    hub = runner_images([*common, f"model.weights={tiny_weights('tiny_sd15')}"])
    paddle_layout = runner_images([*common, f"model.weights={paddle_layout_weights('tiny_sd15')}"])
    assert max_pixel_diff(hub, paddle_layout) == 0
