"""What a pass is: a named, ordered, checkable, undoable transformation of one model component.

A pass declares the engines it supports, what it requires of a component (checked on the component
itself, never on the model's name), what it changes, and ordering constraints against other passes.
`check` answers "does this component qualify?" (None, or the reason it does not); `apply` changes the
component in place and records every change in `ctx.changes`, so that `Changes.undo` restores the
component's output bit for bit. Passes are plugins (passes/, found through the registry); this module
and the pass manager are the framework.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from runner.hooks import ModelHook, register_hook, remove_hook

# Verification tolerance per precision, in one place: max |after - before| must not exceed
# TOLERANCE[dtype] * max(1, max |before|) on the same inputs.
TOLERANCE: dict[str, float] = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
_ABSENT = object()


class Changes:
    """The journal of what one pass did to one component; `undo` replays it backwards.

    Passes change components only through it: hooks (`register_hook`), attributes and submodules
    (`set_attribute`), or an explicit inverse (`on_undo`) where keeping the old value would cost memory
    (fused projections are split back instead of keeping the originals alive).
    """

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.hooks: list[str] = []  # "Owner.method:name", for the report

    def register_hook(self, module: Any, name: str, hook: ModelHook, method: str = "forward") -> ModelHook:
        register_hook(module, name, hook, method)
        self.hooks.append(f"{type(module).__name__}.{method}:{name}")
        self._undo.append(lambda: remove_hook(module, name, method))
        return hook

    def set_attribute(self, obj: Any, name: str, value: Any) -> None:
        previous = getattr(obj, name, _ABSENT)
        setattr(obj, name, value)

        def restore() -> None:
            if previous is _ABSENT:
                delattr(obj, name)
            else:
                setattr(obj, name, previous)

        self._undo.append(restore)

    def on_undo(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()
        self.hooks.clear()

    def __bool__(self) -> bool:
        return bool(self._undo)


@dataclass(frozen=True)
class PassOptions:
    """A pass's options: none here; a pass with options declares a subclass as its `options_schema`, the
    defaults written there once (conf/passes/*.yaml set only what differs)."""


@dataclass
class PassContext:
    """What a pass may use: the engine (tensor ops, framework helpers) and the journal of its changes."""

    engine: Any
    changes: Changes = field(default_factory=Changes)


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
    eager_only: bool = False  # True: acts on eager execution only; skipped where a backend runs converted graphs
    # True: runs Python inside the component's call (leaves it midway); refused with backends that compile it
    needs_python_call: bool = False
    # A lossy pass's verification bound, relative to max(1, max |before|), used when above the precision's
    # TOLERANCE (runner/verify.py); None: the precision's alone.
    tolerance: float | None = None

    def __init__(self, options: PassOptions | None = None) -> None:
        self.options: Any = self.options_schema() if options is None else options  # an options_schema instance

    # Passes this one cannot run together with, and why (refused at plan time when both are selected).
    conflicts: Mapping[str, str] = MappingProxyType({})

    @classmethod
    def check_scheduler(cls, class_name: str, config: Mapping[str, Any]) -> str | None:
        """None when the pass can run with this sampler (its class and config); otherwise why not (plan time)."""
        return None

    @classmethod
    def check_backend(cls, name: str, options: Any) -> str | None:
        """None when the pass can run with backend `name` and its options; otherwise why not (plan time)."""
        return None

    @classmethod
    def check_memory(cls, mode: str) -> str | None:
        """None when the pass can run under the memory mode `mode` (memory=...); otherwise why not (plan time)."""
        return None

    @classmethod
    def check_device(cls, device: str) -> str | None:
        """None when the pass can run on `device` ("cpu", "cuda:0", ...); otherwise why not (checked at plan time,
        before any weights load)."""
        return None

    @abc.abstractmethod
    def check(self, component: Any, ctx: PassContext) -> str | None:
        """None when the pass applies to `component`; otherwise why it does not."""

    @abc.abstractmethod
    def apply(self, component: Any, ctx: PassContext) -> dict[str, Any]:
        """Change `component` in place, recording every change in `ctx.changes`; return report details."""

    def stats(self) -> dict[str, Any]:
        """Counters gathered while the transformed components ran (e.g. cache hits)."""
        return {}
