"""Run a checked stage list and time it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.graph import RunContext, Stage, run_guidance
from runner.schema import RunSettings


@dataclass
class Execution:
    state: dict[str, Any]
    stage_ms: dict[str, float]
    step_ms: list[float]
    peak_memory_mb: float
    # Peak memory of each stage, reset before it: the device allocator's on CUDA, the process's resident set
    # on the CPU (`peak_memory_source` says which). The run's peak is the largest of them.
    stage_peak_mb: dict[str, float] = field(default_factory=dict)
    peak_memory_source: str = "host_rss"


def initial_state(settings: RunSettings) -> dict[str, Any]:
    return {
        "prompts": list(settings.prompts),
        "negative_prompts": None if settings.negative_prompts is None else list(settings.negative_prompts),
        "images_per_prompt": settings.images_per_prompt,
        "height": settings.height,
        "width": settings.width,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "guidance_rescale": settings.guidance_rescale,
        "seed": settings.seed,
        "seed_rows": settings.seed_rows,
    }


def execute(
    stages: Sequence[Stage],
    settings: RunSettings,
    ctx: RunContext,
    around_stage: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
) -> Execution:
    """Run the stages in order under the engine's inference mode; time each (device-synchronized) and take
    each one's peak memory.

    around_stage: optional context factory entered around each stage (the bench counts FLOPs with it).
    """
    engine = ctx.engine
    state = initial_state(settings)
    ctx.generator = engine.generator(settings.seed)
    ctx.guidance = run_guidance(stages)
    ctx.step_times_ms.clear()
    stage_ms, stage_peak = {}, {}
    with engine.inference_mode():
        for stage in stages:
            engine.synchronize()
            engine.reset_peak_memory()
            start = time.perf_counter()
            with around_stage(stage.name) if around_stage else contextlib.nullcontext():
                produced = stage.run(state, ctx)
            engine.synchronize()
            stage_ms[stage.name] = (time.perf_counter() - start) * 1e3
            stage_peak[stage.name] = engine.peak_memory_mb()
            if set(produced) != set(stage.outputs):
                raise RuntimeError(
                    f"stage {stage.name!r} returned {sorted(produced)} but declares outputs {list(stage.outputs)}"
                )
            state.update(produced)
    return Execution(
        state=state,
        stage_ms=stage_ms,
        step_ms=list(ctx.step_times_ms),
        peak_memory_mb=max(stage_peak.values(), default=0.0),
        stage_peak_mb=stage_peak,
        peak_memory_source=engine.peak_memory_source,
    )
