"""Build a plan (engine, components, passes, backend) and execute its stages. runner/api.py drives it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import runner.registry as registry
from runner.errors import ConfigError
from runner.executor import Execution, execute
from runner.graph import RunContext
from runner.hooks import hooks_in
from runner.pass_base import Pass
from runner.pass_manager import PassReport, apply_passes, instantiate, remove_passes
from runner.plan import RunPlan
from runner.scheduling import draws_step_noise, make_checked_scheduler
from runner.schema import LoraSpec
from runner.verify import install_verification, pending_copies

log = logging.getLogger(__name__)


@dataclass
class BuiltPipeline:
    """What building a plan produces: the engine, the backend, the loaded (and optimized) components and
    the pass report. The plan stays as it was; generating images reads both."""

    plan: RunPlan
    engine: Any
    backend: Any
    components: dict[str, Any]
    load_ms: float
    passes: list[Pass] = field(default_factory=list)
    pass_report: PassReport | None = None
    loras: tuple[LoraSpec, ...] = ()  # merged into the weights now (the plan's, until set_loras)
    memory: Any = None  # the installed memory mode (components/memory/), after optimize

    def set_loras(self, specs: Sequence[LoraSpec]) -> dict[str, int]:
        """Merge these LoRAs into the weights in place, replacing the current ones (none: the original weights,
        bit for bit). Files are read and checked against the model before any weight changes; returns the
        number of changed modules per component."""
        return self.merge_loras(specs, read_loras(self.plan, self.engine, specs))

    def merge_loras(self, specs: Sequence[LoraSpec], files: Sequence[Any]) -> dict[str, int]:
        """Merge LoRA files already read (`read_loras`) in place of the current ones."""
        model = self.plan.model
        # verify=true: the eager copies awaiting their first-call check get the same LoRAs (the check compares
        # what each pass did, not what the LoRA did).
        copies = pending_copies(self.components)
        changed = self.engine.apply_loras(self.components, files, model.weighted_roles, model.name, copies)
        self.loras = tuple(specs)
        return changed

    def loras_report(self) -> list[dict[str, Any]]:
        return [{"path": spec.path, "scale": spec.scale} for spec in self.loras]

    def generate(self) -> Execution:
        return generate(self.plan, self.engine, self.components, memory=self.memory)

    def memory_report(self) -> dict[str, Any]:
        return self.memory.report() if self.memory is not None else {"mode": self.plan.memory.name}

    def remove_passes(self, names: list[str] | None = None) -> list[str]:
        """Undo applied passes (all when None); the components compute what they did before them. The memory
        mode comes off first and goes back on after: its hooks sit on the modules it found (sequential: every
        layer), and a removed pass puts other modules back."""
        if not self.pass_report:
            return []
        if self.memory is not None:
            self.memory.remove()
        removed = remove_passes(self.pass_report, names)
        if self.memory is not None:
            self.memory = install_memory(self.plan, self.engine, self.components)
        return removed

    def passes_report(self) -> dict[str, Any]:
        if self.pass_report is None:
            return {"order": [], "applied": []}
        return self.pass_report.as_dict(self.passes)

    def components_report(self) -> dict[str, Any]:
        """Per component: the passes applied to it and the hooks on it and its submodules, in order."""
        report = {}
        for role, component in self.components.items():
            passes = self.pass_report.passes_on(role) if self.pass_report else []
            hooks = hooks_in(component)
            if passes or hooks:
                report[role] = {"passes": passes, "hooks": hooks}
        return report


def create_backend(plan: RunPlan) -> Any:
    return registry.resolve("backend", plan.backend.name)(spec=plan.backend, precision=plan.precision,
                                                          verify=plan.verify)  # fmt: skip


def create_engine(plan: RunPlan, backend: Any | None = None) -> Any:
    dtype = (backend or create_backend(plan)).engine_dtype(plan.precision)
    return registry.resolve("engine", plan.backend.engine)(device=plan.device, dtype=dtype)


def load_components(plan: RunPlan, engine: Any) -> dict[str, Any]:
    """Every model component plus the scheduler, from the weights directory or single file, or at random."""
    scheduler = make_checked_scheduler(plan.scheduler, plan.settings.steps, engine)
    weights = str(plan.weights_path) if plan.weights_path else None
    single_file = plan.model.single_file if plan.weights_path and plan.weights_path.is_file() else None
    components = {
        role: engine.load_component(spec, weights, seed=plan.model.init_seed, single_file=single_file)
        for role, spec in plan.model.components.items()
    }
    components["scheduler"] = scheduler
    return components


def read_loras(plan: RunPlan, engine: Any, specs: Sequence[LoraSpec]) -> list[Any]:
    """The LoRA files, read and checked against the model (format, family, components); no weights needed."""
    return engine.read_loras(specs, plan.model.family, plan.model.weighted_roles)


def load_pipeline(plan: RunPlan) -> BuiltPipeline:
    """The engine and the eager components with the plan's LoRAs merged (no passes, no backend yet), with the
    loading time. LoRA files are read and checked before any weights load."""
    backend = create_backend(plan)
    engine = create_engine(plan, backend)
    check_noise_source(plan, engine)
    start = time.perf_counter()
    files = read_loras(plan, engine, plan.loras)
    components = load_components(plan, engine)
    built = BuiltPipeline(plan, engine, backend, components, load_ms=0.0)
    if files:
        built.merge_loras(plan.loras, files)
    built.load_ms = (time.perf_counter() - start) * 1e3
    return built


def check_noise_source(plan: RunPlan, engine: Any) -> None:
    """noise=numpy promises the same images on every engine. A sampler that draws fresh noise at every step
    (ancestral, DDPM, SDE) takes it from the engine's own generator, which numpy cannot feed: refused before
    any weights load rather than giving each engine other images."""
    if plan.settings.noise == "numpy" and draws_step_noise(plan.scheduler, engine):
        raise ConfigError(
            f"noise=numpy cannot hold with scheduler={plan.scheduler.choice} ({plan.scheduler.class_name}): it draws "
            "new noise at every step from the engine's own generator, so the engines would draw other images; "
            "use noise=engine, or a sampler without step noise (e.g. scheduler=euler)"
        )


def optimize(built: BuiltPipeline) -> None:
    """Apply the planned passes, then the backend, in place; with verify, hook checks onto changed components."""
    plan = built.plan
    start = time.perf_counter()
    built.passes = [instantiate(choice) for choice in plan.passes]
    eager = getattr(built.backend, "eager_only_passes_apply", True)
    outcome = apply_passes(built.passes, built.components, built.engine, plan.verify, eager=eager)
    built.pass_report = outcome.report
    built.backend.prepare(built.components, built.engine)
    if outcome.snapshots:
        install_verification(built.components, outcome.snapshots, plan.precision.dtype, outcome.report.verified)
    built.memory = install_memory(plan, built.engine, built.components)
    built.load_ms += (time.perf_counter() - start) * 1e3


def install_memory(plan: RunPlan, engine: Any, components: Mapping[str, Any]) -> Any:
    """The plan's memory mode on the components, last: its hooks wrap every other one, so the weights are in
    place before any of them runs."""
    mode = registry.resolve("memory", plan.memory.name)(settings=plan.memory)
    mode.install(components, engine, plan.stages, plan.model.weighted_roles)
    return mode


def build_pipeline(plan: RunPlan) -> BuiltPipeline:
    """Create the engine, load the components, apply passes and backend: ready to generate."""
    built = load_pipeline(plan)
    optimize(built)
    return built


def generate(plan: RunPlan, engine: Any, components: Mapping[str, Any], memory: Any = None) -> Execution:
    """Run the plan's stages once; `memory`: the installed memory mode, told when each stage starts and ends."""
    ctx = RunContext(
        engine=engine,
        components=components,
        noise=plan.settings.noise,
        pipeline_config=plan.pipeline_config,
        progress=not plan.settings.quiet,
    )
    return execute(plan.stages, plan.settings, ctx, around_stage=memory.around_stage if memory else None)
