"""noise=numpy: the Paddle and PyTorch engines give the same image from the same weights directory.

fp32, CPU; tolerance: max |pixel difference| <= 2 for every model (two frameworks' kernels differ in the
last bits): Tolerances.cross_engine in tests/support/cases.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.cases import case, names, slow_except
from tests.support.runs import max_pixel_diff, runner_images


def both_engines(tiny_weights, model: str, *overrides: str) -> tuple[np.ndarray, np.ndarray]:
    """(Paddle, PyTorch) images of one run from the model's tiny weights, noise=numpy, with `overrides`."""
    common = [
        f"model={model}",
        f"model.weights={tiny_weights(model)}",
        "noise=numpy",
        "seed=21",
        "batch=2",
        "height=64",
        "width=48",
        "steps=3",
        "negative_prompt=blurry",
        *overrides,
    ]
    return runner_images([*common, "backend=paddle"]), runner_images([*common, "backend=torch"])


@pytest.mark.paddle
@pytest.mark.parametrize("model", slow_except(names()))  # cross-engine runs are long: all slow
def test_same_image_on_both_engines(tiny_weights, model):
    paddle_images, torch_images = both_engines(tiny_weights, model)
    assert paddle_images.std() > 1.0
    assert max_pixel_diff(paddle_images, torch_images) <= case(model).tolerances.cross_engine


@pytest.mark.paddle
@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_sd15", "tiny_sdxl", "tiny_sd3"])
def test_guidance_rescale_is_the_same_on_both_engines(tiny_weights, model):
    paddle_images, torch_images = both_engines(tiny_weights, model, "guidance=12", "guidance_rescale=0.7")
    assert paddle_images.std() > 1.0
    assert max_pixel_diff(paddle_images, torch_images) <= 2


@pytest.mark.paddle
@pytest.mark.slow
def test_engine_noise_differs_between_engines_but_numpy_noise_does_not(tiny_weights):
    """The default (each engine's own generator) is what makes the stock-pipeline equivalence hold;
    it is not the same noise across engines, which is why noise=numpy exists."""
    common = ["model=tiny_sd15", f"model.weights={tiny_weights('tiny_sd15')}", "seed=21", "steps=2"]
    assert max_pixel_diff(runner_images([*common, "backend=paddle"]), runner_images([*common, "backend=torch"])) > 10


@pytest.mark.parametrize("backend", ["paddle", "torch"])
@pytest.mark.parametrize("scheduler", ["euler_a", "ddpm"])
def test_numpy_noise_is_refused_with_a_sampler_that_draws_step_noise(backend, scheduler, monkeypatch):
    """Their per-step noise comes from each engine's generator (euler_a differed by 38 levels between engines
    with noise=numpy): refused with one line before any weights load."""
    from runner import app
    from runner.errors import ConfigError
    from runner.plan import plan_run
    from tests.support.configs import compose_config

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(app, "load_components", no_loading)
    plan = plan_run(compose_config(["model=tiny_sd15", f"backend={backend}", "noise=numpy", f"scheduler={scheduler}"]))
    with pytest.raises(ConfigError, match=rf"^noise=numpy cannot hold with scheduler={scheduler} \(\w+\): it draws"):
        app.build_pipeline(plan)
    plan = plan_run(compose_config(["model=tiny_sd15", f"backend={backend}", "noise=numpy", "scheduler=euler"]))
    app.check_noise_source(plan, app.create_engine(plan, app.create_backend(plan)))  # deterministic: accepted


@pytest.mark.paddle
@pytest.mark.slow
def test_sd3_with_clip_states_wider_than_t5_is_the_same_on_both_engines(tmp_path):
    """The crop of the CLIP states to T5's width (the stock pipelines' negative pad) on both engines, from one
    weights directory saved by diffusers (2 x 32 CLIP features against a 48-wide T5)."""
    from runner.app import build_pipeline
    from runner.plan import plan_run
    from tests.support.configs import compose_config

    narrow = ["model=tiny_sd3", "model.components.text_encoder_3.config.d_model=48",
              "model.components.transformer.config.joint_attention_dim=48"]  # fmt: skip
    plan = plan_run(compose_config([*narrow, "backend=torch"]))
    built = build_pipeline(plan)
    built.engine.stock_pipeline(plan.model.pipeline_classes[0], built.components).save_pretrained(str(tmp_path))
    common = [*narrow, f"model.weights={tmp_path}", "noise=numpy", "seed=5", "steps=3", "negative_prompt=blurry"]
    paddle_images, torch_images = runner_images([*common, "backend=paddle"]), runner_images([*common, "backend=torch"])
    assert paddle_images.std() > 1.0
    assert max_pixel_diff(paddle_images, torch_images) <= case("tiny_sd3").tolerances.cross_engine
