"""The pass manager: resolve names, order them, apply them, verify them, undo them, report them.

Resolution, option checks and ordering happen at plan time, before any weights load (unknown names,
bad options and ordering cycles are ConfigErrors); the plan keeps only the validated choices. At build
time each pass is instantiated and offered every model component; a component that fails the pass's
capability check is skipped, and each pass logs one line saying where it applied and why it skipped
the rest. A failing pass is reported with the passes applied before it. Every application keeps its
journal of changes, so any pass can be removed again.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import runner.registry as registry
from runner.errors import CapabilityError, ConfigError, PassError
from runner.pass_base import Changes, Pass, PassContext, PassOptions
from runner.tables import markdown
from runner.typed import typed

log = logging.getLogger(__name__)
DEFAULT_MARKER = "_default"


@dataclass(frozen=True)
class PassChoice:
    """One validated pass selection: its registered name and options."""

    name: str
    options: PassOptions  # an instance of the pass's options_schema, validated


@dataclass
class Application:
    """One pass applied to one component, with the journal that undoes it."""

    pass_name: str
    role: str
    changes: Changes
    details: dict[str, Any]


@dataclass
class PassReport:
    order: list[str] = field(default_factory=list)
    applications: list[Application] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    verified: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, passes: Sequence[Pass]) -> dict[str, Any]:
        details = [{"pass": a.pass_name, "component": a.role, **a.details} for a in self.applications]
        return {
            "order": self.order,
            "applied": sorted({a.pass_name for a in self.applications}, key=self.order.index),
            "details": details,
            "skipped": self.skipped,
            "verified": self.verified,
            "stats": {p.name: p.stats() for p in passes if p.stats()},
        }

    def passes_on(self, role: str) -> list[str]:
        return [a.pass_name for a in self.applications if a.role == role]


@dataclass
class PassOutcome:
    """What applying the passes produced: the report, and (with verify) eager copies taken before each
    pass that changed a component, as role -> [(pass name, copy)]."""

    report: PassReport
    snapshots: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)


# ----------------------------------------------------------------- plan time
def plan_passes(selection: Mapping[str, Any] | None, engine: str) -> tuple[PassChoice, ...]:
    """Turn the `passes` config node (pass name -> options) into ordered, validated choices for `engine`."""
    selection = dict(selection or {})
    wants_defaults = bool(selection.pop(DEFAULT_MARKER, False))
    chosen: dict[str, dict[str, Any]] = {}
    if wants_defaults:
        for name in registry.names("pass"):
            if engine in registry.resolve("pass", name).defaults:
                chosen[name] = {}
    for name, options in selection.items():
        if name not in registry.names("pass"):
            raise ConfigError(f"unknown pass {name!r}; registered passes: {', '.join(registry.names('pass'))}")
        chosen[name] = dict(options or {})
    choices = {}
    for name, options in chosen.items():
        schema = registry.resolve("pass", name).options_schema
        choices[name] = PassChoice(name, typed(schema, options, f"passes.{name}", owner=f"pass {name}"))
    instances = {name: instantiate(choice) for name, choice in choices.items()}  # checks values too
    for name, instance in instances.items():
        for other, why in instance.conflicts.items():
            if other in instances and engine in instance.engines and engine in instances[other].engines:
                raise ConfigError(f"passes {name} and {other} cannot run together: {why}")
    return tuple(choices[name] for name in order_passes(instances))


def _running_on(choices: Sequence[PassChoice], engine: str) -> list[type[Pass]]:
    """The chosen passes that act on `engine` (the others are skipped at build time, so nothing of theirs is
    checked, nor their engine imported)."""
    classes = [registry.resolve("pass", choice.name) for choice in choices]
    return [cls for cls in classes if engine in cls.engines]


def check_passes_with_backend(choices: Sequence[PassChoice], backend: Any) -> None:
    """A pass that runs Python inside a component's call cannot act on a component the backend compiles
    (`backend.compile` roles: inductor, paddle_jit, paddle_inference): refused before any weights load."""
    compiled = list(getattr(backend.options, "compile", None) or [])
    if not compiled:
        return
    for cls in _running_on(choices, backend.engine):
        if cls.needs_python_call:
            raise ConfigError(
                f"pass {cls.name} cannot run with backend={backend.name}: it compiles the calls of "
                f"backend.compile={compiled} and {cls.name} leaves such a call midway in Python; use an eager "
                "backend (torch, paddle) or backend.compile=[]"
            )


def check_passes_against_run(
    choices: Sequence[PassChoice],
    backend: Any,
    scheduler: tuple[str, Mapping[str, Any]],
    memory_mode: str,
    device: str | None,
) -> None:
    """Each pass that acts on the run's engine is asked about the backend's options, the sampler (class name,
    config), the memory mode and, when known, the device (`Pass.check_*`: cuda_graphs wants a graph-safe step
    and a CUDA device, fp8_linear fp8 matrix units); the first refusal stops the run before any weights load."""
    class_name, config = scheduler
    for cls in _running_on(choices, backend.engine):
        for reason, what in (
            (cls.check_backend(backend.name, backend.options), f"backend={backend.name}"),
            (cls.check_scheduler(class_name, config), "this sampler"),
            (cls.check_memory(memory_mode), f"memory={memory_mode}"),
        ):
            if reason:
                raise ConfigError(f"pass {cls.name} cannot run with {what}: {reason}")
        reason = cls.check_device(device) if device is not None else None
        if reason:
            raise CapabilityError(reason)


def instantiate(choice: PassChoice) -> Pass:
    return registry.resolve("pass", choice.name)(choice.options)


def order_passes(passes: Mapping[str, Pass]) -> list[str]:
    """Topological order of the chosen passes under their after/before constraints (stable by name)."""
    edges: dict[str, set[str]] = {name: set() for name in passes}  # name -> passes that must come first
    for name, p in passes.items():
        edges[name] |= {a for a in p.after if a in passes}
        for b in p.before:
            if b in passes:
                edges[b].add(name)
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise ConfigError(f"passes {' -> '.join(cycle)} form a cycle in their ordering constraints")
        state[name] = 1
        for first in sorted(edges[name]):
            visit(first, [*path, name])
        state[name] = 2
        order.append(name)

    for name in sorted(passes):
        visit(name, [])
    return order


# ----------------------------------------------------------------- build time
def _is_module(component: Any) -> bool:
    return hasattr(component, "parameters") and callable(component)


def apply_passes(
    passes: Sequence[Pass], components: Mapping[str, Any], engine: Any, verify: bool, eager: bool = True
) -> PassOutcome:
    """Apply `passes` in order to the components, in place. With verify, keep an eager copy of each
    component before each pass that changes it (for `runner.verify.install_verification`).
    eager=False (the backend runs converted graphs): passes that only act on eager execution are skipped."""
    outcome = PassOutcome(report=PassReport(order=[p.name for p in passes]))
    report = outcome.report
    done: list[str] = []
    for p in passes:
        if engine.name not in p.engines:
            reason = f"engine {engine.name} is not one of {', '.join(p.engines)}"
            report.skipped.append({"pass": p.name, "component": "*", "reason": reason})
            log.info("pass %s skipped: %s", p.name, reason)
            continue
        if p.eager_only and not eager:
            reason = "the backend runs converted graphs; this pass acts on eager execution only"
            report.skipped.append({"pass": p.name, "component": "*", "reason": reason})
            log.info("pass %s skipped: %s", p.name, reason)
            continue
        applied, skipped = [], []
        for role, component in components.items():
            if not _is_module(component):
                continue
            ctx = PassContext(engine=engine)
            reason = p.check(component, ctx)
            if reason:
                skipped.append(f"{role} ({reason})")
                report.skipped.append({"pass": p.name, "component": role, "reason": reason})
                continue
            before = copy.deepcopy(component) if verify and p.verifiable else None
            try:
                details = p.apply(component, ctx)
            except Exception as exc:  # noqa: BLE001 - any failure is reported with its context
                ctx.changes.undo()  # leave the component as the passes before this one made it
                raise PassError(
                    f"pass {p.name} failed on component {role!r}: {type(exc).__name__}: {exc}; "
                    f"passes applied before it: {', '.join(done) or 'none'}"
                ) from exc
            if before is not None:
                outcome.snapshots.setdefault(role, []).append((p.name, before))
            applied.append(role)
            report.applications.append(Application(p.name, role, ctx.changes, details))
        done.append(p.name)
        if applied:
            rest = f"; not to {'; '.join(skipped)}" if skipped else ""
            log.info("pass %s applied to %s%s", p.name, ", ".join(applied), rest)
        else:
            log.info("pass %s skipped: no component qualifies: %s", p.name, "; ".join(skipped) or "no components")
    return outcome


def remove_passes(report: PassReport, names: Sequence[str] | None = None) -> list[str]:
    """Undo the named passes (all when None), newest application first; return the names removed.

    Undoing runs in reverse order of application, so each journal finds the component as its pass
    left it when the passes applied after it are removed too (pass them all, or only passes that
    touch different parts of a component).
    """
    removed = []
    for application in reversed(list(report.applications)):
        if names is None or application.pass_name in names:
            application.changes.undo()
            report.applications.remove(application)
            removed.append(application.pass_name)
    return list(dict.fromkeys(reversed(removed)))


# ----------------------------------------------------------------- listing
def pass_table() -> str:
    """`python -m runner passes.list`: every registered pass, its engines, what it requires and changes."""
    rows = []
    for name in registry.names("pass"):
        cls = registry.resolve("pass", name)
        order = "; ".join(
            part for part in (
                f"after {', '.join(cls.after)}" if cls.after else "",
                f"before {', '.join(cls.before)}" if cls.before else "",
            ) if part
        )  # fmt: skip
        rows.append([name, ", ".join(cls.engines), ", ".join(cls.defaults) or "none", cls.requires, cls.changes,
                     order or "-"])  # fmt: skip
    headers = ["pass", "engines", "in `default` for", "requires", "changes", "order"]
    return (
        markdown(headers, rows)
        + "\n\nSelect with passes=none|default|all or passes=[name,name,...]; verify=true checks them."
    )
