"""One run: plan (validate) -> build components -> prepare backend -> execute stages -> write outputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from passes.manager import apply_passes, wrap_verification
from runner.executor import Execution, execute
from runner.files import write_json_atomic
from runner.graph import RunContext
from runner.images import save_png
from runner.plan import RunPlan, describe_plan, plan_run
from runner.report import REPORT_NAME, build_report
from runner.scheduling import make_checked_scheduler
from runner.schema import to_plain

log = logging.getLogger(__name__)


def load_components(plan: RunPlan, engine: Any) -> dict[str, Any]:
    """Every model component plus the scheduler, from the weights directory or at random."""
    scheduler = make_checked_scheduler(plan, engine)
    weights = str(plan.weights_dir) if plan.weights_dir else None
    components = {
        role: engine.load_component(spec, weights, seed=plan.model.init_seed)
        for role, spec in plan.model.components.items()
    }
    components["scheduler"] = scheduler
    return components


def optimize(plan: RunPlan, engine: Any, components: dict[str, Any]) -> dict[str, Any]:
    """Apply the planned passes, then the backend; with verify, wrap changed components in checks."""
    components, plan.pass_report, snapshots = apply_passes(plan.passes, dict(components), engine, plan.verify)
    components = plan.backend.prepare(components, engine)
    if snapshots:
        components = wrap_verification(components, snapshots, plan.precision.dtype, plan.pass_report)
    return components


def build_pipeline(plan: RunPlan) -> tuple[Any, dict[str, Any], float]:
    """Create the engine and its components; return (engine, components, load milliseconds)."""
    engine = plan.engine_cls(device=plan.device, dtype=plan.precision.dtype)
    start = time.perf_counter()
    components = optimize(plan, engine, load_components(plan, engine))
    return engine, components, (time.perf_counter() - start) * 1e3


def passes_report(plan: RunPlan) -> dict[str, Any]:
    if plan.pass_report is None:
        return {"order": [], "applied": []}
    return plan.pass_report.as_dict(plan.passes.passes)


def generate(plan: RunPlan, engine: Any, components: Mapping[str, Any]) -> Execution:
    ctx = RunContext(
        engine=engine,
        components=components,
        noise=plan.settings.noise,
        pipeline_config=plan.pipeline_config,
        progress=not plan.settings.quiet,
    )
    return execute(plan.stages, plan.settings, ctx)


def image_metadata(plan: RunPlan, index: int) -> dict[str, Any]:
    s = plan.settings
    prompt_index = index // s.images_per_prompt
    negative = s.negative_prompts[prompt_index] if s.negative_prompts else ""
    run = describe_plan(plan)
    return {
        "prompt": s.prompts[prompt_index],
        "negative_prompt": negative,
        "seed": s.seed,
        "batch_index": index,
        **{k: run[k] for k in ("model", "backend", "precision", "scheduler", "scheduler_class")},
        **{k: run[k] for k in ("steps", "guidance", "guidance_rescale", "height", "width", "noise")},
    }


def write_outputs(plan: RunPlan, execution: Execution, output_dir: Path) -> list[str]:
    names = []
    for index, image in enumerate(execution.state["images"]):
        name = f"image_{index:03d}.png"
        save_png(output_dir / name, image, image_metadata(plan, index))
        names.append(name)
    return names


def job_report(
    cfg: Mapping[str, Any], plan: RunPlan, engine: Any, execution: Execution, load_ms: float, output_dir: Path
) -> dict[str, Any]:
    """Write the images of `execution` and return the report of the job (not yet written)."""
    images = write_outputs(plan, execution, output_dir)
    report = build_report(
        images=images,
        stage_ms=execution.stage_ms,
        step_ms=execution.step_ms,
        num_images=plan.settings.num_images,
        peak_memory_mb=execution.peak_memory_mb,
        load_ms=load_ms,
        run=describe_plan(plan),
        backend=plan.backend.describe(),
        config=to_plain(cfg),
        engine_versions=engine.versions(),
    )
    report["passes"] = passes_report(plan)
    return report


def run_job(cfg: Mapping[str, Any], output_dir: Path) -> dict[str, Any]:
    """Run one configured job end to end; return the report (also written to output_dir/report.json)."""
    plan = plan_run(cfg)
    engine, components, load_ms = build_pipeline(plan)
    report = job_report(cfg, plan, engine, generate(plan, engine, components), load_ms, output_dir)
    write_json_atomic(output_dir / REPORT_NAME, report)
    log.info("wrote %d image(s) and %s to %s", len(report["images"]), REPORT_NAME, output_dir)
    return report
