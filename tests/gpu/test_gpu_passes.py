"""Every pass and memory mode on a CUDA GPU, at full size (random weights), checked against the eager run.

Skipped without CUDA. One command runs it on a GPU machine (see docs/benchmarks.md, "## GPU"):

    python -m pytest -q tests/gpu

Each family is built once (full-size architectures, random weights, 512x512, 4 steps); its eager images are
the reference. Each pass is then applied to the same components, the images drawn again and compared, and the
pass removed again. verify=true checks every changed component against its eager copy on first use (the
precision's tolerance, or a lossy pass's own bound). Memory modes build the smaller families again per mode.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from runner import registry  # noqa: E402 - after the skip: importing the runner is cheap, but says why first
from runner.app import build_pipeline, optimize  # noqa: E402
from runner.hooks import HookRegistry, remove_hook  # noqa: E402
from runner.plan import plan_run  # noqa: E402
from runner.verify import ENTRY_METHODS, HOOK_NAME  # noqa: E402
from tests.support.configs import compose_config  # noqa: E402
from tests.support.runs import max_pixel_diff  # noqa: E402

FAMILIES = {"sd15": "fp16", "sdxl": "fp16", "sd3": "fp16", "flux": "bf16"}
RUN = ["backend=torch", "height=512", "width=512", "steps=4", "seed=0", "quiet=true"]
# Options that make a pass change something measurable here; step_cache at threshold 0 skips nothing (its
# skipping is measured with the quality metric on the trained models, docs/benchmarks.md).
OPTIONS = {"attention": ["passes.attention.kernel=math"], "step_cache": ["passes.step_cache.threshold=0"]}
# Max pixel levels against eager, in half precision at 4 steps. Passes that change kernels (fused GroupNorm,
# NHWC convolutions, fused projections) round differently; cuda_graphs replays the same kernels except the
# sampler's (device scalars instead of host scalars).
LEVELS = {"cuda_graphs": 2}
DEFAULT_LEVELS = 6
LOSSY = {"fp8_linear"}  # judged by verify's bound (its measured error), not by pixels
GPU_PASSES = sorted(n for n in registry.names("pass") if "torch" in registry.resolve("pass", n).engines)


def _overrides(family: str, *extra: str) -> list[str]:
    return [f"model={family}", f"precision={FAMILIES[family]}", *RUN, *extra]


def _unoptimize(built) -> None:
    """Back to the eager components: passes removed, verification hooks and the memory mode taken off."""
    built.remove_passes()
    for component in built.components.values():
        for method in ENTRY_METHODS:
            registry = HookRegistry.find(component, method) if callable(getattr(component, method, None)) else None
            if registry is not None and HOOK_NAME in registry.names():
                remove_hook(component, HOOK_NAME, method)
    if built.memory is not None:
        built.memory.remove()


def _release() -> None:
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module", params=list(FAMILIES))
def eager(request):
    family = request.param
    built = build_pipeline(plan_run(compose_config(_overrides(family))))
    images = np.asarray(built.generate().state["images"])
    yield family, built, images
    del built
    _release()


@pytest.mark.parametrize("pass_name", GPU_PASSES)
def test_each_pass_against_eager(eager, pass_name):
    family, built, reference = eager
    cls = registry.resolve("pass", pass_name)
    reason = cls.check_device("cuda")
    if reason:
        pytest.skip(reason)
    base = built.plan
    plan = plan_run(compose_config(_overrides(family, f"passes=[{pass_name}]", "verify=true",
                                              *OPTIONS.get(pass_name, []))))  # fmt: skip
    built.plan = plan
    optimize(built)
    try:
        report = built.passes_report()
        if not report["details"]:
            pytest.skip(f"{pass_name} applies to no component of {family}: {report['skipped']}")
        first = np.asarray(built.generate().state["images"])
        second = np.asarray(built.generate().state["images"])  # cuda_graphs: replays its captured graph
        report = built.passes_report()
    finally:
        _unoptimize(built)
        built.plan = base
    assert np.array_equal(first, second), "the same seed drew different images"
    assert all(v["max_abs_error"] <= v["bound"] for v in report["verified"]), report["verified"]
    if pass_name not in LOSSY:
        assert max_pixel_diff(first, reference) <= LEVELS.get(pass_name, DEFAULT_LEVELS)
    if pass_name == "cuda_graphs":
        assert report["stats"]["cuda_graphs"]["captures"] == 1


# The lists scripts/gpu_bench.sh measures, checked together (a pass can break another: rope_cache compares ids
# on the host, which a capture forbids).
COMBINATIONS = ["default,cuda_graphs", "channels_last,groupnorm_silu,cuda_graphs", "fp8_linear,cuda_graphs",
                "qkv_fusion,rope_cache,attention,cuda_graphs"]  # fmt: skip


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_pass_combinations_against_eager(eager, combination):
    family, built, reference = eager
    names = combination.split(",")
    if "fp8_linear" in names and registry.resolve("pass", "fp8_linear").check_device("cuda"):
        pytest.skip("this GPU has no fp8 matrix units")
    base = built.plan
    passes = "passes=default" if names[0] == "default" else f"passes=[{combination}]"
    extra = ["+passes.cuda_graphs={}"] if names[0] == "default" else []
    built.plan = plan_run(compose_config(_overrides(family, passes, *extra, "verify=true")))
    optimize(built)
    try:
        images = np.asarray(built.generate().state["images"])
        report = built.passes_report()
    finally:
        _unoptimize(built)
        built.plan = base
    assert all(v["max_abs_error"] <= v["bound"] for v in report["verified"]), report["verified"]
    if "fp8_linear" not in names:
        assert max_pixel_diff(images, reference) <= DEFAULT_LEVELS
    assert report["stats"]["cuda_graphs"]["captures"] == 1


def test_cuda_graphs_with_every_graph_safe_sampler():
    """sd15 in fp16 with each graph-safe sampler: captured vs eager within 2 levels."""
    for scheduler in ("euler", "euler_a", "ddim", "dpmpp_2m", "pndm"):
        overrides = _overrides("sd15", f"scheduler={scheduler}")
        built = build_pipeline(plan_run(compose_config(overrides)))
        reference = np.asarray(built.generate().state["images"])
        _unoptimize(built)
        built.plan = plan_run(compose_config([*overrides, "passes=[cuda_graphs]"]))
        optimize(built)
        images = np.asarray(built.generate().state["images"])
        assert max_pixel_diff(images, reference) <= LEVELS["cuda_graphs"], scheduler
        del built
        _release()


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("memory", ["lean", "offload", "sequential"])
def test_memory_modes_against_none(family, memory):
    reference = np.asarray(build_pipeline(plan_run(compose_config(_overrides(family)))).generate().state["images"])
    _release()
    built = build_pipeline(plan_run(compose_config(_overrides(family, f"memory={memory}"))))
    execution = built.generate()
    assert max_pixel_diff(np.asarray(execution.state["images"]), reference) <= 2
    report = built.memory_report()
    assert report["mode"] == memory
    del built, execution
    _release()
