"""The denoise loop: a predictor, a guidance rule and the scheduler step, repeated over the timesteps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

from components.stages.guidance import GUIDANCE_INPUTS, GuidanceParams
from runner.graph import RunContext, Stage, make_part
from runner.scheduling import step_kwargs_for

# A denoiser may carry an object under this name that runs the loop's iterations itself (the cuda_graphs pass:
# components/torch/cuda_graphs.GraphedDenoiseLoop); the stage then hands it the parts of one iteration.
DENOISE_LOOP_ATTRIBUTE = "runner_denoise_loop"


class DenoiseLoop(Stage):
    """For each timestep: expand latents for guidance, scale, predict, combine, step the scheduler.

    predictor / guidance: registered sub-steps with their parameters (see conf/model/*.yaml).
    Per-step times go to `ctx.step_times_ms` for the report (device events on GPU: no per-step sync).
    """

    def __init__(
        self,
        *,
        name: str,
        predictor: Mapping[str, Any] | str,
        guidance: Mapping[str, Any] | str = "cfg",
        scheduler: str = "scheduler",
    ) -> None:
        super().__init__(name=name)
        self.predictor = make_part("predictor", predictor, f"stage {name!r}")
        self.guidance = make_part("guidance", guidance, f"stage {name!r}")
        self.scheduler = scheduler
        extra = [k for k in self.predictor.state_keys if k not in ("latents", *GUIDANCE_INPUTS)]
        self.inputs = ("latents", "timesteps", *GUIDANCE_INPUTS, *extra)
        self.outputs = ("latents",)
        self.components = (*self.predictor.components, scheduler)

    def check_run(self, values: Mapping[str, Any], where: str) -> str | None:
        return self.guidance.check(GuidanceParams.from_state(values), where)

    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        engine = ctx.engine
        scheduler = ctx.components[self.scheduler]
        self.predictor.check(ctx.components)
        params = GuidanceParams.from_state(state)
        cond = self.guidance.batch_conditioning(state, self.predictor.batched_keys, engine, params)
        cond.update(self.predictor.prepare(state, ctx.components, engine))
        step_kwargs = step_kwargs_for(scheduler, ctx.generator)
        latents = state["latents"]
        timesteps = state["timesteps"]
        bar = tqdm(total=len(timesteps), desc=self.name, disable=not ctx.progress, leave=False)
        timer = engine.step_timer()
        timer.mark()
        loop = getattr(ctx.components[self.predictor.components[0]], DENOISE_LOOP_ATTRIBUTE, None)
        if loop is not None:

            def on_step() -> None:
                timer.mark()
                bar.update()

            latents = loop.run(
                guidance=self.guidance, params=params, predictor=self.predictor, components=ctx.components,
                engine=engine, scheduler=scheduler, latents=latents, cond=cond, generator=ctx.generator,
                on_step=on_step,
            )  # fmt: skip
            timesteps = ()  # done
        for t in timesteps:
            model_input = self.guidance.expand(latents, engine, params)
            if hasattr(scheduler, "scale_model_input"):  # flow-matching schedulers have no input scaling
                model_input = scheduler.scale_model_input(model_input, t)
            prediction = self.predictor(ctx.components, engine, model_input, t, cond)
            prediction = self.guidance.combine(prediction, params)
            latents = scheduler.step(prediction, t, latents, return_dict=False, **step_kwargs)[0]
            timer.mark()
            bar.update()
        bar.close()
        ctx.step_times_ms.extend(timer.durations_ms())
        return {"latents": latents}
