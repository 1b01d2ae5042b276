"""Weights directories: checked before loading, loaded offline without writing into them; seeds decide images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runner.errors import ConfigError
from runner.plan import plan_run
from tests.support.cases import names, slow_except
from tests.support.configs import compose_config
from tests.support.runs import max_pixel_diff, runner_images


def plan_for(weights, model: str = "tiny_sd15"):
    return plan_run(compose_config([f"model={model}", f"model.weights={weights}"]), check_capabilities=False)


def test_directory_without_model_index_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"has no model_index.json; expected a diffusers-layout pipeline directory"):
        plan_for(tmp_path)


def test_wrong_family_directory_is_refused(tiny_weights):
    with pytest.raises(
        ConfigError, match=r"holds a StableDiffusionXLPipeline but model=tiny_sd15 needs StableDiffusionPipeline"
    ):
        plan_for(tiny_weights("tiny_sdxl"), "tiny_sd15")


def test_missing_component_folder_is_named(tiny_weights, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_weights("tiny_sd15"), broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ConfigError, match=r"has no vae/ folder \(component 'vae' of model=tiny_sd15\)"):
        plan_for(broken)


def test_corrupt_model_index_is_reported(tmp_path):
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"model_index.json is not valid JSON"):
        plan_for(tmp_path)


def test_directory_configs_win_over_the_model_yaml(tiny_weights, tmp_path):
    """With a weights directory its scheduler config is used (here: a different beta schedule)."""
    edited = tmp_path / "edited"
    shutil.copytree(tiny_weights("tiny_sd15"), edited)
    path = edited / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["beta_end"] = 0.02
    path.write_text(json.dumps(config))
    assert plan_for(edited).scheduler.config["beta_end"] == 0.02
    assert plan_for(tiny_weights("tiny_sd15")).scheduler.config["beta_end"] == 0.012


def test_a_text_encoder_checkpoint_lacking_weights_is_refused_by_the_torch_engine(tiny_weights, tmp_path):
    """transformers keeps random values for weights a checkpoint lacks, with a log line only; the torch engine
    refuses such a text encoder instead (a layout it can rename into place loads: tests/e2e/test_saved_layouts.py)."""
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_weights("tiny_sd15"), broken)
    path = broken / "text_encoder" / "model.safetensors"
    weights = load_file(str(path))
    dropped = next(name for name in weights if name.endswith("final_layer_norm.weight"))
    del weights[dropped]
    save_file(weights, str(path), metadata={"format": "pt"})
    with pytest.raises(
        ConfigError, match=r"text_encoder: the checkpoint lacks 1 weight\(s\) of CLIPTextModel, e\.g\. '"
    ):
        runner_images(["model=tiny_sd15", f"model.weights={broken}", "backend=torch", "steps=1"])


@pytest.mark.paddle
def test_loading_writes_nothing_into_the_weights_directory(tiny_weights, tmp_path):
    pristine = tmp_path / "pristine"
    shutil.copytree(tiny_weights("tiny_sdxl"), pristine, ignore=shutil.ignore_patterns("*.pdparams"))
    before = sorted(p.relative_to(pristine) for p in pristine.rglob("*"))
    runner_images(["model=tiny_sdxl", f"model.weights={pristine}", "steps=1"])
    assert sorted(p.relative_to(pristine) for p in pristine.rglob("*")) == before


# The transformer models: test_paddle_sd3_flux.py.
@pytest.mark.paddle
@pytest.mark.parametrize("model", slow_except(names(denoiser="unet"), "tiny_sd15"))
def test_same_seed_same_image_different_seed_different_image(model):
    first = runner_images([f"model={model}", "seed=11", "steps=2"])
    again = runner_images([f"model={model}", "seed=11", "steps=2"])
    other = runner_images([f"model={model}", "seed=12", "steps=2"])
    assert max_pixel_diff(first, again) == 0
    assert max_pixel_diff(first, other) > 10


@pytest.mark.paddle
def test_images_in_a_batch_differ():
    images = runner_images(["seed=4", "steps=2", "batch=2"])
    assert not np.array_equal(images[0], images[1])


@pytest.mark.paddle
def test_random_weights_are_fixed_by_init_seed_not_by_run_seed():
    base = runner_images(["model=tiny_sd15", "seed=4", "steps=2"])
    reinit = runner_images(["model=tiny_sd15", "seed=4", "steps=2", "model.init_seed=1"])
    assert max_pixel_diff(base, reinit) > 10
