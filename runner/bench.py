"""mode=bench: warm-up and timed runs of the runner and of the library's stock pipeline, side by side.

Both run in the same process on the same components (the stock pipeline gets the eager ones, before
the backend compiles anything), with the same prompt, seed and settings, so their ratio compares the
orchestration and the backend, not the weights or the machine's mood. Denoiser FLOPs are counted
once, on an extra short run, with the engine's FLOP counter.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.api import Pipeline
from runner.app import BuiltPipeline, load_pipeline, optimize
from runner.bench_quality import measure_quality
from runner.errors import ConfigError, RunnerError
from runner.executor import execute
from runner.graph import RunContext
from runner.plan import RunPlan, plan_run
from runner.report import summarize_ms
from runner.schema import BenchSettings
from runner.tables import bench_table
from runner.typed import typed

log = logging.getLogger(__name__)


def parse_bench(node: Any) -> BenchSettings:
    bench = typed(BenchSettings, node, "mode", owner="mode=bench")
    for key, low in (("warmup", 0), ("repeats", 1), ("quality_prompts", 1)):
        if getattr(bench, key) < low:
            raise ConfigError(f"mode.{key}={getattr(bench, key)!r} must be an integer >= {low}")
    return bench


def measure_runner(built: BuiltPipeline, bench: BenchSettings) -> dict:
    plan = built.plan
    for _ in range(bench.warmup):
        built.generate()
    runs = [built.generate() for _ in range(bench.repeats)]
    totals = [sum(run.stage_ms.values()) for run in runs]
    # Each run's first step is left out, as it must be for the stock pipeline (whose first step cannot
    # be timed from outside), so both sides sample the same steps; a 1-step run keeps it.
    steps = [ms for run in runs for ms in (run.step_ms[1:] or run.step_ms)]
    step = summarize_ms(steps)
    total = summarize_ms(totals)
    return {
        "stages": {name: summarize_ms([run.stage_ms[name] for run in runs]) for name in runs[0].stage_ms},
        "step": step,
        "total": total,
        "steps_per_s": round(1e3 / step["median"], 4) if step else None,
        "images_per_s": round(plan.settings.num_images * 1e3 / total["median"], 4),
        "peak_memory_mb": round(max(run.peak_memory_mb for run in runs), 1),
        "last_run": runs[-1],
    }


def count_denoiser_flops(plan: RunPlan, engine: Any, eager: Mapping[str, Any]) -> dict:
    """FLOPs per stage on a 2-step run, and per denoiser call (denoise FLOPs / denoiser iterations)."""
    settings = dataclasses.replace(plan.settings, steps=min(plan.settings.steps, 2), quiet=True)
    counters: dict[str, Any] = {}
    modules = [c for c in eager.values() if hasattr(c, "parameters")]

    def around(stage_name: str) -> Any:
        counters[stage_name] = engine.flop_counter(modules)
        return counters[stage_name]

    ctx = RunContext(engine=engine, components=eager, noise=settings.noise, pipeline_config=plan.pipeline_config,
                     progress=False)  # fmt: skip
    execution = execute(plan.stages, settings, ctx, around_stage=around)
    per_stage = {name: counter.total for name, counter in counters.items()}
    denoise = next((s.name for s in plan.stages if hasattr(s, "predictor")), None)
    calls = len(execution.step_ms)
    per_call = per_stage.get(denoise, 0) / calls if denoise and calls else None
    return {"stage_flops": per_stage, "flops_per_call": per_call}


def measure_reference(plan: RunPlan, engine: Any, eager: Mapping[str, Any], bench: BenchSettings) -> dict:
    """The stock pipeline (ppdiffusers / diffusers) on the same components and settings."""
    class_name = plan.model.pipeline_classes[0]
    try:
        pipe = engine.stock_pipeline(class_name, eager)
    except RunnerError as err:
        return {"pipeline": class_name, "error": err.one_line()}
    s = plan.settings
    accepted = inspect.signature(pipe.__call__).parameters

    def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
        timer.mark()  # the timer of the current call (bound below), as the runner's own loop marks steps
        return tensors

    call = {
        "prompt": list(s.prompts),
        "negative_prompt": list(s.negative_prompts) if s.negative_prompts else None,
        "num_images_per_prompt": s.images_per_prompt,
        "height": s.height,
        "width": s.width,
        "num_inference_steps": s.steps,
        "guidance_scale": s.guidance,
        "guidance_rescale": s.guidance_rescale,
        "output_type": "np",
        "callback_on_step_end": on_step_end,
        "max_sequence_length": plan.model.max_sequence_length,
    }
    call = {k: v for k, v in call.items() if k in accepted and v is not None}
    notes = []
    if plan.model.max_sequence_length and "max_sequence_length" not in accepted:
        notes.append(f"{class_name} takes no max_sequence_length; it uses its own T5 length")
    if s.guidance_rescale and "guidance_rescale" not in accepted:
        notes.append(f"{class_name} takes no guidance_rescale; its guidance is not rescaled")
    note = "; ".join(notes) or None
    totals, steps, peaks = [], [], []
    for i in range(bench.warmup + bench.repeats):
        timer = engine.step_timer()
        engine.reset_peak_memory()
        with engine.inference_mode():
            engine.synchronize()
            start = time.perf_counter()
            pipe(generator=engine.generator(s.seed), **call)
            engine.synchronize()
        elapsed = (time.perf_counter() - start) * 1e3
        peak = engine.peak_memory_mb()
        if i >= bench.warmup:
            totals.append(elapsed)
            peaks.append(peak)
            # Between consecutive step-end callbacks: the first step's start is not observable.
            steps.extend(timer.durations_ms())
    step, total = summarize_ms(steps), summarize_ms(totals)
    return {
        "pipeline": class_name,
        "step": step,
        "total": total,
        "steps_per_s": round(1e3 / step["median"], 4) if step else None,
        "images_per_s": round(s.num_images * 1e3 / total["median"], 4),
        "peak_memory_mb": round(max(peaks), 1),
        **({"note": note} if note else {}),
    }


def run_bench(cfg: Mapping[str, Any], output_dir: Path) -> dict[str, Any]:
    bench = parse_bench(cfg["mode"])
    plan = plan_run(cfg)
    built = load_pipeline(plan)
    # Unoptimized components first: FLOPs, then the stock pipeline; passes and backends change modules in place.
    flops = count_denoiser_flops(plan, built.engine, built.components)
    reference = measure_reference(plan, built.engine, built.components, bench) if bench.reference else None
    optimize(built)
    runner = measure_runner(built, bench)
    last = dataclasses.replace(runner.pop("last_run"), peak_memory_mb=runner["peak_memory_mb"])
    section = bench_section(bench, runner, flops, reference)
    pipe = Pipeline(cfg, built)
    if bench.quality:
        section["quality"] = measure_quality(cfg, pipe, bench.quality_prompts, output_dir)
    report = pipe.generation_of(last).save(output_dir, extra={"bench": section})
    print(bench_table(report), flush=True)
    return report


def bench_section(bench: BenchSettings, runner: dict, flops: dict, reference: dict | None) -> dict[str, Any]:
    per_call = flops["flops_per_call"]
    step_ms = runner["step"].get("median") if runner["step"] else None
    section: dict[str, Any] = {
        "warmup": bench.warmup,
        "repeats": bench.repeats,
        "runner": runner,
        "denoiser": {
            "gflop_per_call": round(per_call / 1e9, 3) if per_call else None,
            "tflop_per_s": round(per_call / (step_ms * 1e-3) / 1e12, 4) if per_call and step_ms else None,
        },
        "stage_gflop": {name: round(f / 1e9, 3) for name, f in flops["stage_flops"].items()},
        "reference": reference,
    }
    if reference and "error" not in reference and step_ms:
        section["ratio"] = {
            # > 1: the runner is faster than the stock pipeline.
            "step": round(reference["step"]["median"] / step_ms, 4) if reference["step"] else None,
            "total": round(reference["total"]["median"] / runner["total"]["median"], 4),
        }
    return section
