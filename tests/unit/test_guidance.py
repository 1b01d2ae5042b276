"""Guidance as a component: what each method needs, the CFG rescale, and stages that ask the method."""

from __future__ import annotations

import numpy as np
import pytest

from components.stages.guidance import (
    ClassifierFreeGuidance,
    GuidanceParams,
    NoGuidance,
    rescale_noise_cfg,
    wants_negative,
)
from runner.app import build_pipeline
from runner.graph import RunContext, run_guidance
from runner.plan import plan_run
from tests.support.configs import compose_config

CFG, NONE = ClassifierFreeGuidance(), NoGuidance()


@pytest.mark.parametrize("scale,negative,rows", [(7.5, True, 2), (1.0, False, 1), (0.0, False, 1)])
def test_cfg_needs_negatives_and_two_rows_above_scale_one(scale, negative, rows):
    params = GuidanceParams(scale=scale)
    assert CFG.needs_negative(params) is negative and CFG.rows_per_image(params) == rows
    assert not NONE.needs_negative(params) and NONE.rows_per_image(params) == 1


def test_only_cfg_takes_a_rescale():
    params = GuidanceParams(scale=3.5, rescale=0.5)
    assert CFG.check(params, "model=m") is None
    assert NONE.check(GuidanceParams(scale=3.5), "model=m") is None
    assert NONE.check(params, "model=m").startswith("guidance_rescale=0.5 needs classifier-free guidance")


def test_rescale_is_diffusers_rescale_noise_cfg_bit_for_bit():
    torch = pytest.importorskip("torch")
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg as reference

    generator = torch.Generator().manual_seed(0)
    guided, cond = torch.randn(2, 4, 8, 6, generator=generator) * 3, torch.randn(2, 4, 8, 6, generator=generator)
    for factor in (0.0, 0.3, 1.0):
        assert torch.equal(rescale_noise_cfg(guided, cond, factor), reference(guided, cond, guidance_rescale=factor))


@pytest.mark.paddle
def test_rescale_reads_the_same_on_paddle():
    torch = pytest.importorskip("torch")
    from components.paddle.runtime import import_paddle

    paddle = import_paddle()
    rng = np.random.default_rng(0)
    guided, cond = rng.standard_normal((2, 4, 8, 6), np.float32) * 3, rng.standard_normal((2, 4, 8, 6), np.float32)
    on_torch = rescale_noise_cfg(torch.from_numpy(guided), torch.from_numpy(cond), 0.7).numpy()
    on_paddle = rescale_noise_cfg(paddle.to_tensor(guided), paddle.to_tensor(cond), 0.7).numpy()
    np.testing.assert_allclose(on_paddle, on_torch, rtol=1e-5, atol=1e-6)
    # The rescaled part has the conditional prediction's spread, per image.
    full = rescale_noise_cfg(torch.from_numpy(guided), torch.from_numpy(cond), 1.0)
    np.testing.assert_allclose(full.std(dim=[1, 2, 3]).numpy(), cond.std(axis=(1, 2, 3), ddof=1), rtol=1e-5)


def test_combine_without_rescale_is_plain_cfg():
    torch = pytest.importorskip("torch")
    uncond, cond = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    combined = CFG.combine(torch.cat([uncond, cond]), GuidanceParams(scale=5.0))
    assert torch.equal(combined, uncond + 5.0 * (cond - uncond))


def test_the_run_guidance_is_the_denoise_stage_method():
    stages = plan_run(compose_config([]), check_capabilities=False).stages
    assert isinstance(run_guidance(stages), ClassifierFreeGuidance)
    flux = plan_run(compose_config(["model=tiny_flux"]), check_capabilities=False).stages
    assert isinstance(run_guidance(flux), NoGuidance)
    assert run_guidance(stages[:1]) is None
    state = {"guidance": 7.5, "guidance_rescale": 0.0}
    assert wants_negative(state, RunContext(engine=None, components={}, guidance=CFG))
    assert not wants_negative(state, RunContext(engine=None, components={}, guidance=NONE))
    assert not wants_negative(state, RunContext(engine=None, components={}))


def test_text_stage_asks_the_guidance_method_not_the_scale():
    """At a CFG scale, a method that uses no negative conditioning gets no negative embeddings encoded."""
    plan = plan_run(
        compose_config(["backend=torch", "steps=1", "guidance=7.5", "negative_prompt=blurry", "quiet=true"])
    )
    built = build_pipeline(plan)
    assert built.generate().state["negative_prompt_embeds"] is not None
    denoise = next(stage for stage in plan.stages if stage.guidance is not None)
    denoise.guidance = NoGuidance()
    state = built.generate().state
    assert state["negative_prompt_embeds"] is None and state["images"].shape[0] == 1
