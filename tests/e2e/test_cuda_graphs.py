"""cuda_graphs: the graph-safe denoise iteration against the stock loop, and the pass's plan-time refusals.

A CPU cannot capture CUDA graphs, so here the iteration the pass captures runs uncaptured
(GraphedDenoiseLoop(capture=False): the same static buffers, device step index and graph-safe sampler) inside
the real pipeline, and must give the stock loop's images exactly (same kernels on the same shapes), for every
graph-safe sampler, for CFG and guidance-distilled families, and for a second generation that refills the
buffers of the first. tests/gpu runs the captured version on a GPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from components.stages.denoise import DENOISE_LOOP_ATTRIBUTE
from components.torch.cuda_graphs import GraphedDenoiseLoop
from runner.app import build_pipeline, generate
from runner.errors import CapabilityError, ConfigError
from runner.plan import plan_run
from tests.support.cases import slow_except
from tests.support.configs import compose_config

RUN = ["backend=torch", "steps=4", "quiet=true", "seed=3"]
CASES = [
    ("shapes_sd15", "default"),  # DDIM
    ("shapes_sd15", "euler"),
    ("shapes_sd15", "euler_a"),
    ("shapes_sd15", "dpmpp_2m"),
    ("shapes_sd15", "pndm"),
    ("tiny_sdxl", "default"),
    ("tiny_sd3", "default"),  # flow matching, CFG over a joint transformer
    ("tiny_flux", "default"),  # flow matching with dynamic shift, guidance-distilled (no CFG)
]


def _images(built, seed: int) -> np.ndarray:
    plan = dataclasses.replace(built.plan, settings=dataclasses.replace(built.plan.settings, seed=seed))
    return np.asarray(generate(plan, built.engine, built.components).state["images"])


@pytest.mark.parametrize(
    ("model", "scheduler"), slow_except(CASES, ("shapes_sd15", "euler_a"), ("tiny_flux", "default"))
)
def test_the_graph_safe_iteration_gives_the_stock_images(model, scheduler):
    built = build_pipeline(plan_run(compose_config([f"model={model}", f"scheduler={scheduler}", *RUN])))
    stock = [_images(built, seed) for seed in (3, 4)]
    denoiser = _denoiser(built)
    loop = GraphedDenoiseLoop(capture=False)
    setattr(denoiser, DENOISE_LOOP_ATTRIBUTE, loop)
    try:
        first, second = _images(built, 3), _images(built, 4)  # the second refills the first's buffers
    finally:
        delattr(denoiser, DENOISE_LOOP_ATTRIBUTE)
    assert np.array_equal(first, stock[0]) and np.array_equal(second, stock[1])
    assert not np.array_equal(first, second)
    iterations = len(built.components["scheduler"].timesteps)  # PNDM: one more than steps
    assert loop.stats() == {"captures": 0, "replays": 2 * iterations, "capture_s": 0.0}
    assert len(loop._iterations) == 1  # one key: the second generation reused the first's buffers


def _denoiser(built):
    return next(c for role, c in built.components.items() if role in ("unet", "transformer"))


def test_cpu_runs_refuse_it_before_loading():
    with pytest.raises(CapabilityError) as error:
        plan_run(compose_config(["model=shapes_sd15", "passes=[cuda_graphs]", *RUN]))
    assert str(error.value) == "pass cuda_graphs needs a CUDA device; this run's device is cpu"


def test_a_sampler_without_a_graph_safe_step_is_refused_before_loading():
    with pytest.raises(ConfigError) as error:
        plan_run(compose_config(["model=shapes_sd15", "scheduler=heun", "passes=[cuda_graphs]", *RUN]), False)
    assert str(error.value) == (
        "pass cuda_graphs cannot run with this sampler: HeunDiscreteScheduler has no graph-safe step; choose a "
        "scheduler with one: EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DDIMScheduler, "
        "DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler (e.g. scheduler=euler)"
    )


def test_step_cache_and_cuda_graphs_are_refused_together():
    with pytest.raises(ConfigError) as error:
        plan_run(compose_config(["model=shapes_sd15", "passes=[cuda_graphs,step_cache]", *RUN]), False)
    assert str(error.value).startswith("passes cuda_graphs and step_cache cannot run together: step_cache decides")


@pytest.mark.parametrize("memory", ["offload", "sequential"])
def test_memory_modes_that_move_weights_are_refused_with_it(memory):
    with pytest.raises(ConfigError) as error:
        plan_run(compose_config(["model=shapes_sd15", f"memory={memory}", "passes=[cuda_graphs]", *RUN]), False)
    assert str(error.value).startswith(f"pass cuda_graphs cannot run with memory={memory}: a captured graph reads")


def test_inductor_modes_that_capture_graphs_themselves_are_refused():
    overrides = ["model=shapes_sd15", "backend=inductor", "backend.mode=reduce-overhead", "passes=[cuda_graphs]"]
    with pytest.raises(ConfigError) as error:
        plan_run(compose_config([*overrides, "steps=2"]), False)
    assert str(error.value) == (
        "pass cuda_graphs cannot run with backend=inductor: backend.mode=reduce-overhead captures CUDA graphs of "
        "its own inside the iteration cuda_graphs captures; use backend.mode=null or max-autotune-no-cudagraphs"
    )


def test_max_graphs_below_one_is_refused():
    with pytest.raises(ConfigError, match=r"^passes.cuda_graphs.max_graphs=0 must be at least 1$"):
        plan_run(
            compose_config(["model=shapes_sd15", "passes=[cuda_graphs]", "passes.cuda_graphs.max_graphs=0"]), False
        )


@pytest.mark.paddle
def test_a_paddle_run_checks_nothing_of_a_torch_only_pass():
    """cuda_graphs acts on PyTorch only: a Paddle run on the CPU plans (the pass is skipped when building)."""
    plan = plan_run(compose_config(["model=shapes_sd15", "backend=paddle", "passes=[cuda_graphs,step_cache]"]))
    assert [c.name for c in plan.passes] == ["cuda_graphs", "step_cache"]


def test_captures_are_bounded_and_dropped_when_the_denoiser_changes():
    """max_graphs keys at most (least recently used out); a change of the denoiser's modules or parameter
    storage (here channels_last applied) drops every capture, so no graph replays stale addresses."""
    built = build_pipeline(plan_run(compose_config(["model=tiny_sd15", *RUN])))
    denoiser = _denoiser(built)
    loop = GraphedDenoiseLoop(capture=False, max_graphs=1)
    setattr(denoiser, DENOISE_LOOP_ATTRIBUTE, loop)
    plan = built.plan
    try:
        _images(built, 3)
        first_key = next(iter(loop._iterations))
        built.plan = dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, steps=3))
        _images(built, 3)
        assert len(loop._iterations) == 1 and next(iter(loop._iterations)) != first_key
        kept = next(iter(loop._iterations.values()))
        denoiser.to(memory_format=__import__("torch").channels_last)  # new parameter storage
        _images(built, 3)
        assert len(loop._iterations) == 1 and next(iter(loop._iterations.values())) is not kept
    finally:
        built.plan = plan
        delattr(denoiser, DENOISE_LOOP_ATTRIBUTE)
