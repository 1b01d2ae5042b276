"""What a pass is: a named, ordered, checkable transformation of one model component.

A pass declares the engines it supports, what it requires of a component (checked on the component
itself, never on the model's name), what it changes, and ordering constraints against other passes.
`check` answers "does this component qualify?" (None, or the reason it does not); `apply` transforms
the component and returns the transformed one plus details for the report.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

# Verification tolerance per precision, in one place: max |after - before| must not exceed
# TOLERANCE[dtype] * max(1, max |before|) on the same inputs.
TOLERANCE: dict[str, float] = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


@dataclass
class PassContext:
    """What a pass may use: the engine (tensor ops, framework hooks), the run's device and dtype."""

    engine: Any
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassOptions:
    """A pass's options: none here; a pass with options declares a subclass as its `options_schema`, the
    defaults written there once (conf/passes/*.yaml set only what differs)."""


class Pass(abc.ABC):
    name: str = ""
    options_schema: type[PassOptions] = PassOptions
    engines: tuple[str, ...] = ()
    requires: str = ""  # the capability the check looks for, in words
    changes: str = ""  # what apply does, in words
    after: tuple[str, ...] = ()  # when both are enabled, run after these
    before: tuple[str, ...] = ()  # when both are enabled, run before these
    defaults: tuple[str, ...] = ()  # engines whose `passes=default` list holds this pass (measured)
    verifiable: bool = True  # False: the transformed component is not called like the original

    def __init__(self, options: PassOptions | None = None) -> None:
        self.options: Any = self.options_schema() if options is None else options  # an options_schema instance

    @abc.abstractmethod
    def check(self, component: Any, ctx: PassContext) -> str | None:
        """None when the pass applies to `component`; otherwise why it does not."""

    @abc.abstractmethod
    def apply(self, component: Any, ctx: PassContext) -> tuple[Any, dict[str, Any]]:
        """Transform `component`; return (the component to use from now on, details for the report)."""

    def stats(self) -> dict[str, Any]:
        """Counters gathered while the transformed components ran (e.g. cache hits)."""
        return {}
