"""Optimized Paddle backends against the eager reference (fp32, CPU).

Tolerances (max |pixel difference|): paddle_jit 1 (the same kernels in a static program);
paddle_inference 2 (oneDNN reorders float32 reductions; measured 1). Both are per model in
tests/support/cases.py (Tolerances.paddle_jit, .paddle_inference).
"""

from __future__ import annotations

import pytest

from tests.support.cases import case, names
from tests.support.runs import max_pixel_diff, runner_images

pytestmark = pytest.mark.paddle  # every test here runs a Paddle backend

COMMON = ["seed=5", "steps=2", "batch=2", "negative_prompt=blurry"]
# The UNet models. tiny_sd21 is left out: its UNet is tiny_sd15's plus linear projections and per-level
# head dims, both of which tiny_sdxl has, and each trace or export costs a full run more.
MODELS = names(denoiser="unet", exclude=("tiny_sd21",))


# Tracing or exporting the denoiser takes tens of seconds on a 2-core CPU: slow. The export cache's
# signature logic is tested fast in tests/unit/test_call_signature.py.
@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_paddle_jit_matches_eager(model):
    eager = runner_images([f"model={model}", *COMMON])
    static = runner_images([f"model={model}", "backend=paddle_jit", *COMMON])
    assert max_pixel_diff(eager, static) <= case(model).tolerances.paddle_jit


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_paddle_inference_matches_eager_and_reuses_its_export_cache(model, tmp_path):
    cache = tmp_path / "cache"
    backend = ["backend=paddle_inference", f"backend.cache_dir={cache}"]
    eager = runner_images([f"model={model}", *COMMON])
    exported = runner_images([f"model={model}", *backend, *COMMON])
    assert max_pixel_diff(eager, exported) <= case(model).tolerances.paddle_inference
    exports = sorted(p.name for p in cache.iterdir())
    assert len(exports) == 1 and not exports[0].startswith(".export-")
    again = runner_images([f"model={model}", *backend, *COMMON])
    assert max_pixel_diff(exported, again) == 0
    assert sorted(p.name for p in cache.iterdir()) == exports, "the second run exported again"


@pytest.mark.slow
@pytest.mark.parametrize("backend,tolerance", [("paddle_jit", 1), ("paddle_inference", 2)])
def test_static_backends_trace_flux_with_hooked_passes(backend, tolerance, tmp_path):
    """rope_cache hooks a method the static program's source calls: the trace bypasses the hook (the
    program computes the rotary embedding itself) instead of failing on the hook object."""
    common = ["model=tiny_flux", "seed=5", "steps=2", "batch=2"]
    eager = runner_images(common)
    options = [f"backend.cache_dir={tmp_path}"] if backend == "paddle_inference" else []
    static = runner_images([*common, f"backend={backend}", *options, "passes=default", "verify=true"])
    assert max_pixel_diff(eager, static) <= tolerance
