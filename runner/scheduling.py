"""Sampler choice and checks: which scheduler class with which config, and does it run here."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.conf_index import group_options
from runner.errors import ConfigError
from runner.schema import ModelSpec
from runner.weights import scheduler_config_from

KIND_NAMES = {
    "discrete": "a discrete-time noise/v-prediction sampler",
    "flow_match": "a flow-matching sampler",
}


@dataclass(frozen=True)
class SchedulerChoice:
    choice: str  # the config option ("default" or a conf/scheduler name)
    class_name: str
    config: dict[str, Any]


def choose_scheduler(choice: Any, model: ModelSpec, weights: Path | None) -> SchedulerChoice:
    """The scheduler class and config: the directory's (or model's) own by default, else the chosen
    class configured from the directory's (or model's) scheduler config, as users swap samplers with
    `Class.from_config(pipe.scheduler.config)`."""
    base = scheduler_config_from(weights, model)
    if choice.name == "default":
        return SchedulerChoice("default", base.get("_class_name") or model.scheduler_class, base)
    if choice.kind != model.scheduler_kind:
        fitting = ", ".join(n for n, o in group_options("scheduler").items() if o.get("kind") == model.scheduler_kind)
        needs = KIND_NAMES.get(model.scheduler_kind, model.scheduler_kind)
        raise ConfigError(
            f"scheduler={choice.name} cannot drive model={model.name}: it needs {needs}; "
            f"choose one of: default, {fitting}"
        )
    return SchedulerChoice(choice.name, choice.class_name or "", {**base, **choice.options})


def step_kwargs_for(scheduler: Any, generator: Any) -> dict[str, Any]:
    # Stochastic samplers (ancestral, DDPM, SDE) draw their noise from the run's generator, as the
    # stock pipelines pass theirs, so the same seed gives the same image.
    accepts = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if "generator" in accepts else {}


def _probe_scheduler(choice: SchedulerChoice, engine: Any, steps: int) -> Any:
    """A fresh scheduler of `choice` with `steps` timesteps set, for probing it without a model."""
    probe = engine.make_scheduler(choice.class_name, choice.config)
    if getattr(probe.config, "use_dynamic_shifting", False):
        # Resolution-shifted flow matching takes sigmas and a shift (mu) instead of a step count.
        probe.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=1.0)
    else:
        probe.set_timesteps(steps)
    return probe


def _probe_latents(engine: Any, shape: tuple[int, ...]) -> Any:
    return engine.cast(engine.tensor(np.full(shape, 0.5, dtype=np.float32)), engine.dtype)


def make_checked_scheduler(choice: SchedulerChoice, steps: int, engine: Any) -> Any:
    """Build the scheduler and run it for a few steps on a 1x1 latent, before any weights load.

    A sampler that is broken on the installed engine version (ppdiffusers 0.29's UniPC corrector mixes
    float32 and float64 in paddle.linalg.solve, for instance) fails here with a one-line error
    instead of after minutes of loading and denoising.
    """
    try:
        probe = _probe_scheduler(choice, engine, min(steps, 4))
        latents = _probe_latents(engine, (1, 1, 1, 1))
        step_kwargs = step_kwargs_for(probe, engine.generator(0))
        for t in probe.timesteps:
            model_input = probe.scale_model_input(latents, t) if hasattr(probe, "scale_model_input") else latents
            latents = probe.step(model_input * 0.1, t, latents, return_dict=False, **step_kwargs)[0]
    except ConfigError:
        raise  # the engine's own refusal of the config (an option it cannot follow): already one line
    except Exception as exc:  # noqa: BLE001 - any failure means the sampler cannot run here
        detail = " ".join(str(exc).split())[:300]
        versions = ", ".join(f"{name} {version}" for name, version in engine.versions().items())
        raise ConfigError(
            f"scheduler={choice.choice} ({choice.class_name}) does not run on the {engine.name} engine "
            f"({versions}): {type(exc).__name__}: {detail}; choose another scheduler"
        ) from exc
    return engine.make_scheduler(choice.class_name, choice.config)


def draws_step_noise(choice: SchedulerChoice, engine: Any) -> bool:
    """Whether the sampler's step draws noise (ancestral, DDPM, SDE): one step on the same input with two
    different generators gives different latents. Requests on such a sampler cannot share a batch, since
    a batch draws its step noise from one generator."""
    outputs = []
    for seed in (0, 1):
        scheduler = _probe_scheduler(choice, engine, 2)
        latents = _probe_latents(engine, (1, 1, 2, 2))
        t = scheduler.timesteps[0]
        step_kwargs = step_kwargs_for(scheduler, engine.generator(seed))
        outputs.append(engine.to_numpy(scheduler.step(latents * 0.1, t, latents, return_dict=False, **step_kwargs)[0]))
    return not np.array_equal(outputs[0], outputs[1])
