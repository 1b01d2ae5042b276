"""The inductor backend against eager torch, and the PyTorch backends' capability errors."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from tests.support.cases import slow_except
from tests.support.runs import max_pixel_diff, run_cli, runner_images


@pytest.mark.slow
def test_inductor_matches_eager_torch():
    """torch.compile reorders and fuses float32 ops; tolerance: max pixel difference 2 (measured 1)."""
    common = ["model=tiny_sd15", "seed=5", "steps=3", "batch=2"]
    eager = runner_images([*common, "backend=torch"])
    compiled = runner_images([*common, "backend=inductor"])
    assert max_pixel_diff(eager, compiled) <= 2


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["backend=inductor"], {"CXX": "/nonexistent/g++"},
         r"error: backend=inductor cannot compile here: inductor on CPU compiles with \$CXX=/nonexistent/g\+\+"),
        # Each check is a CLI run importing torch (seconds): the fast subset keeps the first.
        pytest.param(["backend=torch", "backend.device=cuda"], {},
                     r"error: backend=torch asks for device cuda, but torch .* sees no CUDA GPU",
                     marks=pytest.mark.slow),
        pytest.param(["backend=torch", "backend.device=mps"], {},
                     r"error: backend=torch: device 'mps' is not one of auto, cpu, cuda, cuda:N",
                     marks=pytest.mark.slow),
    ],
)  # fmt: skip
def test_capability_errors(tmp_path, args, env, message):
    if "cuda" in " ".join(args):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA GPU")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"])
    finally:
        for key, value in old.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    assert proc.returncode == 2, proc.stderr[-1500:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.match(message, errors[0]), proc.stderr[-1500:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("precision,mean_tolerance", slow_except([("fp16", 8.0), ("bf16", 16.0)]))
def test_torch_half_precisions_on_cpu_stay_close_to_fp32(precision, mean_tolerance):
    """PyTorch has CPU kernels for fp16 and bf16 (Paddle's CPU build has not). Tolerance: mean |pixel
    difference| to fp32 (random tiny weights amplify rounding; measured 4.9 for fp16, 9.6 for bf16)."""
    common = ["model=tiny_sd15", "backend=torch", "seed=5", "steps=2"]
    reference = runner_images([*common, "precision=fp32"]).astype(np.float64)
    half = runner_images([*common, f"precision={precision}"]).astype(np.float64)
    assert np.isfinite(half).all() and half.std() > 1.0
    assert np.abs(reference - half).mean() <= mean_tolerance
