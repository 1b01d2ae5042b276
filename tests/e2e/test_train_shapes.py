"""scripts/train_shapes.py: a few steps of each family train, resume, repeat exactly, and load in the runner.

The suite does not train a useful model (that takes the better part of an hour); this checks the machinery a
user reproducing the shipped weights relies on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from tests.support.runs import runner_images

ROOT = Path(__file__).resolve().parents[2]
TINY_RUN = ["--vae-steps", "2", "--vae-batch", "2", "--latent-cache", "8", "--batch", "2", "--save-every", "1",
            "--threads", "1"]  # fmt: skip
# SD's contrastive text phase, shortened; Flux's plan has none (its CLIP and T5 learn with the transformer).
TEXT_PHASE = {"sd": ["--text-steps", "2", "--shape-sets", "2"], "flux": []}
DENOISER = {"sd": "unet", "flux": "transformer"}
MODEL = {"sd": "shapes_sd15", "flux": "shapes_flux"}


def train(out: Path, family: str, steps: int, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_shapes.py"), "--family", family, "--out", str(out),
         "--steps", str(steps), *TINY_RUN, *TEXT_PHASE[family], *extra],
        capture_output=True, text=True, timeout=600, cwd=out.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def weights(out: Path, family: str) -> dict:
    return load_file(out / DENOISER[family] / "diffusion_pytorch_model.safetensors")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_training_resumes_repeats_and_exports_a_loadable_pipeline(tmp_path: Path, family: str) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    train(first, family, 3)
    # Stopped after 2 denoiser steps, then resumed for the third: the same weights as 3 steps in one go.
    assert "stopped at denoiser step 2 of 3" in train(second, family, 3, "--stop-at", "2")
    resumed = train(second, family, 3)
    assert "resumed from" in resumed and "phase denoiser, step 2" in resumed
    assert same(weights(first, family), weights(second, family))
    # The VAE's measured latent scale is written into its config; the export is a diffusers pipeline.
    vae_config = (first / "vae" / "config.json").read_text()
    assert '"scaling_factor": 1.0,' not in vae_config
    images = runner_images([f"model={MODEL[family]}", f"model.weights={first}", "backend=torch", "steps=2"])
    assert images.shape == (1, 64, 64, 3)


def test_fresh_ignores_the_saved_state(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(out, "sd", 1)
    assert "resumed" not in train(out, "sd", 1, "--fresh")


def test_the_text_phase_resumes_and_the_denoiser_phase_leaves_its_encoder_alone(tmp_path: Path) -> None:
    """SD: stopped in the contrastive text phase and resumed, the run ends as an uninterrupted one does; the
    denoiser phase keeps the text encoder as the text phase left it (frozen, as SD's CLIP)."""
    whole, resumed, text_only = tmp_path / "whole", tmp_path / "resumed", tmp_path / "text_only"
    train(whole, "sd", 2)
    assert "stopped at text step 1 of 2" in train(resumed, "sd", 2, "--stop-at", "text:1")
    assert "phase text, step 1" in train(resumed, "sd", 2)
    assert same(weights(whole, "sd"), weights(resumed, "sd"))
    # A stop point at the end of a phase stops there too (the state saved, the denoiser not begun).
    assert "stopped at text step 2 of 2" in train(tmp_path / "end", "sd", 2, "--stop-at", "text:2")
    train(text_only, "sd", 0)
    encoder = "text_encoder/model.safetensors"
    assert same(load_file(whole / encoder), load_file(text_only / encoder))
    # The text phase did train it: a run without that phase ships a different encoder.
    train(tmp_path / "no_text", "sd", 0, "--text-steps", "0")
    assert not same(load_file(whole / encoder), load_file(tmp_path / "no_text" / encoder))


def test_a_stop_point_that_names_no_phase_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_shapes.py"), "--family", "sd", "--out", str(tmp_path / "x"),
         "--stop-at", "decoder:3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "'decoder:3' is not STEP or PHASE:STEP with PHASE one of vae, text, denoiser" in proc.stderr
    assert not (tmp_path / "x").exists()
