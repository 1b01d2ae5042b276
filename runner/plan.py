"""Turn a composed config into a checked plan, before any weights load.

Order of checks (cheapest first, engines imported last): run values, scheduler against the model
family, the weights (directory or single file), the stage graph, then the backend's capabilities on this machine and
the precision on its device. Every failure is a one-line ConfigError / CapabilityError.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import runner.registry as registry
from runner.errors import ConfigError
from runner.executor import initial_state
from runner.graph import Stage, build_graph, check_run_values
from runner.pass_manager import (
    PassChoice,
    check_passes_against_run,
    check_passes_with_backend,
    plan_passes,
)
from runner.scheduling import SchedulerChoice, choose_scheduler
from runner.schema import (
    BackendSpec,
    LoraSpec,
    MemorySettings,
    ModelSpec,
    PrecisionSpec,
    RunSettings,
    parse_backend,
    parse_loras,
    parse_memory,
    parse_model,
    parse_precision,
    parse_scheduler,
    parse_settings,
    to_plain,
)
from runner.weights import check_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """The validated decisions of one run. Building it (runner.app) produces the engine, components and
    pass report in a separate object; nothing is ever written back into the plan."""

    model: ModelSpec
    settings: RunSettings
    scheduler: SchedulerChoice
    backend: BackendSpec
    precision: PrecisionSpec
    weights_path: Path | None  # a pipeline directory or a single-file checkpoint; None: random weights
    pipeline_config: Mapping[str, Any]
    stages: tuple[Stage, ...]
    passes: tuple[PassChoice, ...]
    verify: bool
    device: str | None  # None only when planned with check_capabilities=False
    loras: tuple[LoraSpec, ...] = ()
    memory: MemorySettings = field(default_factory=lambda: MemorySettings(name="none"))


def plan_run(cfg: Mapping[str, Any], check_capabilities: bool = True) -> RunPlan:
    """Validate everything that can be validated without loading weights."""
    model = parse_model(cfg["model"])
    settings = parse_settings(cfg, model)
    loras = parse_loras(cfg.get("loras"))
    weights_path, pipeline_config = check_weights(model)
    scheduler = choose_scheduler(parse_scheduler(cfg["scheduler"]), model, weights_path)
    stages = build_graph(model.stages, [*model.components, "scheduler"])
    check_settings(settings, model, stages, guidance_given=cfg.get("guidance") is not None)
    backend = parse_backend(cfg["backend"])
    precision = parse_precision(cfg["precision"])
    passes = plan_passes(to_plain(cfg.get("passes")), backend.engine)
    check_passes_with_backend(passes, backend)
    memory = parse_memory(cfg.get("memory") or {"name": "none"})
    check_memory_with_backend(memory, backend, stages, model.weighted_roles)
    device = check_backend(backend, precision) if check_capabilities else None
    check_passes_against_run(passes, backend, (scheduler.class_name, scheduler.config), memory.name, device)
    return RunPlan(
        model=model,
        settings=settings,
        scheduler=scheduler,
        backend=backend,
        precision=precision,
        weights_path=weights_path,
        pipeline_config=pipeline_config,
        stages=tuple(stages),
        passes=passes,
        verify=settings.verify,
        device=device,
        loras=loras,
        memory=memory,
    )


def check_memory_with_backend(
    memory: MemorySettings, backend: BackendSpec, stages: Sequence[Stage], weighted_roles: Sequence[str]
) -> None:
    """A memory mode moves or re-routes the weights of some components; a backend that compiles or converts a
    component (`backend.compile` roles) runs its own copy, which no move reaches (and a compiled graph would
    recompile at every move): refused before any weights load."""
    compiled = list(getattr(backend.options, "compile", None) or [])
    touched = registry.resolve("memory", memory.name).roles_changed(memory, stages, weighted_roles)
    clash = [role for role in touched if role in compiled]
    if clash:
        raise ConfigError(
            f"memory={memory.name} cannot run with backend={backend.name}: it moves or re-routes "
            f"{', '.join(clash)}, which the backend compiles or converts (backend.compile={compiled}); use an eager "
            "backend (torch, paddle) or leave those roles out of backend.compile"
        )


def check_settings(settings: RunSettings, model: ModelSpec, stages: Sequence[Stage], *, guidance_given: bool) -> None:
    """What the stages say about the run values (ConfigError), and warnings for values the model ignores."""
    if not model.guidance_used and guidance_given:
        log.warning("model=%s ignores guidance=%s: its denoiser takes no guidance", model.name, settings.guidance)
    check_run_values(stages, initial_state(settings), f"model={model.name}")
    if settings.negative_prompts and not any("negative_prompts" in stage.inputs for stage in stages):
        log.warning(
            "model=%s ignores negative_prompt: none of its stages reads it (no classifier-free guidance)", model.name
        )


def check_backend(spec: BackendSpec, precision: PrecisionSpec) -> str:
    """Run the backend's capability checks (imports the engine); return the device the run will use."""
    registry.resolve("engine", spec.engine)
    return registry.resolve("backend", spec.name)(spec=spec).check(precision)


def describe_plan(plan: RunPlan) -> dict[str, Any]:
    """The resolved choices, for report.json and PNG metadata."""
    s = plan.settings
    return {
        "model": plan.model.name,
        "weights": str(plan.weights_path) if plan.weights_path else "random",
        "backend": plan.backend.name,
        "device": plan.device,
        "precision": plan.precision.name,
        "scheduler": plan.scheduler.choice,
        "scheduler_class": plan.scheduler.class_name,
        "height": s.height,
        "width": s.width,
        "steps": s.steps,
        "guidance": s.guidance,
        "guidance_rescale": s.guidance_rescale,
        "seed": s.seed,
        "images_per_prompt": s.images_per_prompt,
        "noise": s.noise,
        "memory": plan.memory.name,
    }
