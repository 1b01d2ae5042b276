"""The pass manager: resolve names, order them, apply them, verify them, report what happened.

Resolution and ordering happen at config time, before any weights load (unknown names and ordering
cycles are ConfigErrors). At build time each pass is offered every model component; a component that
fails the pass's capability check is skipped, and each pass logs one line saying where it applied and
why it skipped the rest. A failing pass is reported with the passes applied before it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from passes.base import Pass, PassContext
from passes.verify import VerifyingProxy
from runner import registry
from runner.errors import ConfigError, RunnerError
from runner.typed import typed

log = logging.getLogger(__name__)
DEFAULT_MARKER = "_default"


class PassError(RunnerError):
    exit_code = 1


@dataclass
class PassPlan:
    passes: list[Pass]
    wants_defaults: bool = False


@dataclass
class PassReport:
    order: list[str] = field(default_factory=list)
    applied: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    verified: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, passes: list[Pass]) -> dict[str, Any]:
        return {
            "order": self.order,
            "applied": sorted({entry["pass"] for entry in self.applied}, key=self.order.index),
            "details": self.applied,
            "skipped": self.skipped,
            "verified": self.verified,
            "stats": {p.name: p.stats() for p in passes if p.stats()},
        }


def plan_passes(selection: Mapping[str, Any] | None, engine: str) -> PassPlan:
    """Turn the `passes` config node (pass name -> options) into ordered pass objects for `engine`."""
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
    instances = {}
    for name, options in chosen.items():
        cls = registry.resolve("pass", name)
        instances[name] = cls(typed(cls.options_schema, options, f"passes.{name}", owner=f"pass {name}"))
    return PassPlan(passes=[instances[n] for n in order_passes(instances)], wants_defaults=wants_defaults)


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


def _is_module(component: Any) -> bool:
    return hasattr(component, "parameters") and callable(component)


def apply_passes(
    plan: PassPlan, components: dict[str, Any], engine: Any, verify: bool
) -> tuple[dict[str, Any], PassReport, dict[str, list]]:
    """Apply the planned passes in order. With verify, keep an eager copy of each component before
    each pass that changes it (returned as role -> [(pass name, copy)]) for `wrap_verification`."""
    report = PassReport(order=[p.name for p in plan.passes])
    snapshots: dict[str, list] = {}
    ctx = PassContext(engine=engine)
    done: list[str] = []
    for p in plan.passes:
        if engine.name not in p.engines:
            reason = f"engine {engine.name} is not one of {', '.join(p.engines)}"
            report.skipped.append({"pass": p.name, "component": "*", "reason": reason})
            log.info("pass %s skipped: %s", p.name, reason)
            continue
        applied, skipped = [], []
        for role, component in list(components.items()):
            if not _is_module(component):
                continue
            reason = p.check(component, ctx)
            if reason:
                skipped.append(f"{role} ({reason})")
                report.skipped.append({"pass": p.name, "component": role, "reason": reason})
                continue
            before = copy.deepcopy(component) if verify and p.verifiable else None
            try:
                components[role], details = p.apply(component, ctx)
            except Exception as exc:  # noqa: BLE001 - any failure is reported with its context
                raise PassError(
                    f"pass {p.name} failed on component {role!r}: {type(exc).__name__}: {exc}; "
                    f"passes applied before it: {', '.join(done) or 'none'}"
                ) from exc
            if before is not None:
                snapshots.setdefault(role, []).append((p.name, before))
            applied.append(role)
            report.applied.append({"pass": p.name, "component": role, **details})
        done.append(p.name)
        if applied:
            rest = f"; not to {'; '.join(skipped)}" if skipped else ""
            log.info("pass %s applied to %s%s", p.name, ", ".join(applied), rest)
        else:
            log.info("pass %s skipped: no component qualifies: %s", p.name, "; ".join(skipped) or "no components")
    return components, report, snapshots


def wrap_verification(
    components: dict[str, Any], snapshots: Mapping[str, list], dtype: str, report: PassReport
) -> dict[str, Any]:
    """Components changed by passes check themselves on their first call against their eager copies."""
    wrapped = dict(components)
    for role, chain in snapshots.items():
        wrapped[role] = VerifyingProxy(role, components[role], chain, dtype, report.verified)
    return wrapped
