"""Turn a composed config into a checked plan, before any weights load.

Order of checks (cheapest first, engines imported last): run values, scheduler against the model
family, the weights directory, the stage graph, then the backend's capabilities on this machine and
the precision on its device. Every failure is a one-line ConfigError / CapabilityError.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from passes.manager import plan_passes
from runner import registry
from runner.executor import initial_state
from runner.graph import Stage, build_graph, check_run_values
from runner.scheduling import SchedulerChoice, choose_scheduler
from runner.schema import (
    BackendSpec,
    ModelSpec,
    PrecisionSpec,
    RunSettings,
    parse_backend,
    parse_model,
    parse_precision,
    parse_scheduler,
    parse_settings,
    to_plain,
)
from runner.weights import check_weights_dir

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    model: ModelSpec
    settings: RunSettings
    scheduler: SchedulerChoice
    backend_spec: BackendSpec
    precision: PrecisionSpec
    weights_dir: Path | None
    pipeline_config: dict[str, Any]
    stages: list[Stage]
    passes: Any = None  # passes.manager.PassPlan
    verify: bool = False
    backend: Any = None
    device: str = ""
    engine_cls: Any = None
    pass_report: Any = None  # filled when the passes are applied


def plan_run(cfg: Mapping[str, Any], check_capabilities: bool = True) -> RunPlan:
    """Validate everything that can be validated without loading weights."""
    model = parse_model(cfg["model"])
    settings = parse_settings(cfg, model)
    if not model.guidance_used and cfg.get("guidance") is not None:
        log.warning("model=%s ignores guidance=%s: its denoiser takes no guidance", model.name, cfg["guidance"])
    weights_dir, pipeline_config = check_weights_dir(model)
    scheduler = choose_scheduler(parse_scheduler(cfg["scheduler"]), model, weights_dir)
    stages = build_graph(model.stages, [*model.components, "scheduler"])
    check_run_values(stages, initial_state(settings), f"model={model.name}")
    if settings.negative_prompts and not any("negative_prompts" in stage.inputs for stage in stages):
        log.warning(
            "model=%s ignores negative_prompt: none of its stages reads it (no classifier-free guidance)", model.name
        )
    backend_spec = parse_backend(cfg["backend"])
    plan = RunPlan(
        model=model,
        settings=settings,
        scheduler=scheduler,
        backend_spec=backend_spec,
        precision=parse_precision(cfg["precision"]),
        weights_dir=weights_dir,
        pipeline_config=pipeline_config,
        stages=stages,
        passes=plan_passes(to_plain(cfg.get("passes")), backend_spec.engine),
        verify=settings.verify,
    )
    if check_capabilities:
        check_backend(plan)
    return plan


def check_backend(plan: RunPlan) -> None:
    """Resolve the backend and engine classes and run their capability checks (imports the engine)."""
    spec = plan.backend_spec
    backend_cls = registry.resolve("backend", spec.name)
    plan.engine_cls = registry.resolve("engine", spec.engine)
    plan.backend = backend_cls(spec=spec)
    plan.device = plan.backend.check(plan.precision)


def describe_plan(plan: RunPlan) -> dict[str, Any]:
    """The resolved choices, for report.json and PNG metadata."""
    s = plan.settings
    return {
        "model": plan.model.name,
        "weights": str(plan.weights_dir) if plan.weights_dir else "random",
        "backend": plan.backend_spec.name,
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
    }
