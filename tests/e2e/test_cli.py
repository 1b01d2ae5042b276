"""The command line end to end: every tiny family, a multirun sweep, and the error contract."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from runner.images import read_png_metadata
from tests.support.cases import case, names, slow_except
from tests.support.runs import run_cli

REPORT_KEYS = {"images", "stages", "steps_per_s", "peak_memory_mb", "config", "versions"}


@pytest.mark.paddle
@pytest.mark.parametrize("model", slow_except(names(), "tiny_sd15"))
def test_each_tiny_family_runs_from_the_cli(tmp_path, model):
    stages = list(case(model).stages)
    out = tmp_path / "run"
    proc = run_cli(
        [
            f"model={model}",
            "prompt='a red fox'",
            "negative_prompt=blurry",
            "seed=3",
            "batch=2",
            "height=64",
            "width=48",
            "steps=2",
            "quiet=true",
            f"hydra.run.dir={out}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert list(report["stages"]) == stages and all(ms > 0 for ms in report["stages"].values())
    assert report["steps_per_s"] > 0 and report["peak_memory_mb"] > 100
    assert report["versions"]["paddlepaddle"] and report["versions"]["ppdiffusers"] == "0.29.0"
    assert report["config"]["model"]["name"] == model and report["run"]["device"] == "cpu"
    assert report["images"] == ["image_000.png", "image_001.png"]
    for name in report["images"]:
        with Image.open(out / name) as image:
            assert image.size == (48, 64) and image.mode == "RGB"
        meta = read_png_metadata(out / name)
        assert meta["prompt"] == "a red fox" and meta["negative_prompt"] == "blurry" and meta["seed"] == "3"
        assert (meta["model"], meta["backend"], meta["precision"], meta["scheduler"]) == (
            model,
            "paddle",
            "fp32",
            "default",
        )
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_progress_bar_shows_unless_quiet(tmp_path):
    loud = run_cli(["steps=2", f"hydra.run.dir={tmp_path / 'a'}"])
    quiet = run_cli(["steps=2", "quiet=true", f"hydra.run.dir={tmp_path / 'b'}"])
    assert loud.returncode == quiet.returncode == 0
    # tqdm redraws at most every 0.1 s and clears the bar at the end (leave=False): any frame will do.
    assert re.search(r"denoise:\s+\d+%\|", loud.stderr) and "denoise:" not in quiet.stderr


@pytest.mark.slow
def test_multirun_sweep_runs_every_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            f"model={','.join(names())}",
            "seed=1,2",
            "steps=2",
            "quiet=true",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = sorted(sweep.glob("*/report.json"))
    assert len(reports) == 2 * len(names())
    images = {}
    for path in reports:
        report = json.loads(path.read_text())
        key = (report["run"]["model"], report["run"]["seed"])
        images[key] = np.asarray(Image.open(path.parent / report["images"][0]))
    models = names()
    assert set(images) == {(m, s) for m in models for s in (1, 2)}
    for model in models:
        assert not np.array_equal(images[(model, 1)], images[(model, 2)])


BAD_INPUTS = [
    (["height=100"], r"error: height=100 must be a positive multiple of 8 for model=shapes_sd15"),
    (["steps=0"], r"error: steps=0 must be >= 1"),
    (["guidance=-2"], r"error: guidance=-2(\.0)? must be a finite number >= 0"),
    (["batch=0"], r"error: batch=0 must be >= 1"),
    (["scheduler=flow_euler"], r"error: scheduler=flow_euler cannot drive model=shapes_sd15"),
    (["model.weights=/nonexistent/sd15"], r"error: model.weights='/nonexistent/sd15' is not a directory"),
    (["precision=fp16"], r"error: precision=fp16 \(float16\) cannot run on backend=paddle device cpu"),
    (["backend=cinn"], r"error: backend=cinn needs a Paddle build with CUDA .* and CINN .*compiled without it"),
    (["backend=tensorrt"], r"error: backend=tensorrt needs a Paddle build with CUDA .* and TensorRT"),
    (["backend=xpu"], r"error: backend=xpu needs a Paddle build with Kunlun XPU"),
    (["backend=dcu"], r"error: backend=dcu needs a Paddle build with ROCm"),
    (["backend.device=gpu:1"], r"error: backend=paddle needs a Paddle build with CUDA"),
    (["steps=two"], r"error: steps='two' must be an integer$"),
    (["backend=tensorrt", "backend.workspace_mb=lots"], r"error: backend.workspace_mb='lots' must be an integer$"),
    (
        ["+backend.workspace_mb=1"],
        r"error: backend=paddle has no option 'workspace_mb'; it accepts: device, dtypes",
    ),
    (["guidance_rescale=1.5"], r"error: guidance_rescale=1.5 must be in \[0, 1\]$"),
    (
        ["model=tiny_flux", "guidance_rescale=0.5"],
        r"error: guidance_rescale=0.5 needs classifier-free guidance, which model=tiny_flux does not use",
    ),
]


# Each is a CLI run (seconds; from precision=fp16 on they import Paddle): the fast subset keeps three config
# errors (the others are checked in-process by tests/unit/test_settings.py and test_typed_config.py), one
# capability error and the guidance rescale refused for a model without classifier-free guidance.
# precision=fp16 to backend.device=gpu:1: the Paddle engine (the default backend, or a Paddle backend) answers.
PADDLE_INPUTS = BAD_INPUTS[6:12]
BAD_INPUT_PARAMS = [
    pytest.param(*p.values, marks=[*p.marks, pytest.mark.paddle]) if tuple(p.values) in PADDLE_INPUTS else p
    for p in slow_except(BAD_INPUTS, *(BAD_INPUTS[i] for i in (0, 4, 5, 6, 16)))
]


@pytest.mark.parametrize("args,message", BAD_INPUT_PARAMS)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    proc = run_cli([*args, f"hydra.run.dir={out}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert re.match(message, errors[0]), errors[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists(), f"the failed run left {sorted(p.name for p in out.iterdir())}"


@pytest.mark.slow
def test_guidance_rescale_lands_in_the_report_and_the_png_metadata(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(["guidance_rescale=0.5", "steps=1", "quiet=true", f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["guidance_rescale"] == 0.5 and report["config"]["guidance_rescale"] == 0.5
    assert read_png_metadata(out / "image_000.png")["guidance_rescale"] == "0.5"


@pytest.mark.slow
def test_invalid_job_in_a_sweep_is_reported_and_the_others_run(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "height=64,60", "steps=1", "quiet=true", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 2
    assert "error: height=60 must be a positive multiple of 8" in proc.stderr
    assert len(list(sweep.glob("*/report.json"))) == 1
    summary = (sweep / "summary.md").read_text()
    assert "Failed jobs:" in summary and "| 1 | height=60 steps=1 quiet=True | 2 |" in summary


def test_failed_run_keeps_an_existing_directory_untouched(tmp_path):
    out = tmp_path / "earlier_run"
    out.mkdir()
    (out / "image_000.png").write_bytes(b"earlier image")
    proc = run_cli(["steps=0", f"hydra.run.dir={out}"])
    assert proc.returncode == 2
    assert (out / "image_000.png").read_bytes() == b"earlier image"
