"""Stages with declared contracts, and the check that a stage list is runnable.

A model YAML lists its stages; each names a registered stage type plus parameters. Every stage
declares which state entries it reads (`inputs`), which it writes (`outputs`) and which model
components it uses (`components`). `build_graph` instantiates the stages and walks the list once,
so a broken config fails in milliseconds, before any weights load, naming the missing piece.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import runner.registry as registry
from runner.errors import ConfigError
from runner.schema import StageSpec

# What the runner puts into the state before the first stage runs.
RUN_INPUTS: tuple[str, ...] = (
    "prompts",
    "negative_prompts",
    "images_per_prompt",
    "height",
    "width",
    "steps",
    "guidance",
    "guidance_rescale",
    "seed",
    "seed_rows",
)
# What the last stage must have produced: uint8 images, [N, H, W, 3].
RUN_OUTPUTS: tuple[str, ...] = ("images",)


@dataclass
class RunContext:
    """What stages may use besides the state: the engine, the loaded components, run options."""

    engine: Any
    components: Mapping[str, Any]
    generator: Any = None
    noise: str = "engine"
    pipeline_config: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True
    step_times_ms: list[float] = field(default_factory=list)
    # The run's guidance method (components/stages/guidance.py): the one a stage applies, set by the
    # executor, so that stages before it (text encoding) can ask it what it needs. None: no stage guides.
    guidance: Any = None


class Stage(abc.ABC):
    """One step of a pipeline. Subclasses set the contract in `__init__` from their parameters."""

    guidance: Any = None  # the guidance method this stage applies (the denoise loop's), if any

    def __init__(self, *, name: str) -> None:
        self.name = name
        self.inputs: tuple[str, ...] = ()
        self.outputs: tuple[str, ...] = ()
        self.components: tuple[str, ...] = ()

    @abc.abstractmethod
    def run(self, state: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        """Read `inputs` from `state`, return a dict holding exactly `outputs`."""

    def check_run(self, values: Mapping[str, Any], where: str) -> str | None:
        """Why this stage cannot honour these run values (the initial state), as a one-line message naming
        `where` (e.g. "model=sd15"), or None. Asked before any weights load; by default everything goes."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def make_part(kind: str, spec: Any, where: str) -> Any:
    """Build a registered object from `type` plus keyword parameters (a string is a bare type)."""
    params = {"type": spec} if isinstance(spec, str) else dict(spec or {})
    ptype = params.pop("type", None)
    if not ptype:
        raise ConfigError(f"{where}: {kind} needs a 'type'; registered: {', '.join(registry.names(kind))}")
    cls = registry.resolve(kind, ptype)
    _check_params(cls, params, f"{where}: {kind} {ptype!r}")
    return cls(**params)


def _check_params(cls: type, params: Mapping[str, Any], where: str) -> None:
    sig = inspect.signature(cls.__init__)
    keyword_only = {n: p for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and n != "name"}
    unknown = sorted(set(params) - set(keyword_only))
    if unknown:
        accepted = ", ".join(sorted(keyword_only)) or "nothing"
        raise ConfigError(f"{where} has no parameter {unknown[0]!r}; it accepts: {accepted}")
    missing = [n for n, p in keyword_only.items() if p.default is p.empty and n not in params]
    if missing:
        raise ConfigError(f"{where} needs parameter {missing[0]!r}")


def build_graph(
    specs: Sequence[StageSpec],
    available_components: Iterable[str],
    initial: Iterable[str] = RUN_INPUTS,
    final: Iterable[str] = RUN_OUTPUTS,
) -> list[Stage]:
    """Instantiate the stages and check their contracts in order."""
    stages = []
    for spec in specs:
        cls = registry.resolve("stage", spec.type)
        where = f"stage {spec.name!r} ({spec.type})"
        _check_params(cls, spec.params, where)
        stages.append(cls(name=spec.name, **spec.params))
    check_contracts(stages, available_components, initial, final)
    return stages


def check_contracts(
    stages: Sequence[Stage],
    available_components: Iterable[str],
    initial: Iterable[str] = RUN_INPUTS,
    final: Iterable[str] = RUN_OUTPUTS,
) -> None:
    """Walk the stages in order; raise ConfigError at the first unmet input or component."""
    have = list(initial)
    roles = set(available_components)
    seen_names = set()
    for stage in stages:
        if stage.name in seen_names:
            raise ConfigError(f"two stages are named {stage.name!r}; stage names must be unique")
        seen_names.add(stage.name)
        for role in stage.components:
            if role not in roles:
                raise ConfigError(
                    f"stage {stage.name!r} needs component {role!r}, which the model does not define "
                    f"(components: {', '.join(sorted(roles))})"
                )
        for key in stage.inputs:
            if key not in have:
                raise ConfigError(
                    f"stage {stage.name!r} needs input {key!r}, which no earlier stage produces "
                    f"(available: {', '.join(have)})"
                )
        have.extend(k for k in stage.outputs if k not in have)
    for key in final:
        if key not in have:
            raise ConfigError(f"the stage list never produces {key!r}; the last stage must output it")


def check_run_values(stages: Sequence[Stage], values: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError with the first stage's objection to the run values (the initial state)."""
    for stage in stages:
        problem = stage.check_run(values, where)
        if problem:
            raise ConfigError(problem)


def run_guidance(stages: Sequence[Stage]) -> Any:
    """The guidance method of a stage list: the first one a stage applies, or None."""
    return next((stage.guidance for stage in stages if stage.guidance is not None), None)
