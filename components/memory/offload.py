"""Hooks that move weights between host memory and the device around a component's calls.

`Residency` knows where each managed component is and moves it through the engine, counting every move (on a
CPU run the host is the device: nothing is copied, but the same code runs and the same moves are counted).
`OnDemandHook` brings its component to the device at the call of an entry method; it stays there until the
stage that uses it ends (`Residency.release`), so a denoiser called fifty times per image moves once per run,
as diffusers' enable_model_cpu_offload keeps a model until another one needs the device. `LayerOffloadHook`
(accelerate's cpu_offload) brings one layer's own tensors in for its call and sends them back after it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from runner.hooks import ModelHook

DEVICE, HOST = "device", "host"


class Residency:
    """Where the managed components are ("device" or "host"), and the moves made, per (role, place)."""

    def __init__(self, engine: Any, components: Mapping[str, Any], roles: Iterable[str]) -> None:
        self.engine = engine
        self.modules = {role: components[role] for role in roles}
        self.place = dict.fromkeys(self.modules, DEVICE)  # the engine loads every component onto the device
        self.moves: Counter[tuple[str, str]] = Counter()

    def put(self, role: str, where: str) -> None:
        if self.place[role] == where:
            return
        self.engine.move_module(self.modules[role], where)
        self.place[role] = where
        self.moves[(role, where)] += 1

    def bring(self, role: str, exclusive: bool) -> None:
        """`role` onto the device; exclusive: every other managed component off it first (one at a time)."""
        if self.place[role] == DEVICE:
            return
        if exclusive:
            for other in self.modules:
                if other != role:
                    self.put(other, HOST)
        self.put(role, DEVICE)

    def release(self, roles: Iterable[str]) -> None:
        """The managed ones among `roles` back to host memory (their stage has ended)."""
        for role in roles:
            if role in self.modules:
                self.put(role, HOST)

    def placements(self) -> dict[str, str]:
        return dict(self.place)

    def move_counts(self) -> dict[str, dict[str, int]]:
        return {role: {where: self.moves[(role, where)] for where in (DEVICE, HOST)} for role in self.modules}


class OnDemandHook(ModelHook):
    """Brings its component onto the device when the hooked entry method is called."""

    def __init__(self, residency: Residency, role: str, *, exclusive: bool) -> None:
        self.residency, self.role, self.exclusive = residency, role, exclusive

    def pre_forward(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        self.residency.bring(self.role, self.exclusive)
        return args, kwargs


class LayerMoves:
    """Counts of the layer-by-layer moves (shared by all LayerOffloadHooks of a run)."""

    def __init__(self) -> None:
        self.to_device = 0
        self.to_host = 0


class LayerOffloadHook(ModelHook):
    """One layer's own parameters and buffers on the device only during its call."""

    def __init__(self, engine: Any, moves: LayerMoves) -> None:
        self.engine, self.moves = engine, moves

    def pre_forward(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        self.engine.move_module(module, DEVICE, recurse=False)
        self.moves.to_device += 1
        return args, kwargs

    def post_forward(self, module: Any, output: Any) -> Any:
        self.engine.move_module(module, HOST, recurse=False)
        self.moves.to_host += 1
        return output
