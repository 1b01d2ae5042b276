"""The Python API (runner/api.py) on tiny SD 1.5: the CLI's images and messages, request merging, outputs, errors.

One pipeline per engine and config is loaded per module (the `load` fixture) and shared; the tests that change
it (NaN weights) restore it.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import runner
from runner.api import RUN_PARAMETERS, Generation, NonFiniteOutputError, Pipeline, compose, merge_requests
from runner.conf_index import group_options
from runner.errors import ConfigError
from runner.images import read_png_metadata
from runner.plan import plan_run
from runner.schema import RunSettings
from tests.support.cases import slow_except
from tests.support.configs import compose_config
from tests.support.runs import max_pixel_diff, run_cli

BASE = ("model=tiny_sd15", "quiet=true")
TORCH = (*BASE, "backend=torch")

# One request, as generate() keywords and as the same CLI overrides.
REQUEST: dict[str, Any] = dict(
    prompt="a red fox", negative_prompt="blurry", seed=3, steps=2, height=64, width=48, batch=2
)
REQUEST_OVERRIDES = (
    "prompt='a red fox'",
    "negative_prompt=blurry",
    "seed=3",
    "steps=2",
    "height=64",
    "width=48",
    "batch=2",
)
# Three requests that share a batch key: different seeds, prompts, negative prompts and images per prompt
# (2, 1, 1). The first is REQUEST (the CLI run); the second starts with the first one's prompt and negative
# prompt, so its first image differs from the first request's only by the seed.
SHAPE: dict[str, Any] = dict(steps=2, height=64, width=48)
MERGED: list[dict[str, Any]] = [
    REQUEST,
    dict(prompt=["a red fox", "a cat"], negative_prompt=["blurry", "dark"], seed=4, batch=1, **SHAPE),
    dict(prompt="a lighthouse", negative_prompt="noisy", seed=5, batch=1, **SHAPE),
]
# Merged images are computed in a larger batch than alone: the kernels may round differently (measured max 1
# level on both engines). Two seeds' images of one prompt differ by a mean of ~50 (torch) and ~95 (paddle)
# levels, far beyond it, so the comparison can tell one request's noise from another's.
BATCH_SHAPE_LEVELS = 1
SEED_MEAN_LEVELS = 10
# In-process images vs the CLI's (another process): the same kernels on the same shapes, but the two
# processes' thread pools need not match (this process may have imported Paddle, which sets its own OpenMP
# options), and a reduction split differently moves a pixel by one rounding level.
CLI_LEVELS = 1


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def load() -> Callable[..., Pipeline]:
    """Overrides (on top of tiny SD 1.5, quiet) -> a pipeline, each loaded once per module."""
    loaded: dict[tuple[str, ...], Pipeline] = {}

    def get(*overrides: str) -> Pipeline:
        key = (*BASE, *overrides)
        if key not in loaded:
            loaded[key] = runner.load(list(key))
        return loaded[key]

    return get


@pytest.fixture(scope="module")
def pipe(load) -> Pipeline:
    return load("backend=torch")


@pytest.fixture(scope="module")
def request_alone(pipe) -> Generation:
    """REQUEST generated alone on the torch pipeline (several tests compare with it)."""
    return pipe.generate(**REQUEST)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Callable[[str], Path]:
    """Engine -> the run directory of the CLI run of REQUEST on that engine (run once per module)."""
    runs: dict[str, Path] = {}

    def get(engine: str) -> Path:
        if engine not in runs:
            out = tmp_path_factory.mktemp(f"cli_{engine}") / "run"
            proc = run_cli([*BASE, f"backend={engine}", *REQUEST_OVERRIDES, f"hydra.run.dir={out}"])
            assert proc.returncode == 0, proc.stderr[-2000:]
            runs[engine] = out
        return runs[engine]

    return get


@pytest.fixture(scope="module")
def merged_run(load) -> Callable[[str], tuple[Pipeline, list[RunSettings], list[Generation]]]:
    """Engine -> its pipeline, the MERGED requests and their merged generation (run once per module)."""
    runs: dict[str, tuple[Pipeline, list[RunSettings], list[Generation]]] = {}

    def get(engine: str) -> tuple[Pipeline, list[RunSettings], list[Generation]]:
        if engine not in runs:
            pipe = load(f"backend={engine}")
            requests = [pipe.settings(**params) for params in MERGED]
            runs[engine] = (pipe, requests, pipe.generate_batch(requests))
        return runs[engine]

    return get


def saved_images(out: Path) -> list[np.ndarray]:
    names = json.loads((out / "report.json").read_text())["images"]
    return [np.asarray(Image.open(out / name)) for name in names]


def as_png_text(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Metadata as the PNG text chunks carry it (runner/images.py writes None as "")."""
    return {key: "" if value is None else str(value) for key, value in metadata.items()}


def mean_levels(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ------------------------------------------------------------------ the same run as the CLI
def test_generate_gives_the_cli_images_and_metadata(request_alone, cli_run):
    out = cli_run("torch")
    result = request_alone
    cli = saved_images(out)
    assert len(result.arrays) == len(cli) == 2
    # The same kernels on the same shapes (one process each, batch of 2).
    for ours, theirs in zip(result.arrays, cli):
        assert ours.shape == (64, 48, 3) and ours.dtype == np.uint8
        assert max_pixel_diff(ours, theirs) <= CLI_LEVELS
    # The two images of one seed are different rows of its noise, not one image twice.
    assert mean_levels(result.arrays[0], result.arrays[1]) > SEED_MEAN_LEVELS
    report = json.loads((out / "report.json").read_text())
    for index, name in enumerate(report["images"]):
        assert read_png_metadata(out / name) == as_png_text(result.metadata[index])
    assert result.report["run"] == report["run"]
    assert result.report["batch"] == report["batch"] == {"requests": 1, "images": 2}
    assert all(np.array_equal(np.asarray(image), array) for image, array in zip(result.images, result.arrays))


def test_cli_pngs_carry_the_a1111_parameters(pipe, cli_run):
    out = cli_run("torch")
    # tiny_sd15's own sampler is PNDM, which A1111 lists as PLMS.
    assert pipe.plan.scheduler.class_name == "PNDMScheduler"
    assert pipe.sampler == pipe.describe()["sampler"] == "PLMS"
    expected = (
        "a red fox\n"
        "Negative prompt: blurry\n"
        "Steps: 2, Sampler: PLMS, CFG scale: 7.5, Seed: 3, Size: 48x64, Model: tiny_sd15"
    )
    for name in ("image_000.png", "image_001.png"):
        assert read_png_metadata(out / name)["parameters"] == expected


def test_text_to_image_returns_one_pil_image_of_the_asked_size(pipe, request_alone):
    shape = {key: REQUEST[key] for key in ("negative_prompt", "seed", "steps", "height", "width")}
    image = pipe.text_to_image("a red fox", **shape)
    assert isinstance(image, Image.Image)
    assert image.size == (48, 64) and image.mode == "RGB"
    # Its noise is the first row of the seed's noise: the first image of the batch-of-2 request, up to the
    # kernels' batch-size rounding.
    first = request_alone.arrays[0]
    assert max_pixel_diff(np.asarray(image), first) <= BATCH_SHAPE_LEVELS
    with pytest.raises(ConfigError, match=r"^prompt=\['a', 'b'\] must be a string \(text_to_image makes one image\)$"):
        pipe.text_to_image(["a", "b"])
    with pytest.raises(ConfigError, match=r"^batch=2: text_to_image makes one image; use generate\(\)$"):
        pipe.text_to_image("a", batch=2)


# ------------------------------------------------------------------ validation: the CLI's, before any work
# (keywords for Pipeline.settings / generate, the same request as CLI overrides)
BAD_PARAMETERS = [
    ({"steps": 0}, ("steps=0",)),
    ({"height": 30}, ("height=30",)),
    ({"guidance": -1}, ("guidance=-1",)),
    ({"guidance_rescale": 1.5}, ("guidance_rescale=1.5",)),
    ({"batch": 0}, ("batch=0",)),
    ({"seed": -1}, ("seed=-1",)),
    ({"prompt": []}, ("prompt=[]",)),
    ({"prompt": 3}, ("prompt=3",)),
    ({"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"]}, ("prompt=[a,b]", "negative_prompt=[x,y,z]")),
    ({"steps": "two"}, ("steps=two",)),
    ({"guidance": "high"}, ("guidance=high",)),
    ({"foo": 1}, ("+foo=1",)),
]
# The CLI's runs take seconds each (a process, Hydra): the fast subset runs three kinds (a range, a count
# mismatch, an unknown name); every case is compared with the CLI's own validation path in-process.
FAST_CLI = {("steps=0",), ("prompt=[a,b]", "negative_prompt=[x,y,z]"), ("+foo=1",)}
CLI_CHECKED = slow_except(BAD_PARAMETERS, *(bad for bad in BAD_PARAMETERS if bad[1] in FAST_CLI))
BAD_IDS = [" ".join(overrides) for _, overrides in BAD_PARAMETERS]


def cli_message(overrides: tuple[str, ...]) -> str:
    """The ConfigError the CLI's validation (plan_run, before the backend check) raises for these overrides."""
    with pytest.raises(ConfigError) as err:
        plan_run(compose_config([*TORCH, *overrides]), check_capabilities=False)
    return str(err.value)


@pytest.fixture
def no_work(monkeypatch, pipe) -> None:
    """Any stage run, or the executor being reached at all, fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("work started before the request was validated")

    monkeypatch.setattr("runner.api.generate", refuse)
    for stage in pipe.plan.stages:
        monkeypatch.setattr(stage, "run", refuse)


@pytest.mark.parametrize("params,overrides", BAD_PARAMETERS, ids=BAD_IDS)
def test_bad_parameters_give_the_cli_validation_message(pipe, no_work, params, overrides):
    expected = cli_message(overrides)
    with pytest.raises(ConfigError) as err:
        pipe.settings(**params)
    assert str(err.value) == expected
    assert "\n" not in expected
    if set(params) <= set(RUN_PARAMETERS):
        with pytest.raises(ConfigError) as err:
            pipe.generate(**params)
        assert str(err.value) == expected


@pytest.mark.parametrize("params,overrides", CLI_CHECKED, ids=BAD_IDS)
def test_bad_parameters_give_the_cli_error_line(tmp_path, pipe, params, overrides):
    proc = run_cli([*TORCH, *overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    with pytest.raises(ConfigError) as err:
        pipe.settings(**params)
    assert errors == [f"error: {err.value}"]


def test_load_time_parameters_are_refused_per_call(pipe, no_work):
    # noise, quiet and verify are run parameters of the config but fixed when the pipeline loads.
    with pytest.raises(
        ConfigError, match=r"^noise, verify: fixed when the pipeline loads \(give them to runner.load\), not per call; "
    ) as err:
        pipe.settings(noise="numpy", verify=True)
    assert str(err.value).endswith("a call sets: " + ", ".join(RUN_PARAMETERS))


def test_a_bad_request_raises_before_any_stage_runs(pipe, no_work):
    with pytest.raises(ConfigError, match=r"^steps=0 must be >= 1$"):
        pipe.generate("a red fox", steps=0)
    with pytest.raises(ConfigError, match=r"^height=30 must be a positive multiple of 8 for model=tiny_sd15$"):
        pipe.text_to_image("a red fox", height=30)
    # Requests that cannot share a batch are refused before the batch runs.
    two = [pipe.settings(steps=2), pipe.settings(steps=3)]
    with pytest.raises(ValueError, match=r"^requests with different batch keys cannot share a batch: "):
        pipe.generate_batch(two)
    with pytest.raises(ValueError, match=r"^generate_batch needs at least one request$"):
        pipe.generate_batch([])
    # The fixture is live: a valid request does reach the executor.
    with pytest.raises(AssertionError, match="work started"):
        pipe.generate("a red fox", steps=2)


# ------------------------------------------------------------------ merging requests into one batch
@pytest.mark.parametrize("engine", ["torch", pytest.param("paddle", marks=pytest.mark.slow)])
def test_merged_requests_get_the_images_they_get_alone(merged_run, cli_run, engine):
    pipe, requests, merged = merged_run(engine)
    assert len({pipe.batch_key(settings) for settings in requests}) == 1
    alone = [pipe.generate_batch([settings])[0] for settings in requests]
    # The first request alone is the CLI's run of it (same kernels, same shapes, another process).
    assert all(max_pixel_diff(a, c) <= CLI_LEVELS for a, c in zip(alone[0].arrays, saved_images(cli_run(engine))))
    for settings, ours, lone in zip(requests, merged, alone):
        assert ours.settings == settings and len(ours.arrays) == settings.num_images
        assert max(max_pixel_diff(a, b) for a, b in zip(ours.arrays, lone.arrays)) <= BATCH_SHAPE_LEVELS
        assert ours.metadata == lone.metadata
        assert ours.report["batch"] == {"requests": 3, "images": 2 + 2 + 1}
    # Same prompt and negative prompt, seeds 3 and 4: the requests really got their own noise.
    assert mean_levels(merged[0].arrays[0], merged[1].arrays[0]) > SEED_MEAN_LEVELS
    assert mean_levels(merged[0].arrays[0], merged[2].arrays[0]) > SEED_MEAN_LEVELS


def test_batch_key_holds_what_a_batch_shares(pipe):
    base = dict(prompt="a", negative_prompt="b", seed=1, steps=2, height=64, width=48)
    key = pipe.batch_key(pipe.settings(**base))
    assert key is not None and pipe.merges_requests
    # Seeds, prompts, negative prompts and images per prompt are per request.
    others = pipe.settings(**{**base, "seed": 9, "prompt": ["x", "y"], "negative_prompt": "z", "batch": 3})
    assert pipe.batch_key(others) == key
    changes = [
        {"height": 32},
        {"width": 64},
        {"steps": 3},
        {"guidance": 5.0},
        {"guidance_rescale": 0.5},
        # No negative prompt may mean zero embeddings (SDXL), not the empty prompt.
        {"negative_prompt": None},
    ]
    for change in changes:
        other = pipe.settings(**{**base, **change})
        assert pipe.batch_key(other) != key, change
        with pytest.raises(ValueError, match=r"^requests with different batch keys cannot share a batch: "):
            pipe.generate_batch([pipe.settings(**base), other])


# 4 steps: at 2, Euler a's one noisy step hardly shows in the tiny model's image (measured 1 level).
ANCESTRAL = [dict(prompt="a red fox", seed=seed, **{**SHAPE, "steps": 4}) for seed in (3, 4)]


def test_samplers_that_draw_step_noise_never_merge(load, pipe, no_work):
    ancestral = load("backend=torch", "scheduler=euler_a")
    assert pipe.merges_requests and not ancestral.merges_requests
    assert ancestral.sampler == "Euler a"
    requests = [ancestral.settings(**params) for params in ANCESTRAL]
    assert [ancestral.batch_key(settings) for settings in requests] == [None, None]
    with pytest.raises(ValueError, match=r"^requests with different batch keys cannot share a batch: \['None'\]$"):
        ancestral.generate_batch(requests)


@pytest.mark.slow
def test_step_noise_samplers_would_change_images_if_merged(load, monkeypatch):
    # Why they never merge: forced into one batch, the second request's step noise comes from the first one's
    # generator.
    ancestral = load("backend=torch", "scheduler=euler_a")
    requests = [ancestral.settings(**params) for params in ANCESTRAL]
    alone = ancestral.generate_batch(requests[1:])[0]
    monkeypatch.setattr(ancestral, "batch_key", lambda settings: "forced")
    forced = ancestral.generate_batch(requests)[1]
    assert max_pixel_diff(forced.arrays[0], alone.arrays[0]) > BATCH_SHAPE_LEVELS


@pytest.mark.slow
def test_merging_with_numpy_noise_matches_alone(load, request_alone):
    numpy_pipe = load("backend=torch", "noise=numpy")
    requests = [numpy_pipe.settings(**params) for params in MERGED]
    merged = numpy_pipe.generate_batch(requests)
    for settings, ours in zip(requests, merged):
        lone = numpy_pipe.generate_batch([settings])[0]
        assert max(max_pixel_diff(a, b) for a, b in zip(ours.arrays, lone.arrays)) <= BATCH_SHAPE_LEVELS
        assert {meta["noise"] for meta in ours.metadata} == {"numpy"}
    assert mean_levels(merged[0].arrays[0], merged[1].arrays[0]) > SEED_MEAN_LEVELS
    # The noise source took effect: the engine's generator gives another image for the same request.
    assert mean_levels(merged[0].arrays[0], request_alone.arrays[0]) > SEED_MEAN_LEVELS


def test_merge_requests_keeps_each_requests_rows_and_seed():
    def request(prompts: tuple[str, ...], negatives: tuple[str, ...], seed: int, per_prompt: int) -> RunSettings:
        return RunSettings(
            prompts=prompts,
            negative_prompts=negatives,
            images_per_prompt=per_prompt,
            height=64,
            width=48,
            steps=2,
            guidance=7.5,
            guidance_rescale=0.0,
            seed=seed,
            noise="engine",
            quiet=True,
            verify=False,
        )

    a, b = request(("p",), ("n",), 1, 2), request(("q", "r"), ("m", "o"), 2, 1)
    merged = merge_requests([a, b], ["k", "k"])
    # Images per prompt differ (2 and 1): each prompt becomes one row per image, in each request's order.
    assert merged.prompts == ("p", "p", "q", "r") and merged.negative_prompts == ("n", "n", "m", "o")
    assert merged.images_per_prompt == 1 and merged.seed_rows == ((1, 2), (2, 2))
    same = merge_requests([b, b], ["k", "k"])
    assert same.prompts == ("q", "r", "q", "r") and same.images_per_prompt == 1 and same.seed_rows == ((2, 2), (2, 2))
    assert merge_requests([a], [None]) is a


# ------------------------------------------------------------------ outputs
def test_save_writes_pngs_and_the_report_atomically(merged_run, tmp_path, monkeypatch):
    result = merged_run("torch")[2][1]  # the second of three merged requests: seed 4, two prompts
    out = tmp_path / "out"
    report = result.save(out, extra={"request_id": "r1"})
    assert report["images"] == ["image_000.png", "image_001.png"]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report, default=str))
    assert report["batch"] == {"requests": 3, "images": 5} and report["request_id"] == "r1"
    assert report["run"]["seed"] == 4 and report["run"]["model"] == "tiny_sd15"
    assert sorted(path.name for path in out.iterdir()) == ["image_000.png", "image_001.png", "report.json"]
    for index, name in enumerate(report["images"]):
        saved = np.asarray(Image.open(out / name))
        assert max_pixel_diff(saved, result.arrays[index]) == 0  # PNG is lossless
        text = read_png_metadata(out / name)
        assert text == as_png_text(result.metadata[index])
        assert text["prompt"] == ("a red fox", "a cat")[index] and text["batch_index"] == str(index)
        # png(i): the same pixels and text chunks, in memory.
        with Image.open(io.BytesIO(result.png(index))) as decoded:
            assert max_pixel_diff(np.asarray(decoded), result.arrays[index]) == 0
            assert dict(decoded.text) == text
    # A failure while writing the report leaves the earlier report and no temporary file.
    earlier = (out / "report.json").read_bytes()

    def fail_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        result.save(out, extra={"request_id": "r2"})
    assert (out / "report.json").read_bytes() == earlier
    assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]


# ------------------------------------------------------------------ errors
# The decode stage still turns the NaN latents into (meaningless) pixels before generate checks them.
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_nan_latents_raise_and_the_pipeline_recovers(pipe, request_alone):
    import torch

    bias = pipe.built.components["unet"].conv_out.bias
    kept = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.fill_(float("nan"))
        with pytest.raises(NonFiniteOutputError) as err:
            pipe.generate("a red fox", steps=1, height=64, width=48)
    finally:
        with torch.no_grad():
            bias.copy_(kept)
    assert str(err.value) == (
        "the denoiser produced NaN/inf latents for 1 request(s) (model=tiny_sd15, precision=fp32); no images returned"
    )
    assert err.value.exit_code == 1
    # Nothing of the failed run stays behind (scheduler state, caches): the same request, the same images.
    after = pipe.generate(**REQUEST)
    assert all(max_pixel_diff(a, b) == 0 for a, b in zip(after.arrays, request_alone.arrays))


def test_unknown_model_is_one_line_naming_the_models():
    with pytest.raises(ConfigError) as err:
        runner.load(["model=nope"])
    message = str(err.value)
    assert "\n" not in message and "search path" not in message.lower() and "provider=" not in message
    assert message.startswith("In 'config': Could not find 'model/nope' Available options in 'model': ")
    assert message.split(": ")[-1].split() == sorted(group_options("model"))


def test_load_takes_a_list_not_a_string():
    with pytest.raises(TypeError, match=r"^load\(\) takes a list of overrides, e\.g\. \['model=sd15'"):
        runner.load("model=tiny_sd15")


def test_compose_is_the_clis_composition():
    cfg = compose([*TORCH, "steps=2"])
    assert cfg.model.name == "tiny_sd15" and cfg.backend.name == "torch" and cfg.steps == 2
    assert "hydra" not in cfg
    with pytest.raises(ConfigError, match=r"^Could not override 'nope'\. To append to your config use \+nope=1$"):
        compose(["nope=1"])


def test_compose_works_inside_a_running_hydra_app(tmp_path):
    # A user's own Hydra app (@hydra.main, or this context) has Hydra initialized: runner.load must compose
    # the runner's config all the same and leave the app's Hydra as it was.
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    (tmp_path / "app.yaml").write_text("greeting: hello\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        assert compose(list(TORCH)).model.name == "tiny_sd15"
        assert hydra_compose(config_name="app").greeting == "hello"
