"""Graph-safe sampler steps against the stock diffusers steps, on the CPU in float32.

Each case runs a whole sampling loop twice on the same latents with the same stand-in denoiser (a fixed
nonlinear function of the scaled input and the timestep): once through the stock scheduler's
`scale_model_input` / `step`, once through the graph-safe sampler with a device step index. The issue's
bound is 1e-6; the graph-safe steps repeat the stock float32 operations in order, so the difference is 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.torch.graph_safe_schedulers import graph_safe_names, graph_safe_sampler, why_not_graph_safe
from runner.plan import plan_run
from tests.support.configs import compose_config

BOUND = 1e-6
SHAPE = (2, 4, 8, 8)
SD_SAMPLERS = ["default", "euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "pndm"]


def _scheduler(model: str, sampler: str, **config_overrides):
    plan = plan_run(compose_config([f"model={model}", f"scheduler={sampler}"]), check_capabilities=False)
    choice = plan.scheduler
    module = __import__("diffusers", fromlist=[choice.class_name])
    return getattr(module, choice.class_name).from_config({**choice.config, **config_overrides})


def _set_timesteps(scheduler, steps: int) -> None:
    if getattr(scheduler.config, "use_dynamic_shifting", False):  # Flux: sigmas and a resolution shift
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=0.8)
    else:
        scheduler.set_timesteps(steps)


def _denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A stand-in prediction that depends on the input and the timestep, not linear in either."""
    return torch.tanh(x) * 0.8 + torch.sin(t.float() / 97.0 + 0.3 * x)


def _stock(scheduler, latents: torch.Tensor, generator_seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(generator_seed)
    accepts_generator = "generator" in scheduler.step.__code__.co_varnames
    kwargs = {"generator": generator} if accepts_generator else {}
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents, t) if hasattr(scheduler, "scale_model_input") else latents
        latents = scheduler.step(_denoiser(x, t), t, latents, return_dict=False, **kwargs)[0]
    return latents


def _graph_safe(scheduler, latents: torch.Tensor, generator_seed: int) -> torch.Tensor:
    sampler = graph_safe_sampler(scheduler, torch.device("cpu"))
    sampler.load(scheduler, torch.Generator().manual_seed(generator_seed))
    index = torch.zeros(1, dtype=torch.long)
    for _ in range(len(sampler)):
        x = sampler.scale_input(latents, index)
        latents = sampler.step(_denoiser(x, sampler.timestep(index)), latents, index)
        index += 1
    return latents


def _compare(model: str, sampler: str, steps: int, **overrides) -> float:
    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(steps)) * 3
    stock, ours = _scheduler(model, sampler, **overrides), _scheduler(model, sampler, **overrides)
    _set_timesteps(stock, steps)
    _set_timesteps(ours, steps)
    expected, got = _stock(stock, latents.clone(), 7), _graph_safe(ours, latents.clone(), 7)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    return float((got - expected).abs().max())


@pytest.mark.parametrize("steps", [1, 4, 20])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", SD_SAMPLERS)
def test_sd_samplers_step_as_the_stock_scheduler(sampler, prediction, steps):
    assert _compare("tiny_sd15", sampler, steps, prediction_type=prediction) <= BOUND


@pytest.mark.parametrize("steps", [1, 4, 28])
@pytest.mark.parametrize("model", ["tiny_sd3", "tiny_flux"])
def test_flow_matching_steps_as_the_stock_scheduler(model, steps):
    assert _compare(model, "flow_euler", steps) <= BOUND


@pytest.mark.parametrize("options", [{"solver_type": "heun"}, {"euler_at_final": True}, {"lower_order_final": False},
                                     {"final_sigmas_type": "sigma_min"}, {"solver_order": 1}])  # fmt: skip
def test_dpm_solver_variants(options):
    for steps in (4, 16):
        assert _compare("tiny_sd15", "dpmpp_2m", steps, **options) <= BOUND


def test_ddim_clip_sample_and_sample_prediction():
    assert _compare("tiny_sd15", "ddim", 10, clip_sample=True, clip_sample_range=1.0) <= BOUND
    assert _compare("tiny_sd15", "ddim", 10, prediction_type="sample") <= BOUND


def test_ancestral_noise_follows_the_generator():
    """Another seed gives other latents: the noise really comes from the generator (that the same seed gives
    the stock latents is test_sd_samplers_step_as_the_stock_scheduler[euler_a-...])."""
    scheduler = _scheduler("tiny_sd15", "euler_a")
    _set_timesteps(scheduler, 6)
    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(_graph_safe(scheduler, latents, 1), _graph_safe(scheduler, latents, 2))


def test_a_reload_reuses_the_tables_storage():
    """A captured iteration reads the tables' storage: loading the next generation refills it in place."""
    scheduler = _scheduler("tiny_sd15", "euler_a")
    _set_timesteps(scheduler, 5)
    sampler = graph_safe_sampler(scheduler, torch.device("cpu"))
    sampler.load(scheduler, torch.Generator().manual_seed(0))
    index = torch.zeros(1, dtype=torch.long)
    sampler.step(torch.ones(SHAPE), torch.zeros(SHAPE), index)  # draws the ancestral noise
    pointers = {name: t.data_ptr() for name, t in sampler.tables.items()} | {"noise": sampler.noise.data_ptr()}
    first_noise = sampler.noise.clone()
    scheduler.set_timesteps(5)
    sampler.load(scheduler, torch.Generator().manual_seed(1))
    assert {name: t.data_ptr() for name, t in sampler.tables.items()} | {"noise": sampler.noise.data_ptr()} == pointers
    assert not torch.equal(first_noise, sampler.noise)


@pytest.mark.parametrize(
    ("class_name", "config", "reason"),
    [
        ("HeunDiscreteScheduler", {}, "HeunDiscreteScheduler has no graph-safe step"),
        ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"},
         "DPMSolverMultistepScheduler with algorithm_type=sde-dpmsolver++ (graph-safe: dpmsolver++) has no "
         "graph-safe step"),
        ("DPMSolverMultistepScheduler", {"solver_order": 3},
         "DPMSolverMultistepScheduler with solver_order=3 (graph-safe: 1, 2) has no graph-safe step"),
        ("PNDMScheduler", {"skip_prk_steps": False},
         "PNDMScheduler with skip_prk_steps=false (the Runge-Kutta warm-up steps) has no graph-safe step"),
        ("EulerDiscreteScheduler", {"prediction_type": "sample"},
         "EulerDiscreteScheduler with prediction_type=sample (graph-safe: epsilon, v_prediction) has no "
         "graph-safe step"),
        ("DDIMScheduler", {"thresholding": True}, "DDIMScheduler with thresholding=true (dynamic thresholding) has no "
         "graph-safe step"),
        ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True},
         "FlowMatchEulerDiscreteScheduler with stochastic_sampling=true has no graph-safe step"),
    ],
)  # fmt: skip
def test_unsupported_configurations_say_why(class_name, config, reason):
    assert why_not_graph_safe(class_name, config) == reason


def test_every_configured_discrete_sampler_is_covered_or_refused():
    """The samplers conf/scheduler offers: graph-safe ones are the ones tested above, the rest say why."""
    for name in ("ddpm", "heun", "lms", "unipc"):  # (the class name only: LMS needs scipy to be built)
        plan = plan_run(compose_config(["model=tiny_sd15", f"scheduler={name}"]), check_capabilities=False)
        class_name = plan.scheduler.class_name
        assert why_not_graph_safe(class_name, {}) == f"{class_name} has no graph-safe step"
    covered = set(graph_safe_names())
    assert covered == {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler",
                       "DPMSolverMultistepScheduler", "FlowMatchEulerDiscreteScheduler", "PNDMScheduler"}  # fmt: skip
