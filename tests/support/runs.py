"""Run the runner in-process or through the CLI, for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runner.app import build_pipeline
from runner.plan import plan_run
from tests.support.configs import compose_config

REPO = Path(__file__).resolve().parents[2]


def runner_images(overrides: Sequence[str]) -> np.ndarray:
    """uint8 images [N, H, W, 3] from an in-process run with these overrides (no files written)."""
    plan = plan_run(compose_config([*overrides, "quiet=true"]))
    return build_pipeline(plan).generate().state["images"]


def run_cli(args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m runner ARGS` in the repository root; returns the finished process."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def max_pixel_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float [0, 1] images (the stock pipelines' output_type='np') to uint8, as their PIL path rounds."""
    return (images * 255).round().astype(np.uint8)
