"""Run parameters: defaults from the model, and one-line errors that name the bad value."""

from __future__ import annotations

import pytest

from runner.errors import ConfigError
from runner.plan import plan_run
from runner.schema import RunParams, parse_settings
from tests.support.configs import compose_config, model_spec


def settings(*overrides: str, model: str = "tiny_sd15"):
    cfg = compose_config([f"model={model}", *overrides])
    return parse_settings(cfg, model_spec(model))


def test_model_defaults_fill_unset_values():
    s = settings()
    assert (s.height, s.width, s.steps, s.guidance) == (64, 64, 4, 7.5)
    full = settings(model="sdxl")
    assert (full.height, full.width, full.steps, full.guidance) == (1024, 1024, 50, 5.0)


def test_explicit_values_win():
    s = settings("height=128", "width=96", "steps=2", "guidance=3", "batch=3", "seed=11")
    assert (s.height, s.width, s.steps, s.guidance, s.images_per_prompt, s.seed) == (128, 96, 2, 3.0, 3, 11)
    assert s.num_images == 3


@pytest.mark.parametrize(
    "override,message",
    [
        ("height=100", r"^height=100 must be a positive multiple of 8 for model=tiny_sd15$"),
        ("width=0", r"^width=0 must be a positive multiple of 8"),
        ("steps=0", r"^steps=0 must be >= 1$"),
        ("guidance=-1", r"^guidance=-1(\.0)? must be a finite number >= 0$"),
        ("guidance=nan", r"^guidance=nan must be a finite number >= 0$"),
        ("batch=0", r"^batch=0 must be >= 1 \(images per prompt\)$"),
        ("seed=-3", r"^seed=-3 must be in \[0, 2\*\*63\)$"),
        ("noise=gpu", r"^noise='gpu' is not one of engine, numpy$"),
        ("steps=two", r"^steps='two' must be an integer$"),
        ("prompt=[]", r"^prompt=\[\] must be a string or a non-empty list of strings$"),
        ("guidance=high", r"^guidance='high' must be a number$"),
    ],
)
def test_bad_values_give_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        settings(override)
    assert "\n" not in str(err.value)


def test_prompt_lists_and_negative_prompts_pair_up():
    s = settings("prompt=[a fox,a cat]", "negative_prompt=blurry", "batch=2")
    assert s.prompts == ("a fox", "a cat") and s.negative_prompts == ("blurry", "blurry") and s.num_images == 4
    with pytest.raises(ConfigError, match=r"negative_prompt has 3 entries but prompt has 2"):
        settings("prompt=[a,b]", "negative_prompt=[x,y,z]")


def test_guidance_rescale_defaults_to_off_and_takes_a_fraction():
    assert settings().guidance_rescale == RunParams().guidance_rescale == 0.0
    assert settings("guidance_rescale=0.7").guidance_rescale == 0.7
    assert settings("guidance_rescale=1").guidance_rescale == 1.0


@pytest.mark.parametrize(
    "override,message",
    [
        ("guidance_rescale=1.5", r"^guidance_rescale=1.5 must be in \[0, 1\]$"),
        ("guidance_rescale=-0.1", r"^guidance_rescale=-0.1 must be in \[0, 1\]$"),
        ("guidance_rescale=much", r"^guidance_rescale='much' must be a number$"),
        ("quiet=maybe", r"^quiet='maybe' must be true or false$"),
        ("seed=1.5", r"^seed=1.5 must be an integer$"),
        ("+colour=red", r"^the run config has no parameter 'colour'; it accepts: batch, guidance, guidance_rescale,"),
    ],
)
def test_more_bad_values_give_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        settings(override)


def test_guidance_rescale_needs_a_model_with_classifier_free_guidance():
    with pytest.raises(
        ConfigError, match=r"^guidance_rescale=0.5 needs classifier-free guidance, which model=tiny_flux"
    ):
        plan_run(compose_config(["model=tiny_flux", "guidance_rescale=0.5"]), check_capabilities=False)
    plan = plan_run(compose_config(["model=tiny_flux", "guidance_rescale=0"]), check_capabilities=False)
    assert plan.settings.guidance_rescale == 0.0


def test_guidance_rescale_without_active_guidance_warns(caplog):
    plan_run(compose_config(["guidance=1", "guidance_rescale=0.5"]), check_capabilities=False)
    assert any("guidance_rescale=0.5 has no effect at guidance=1.0" in r.message for r in caplog.records)


def test_serve_max_n_is_at_most_max_batch():
    from runner.schema import parse_serve

    assert parse_serve({"max_batch": 4}).max_n is None
    with pytest.raises(ConfigError, match=r"^serve\.max_n=8 must be in \[1, serve\.max_batch=4\]"):
        parse_serve({"max_batch": 4, "max_n": 8})
