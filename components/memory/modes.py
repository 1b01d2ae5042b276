"""The memory modes (conf/memory/*.yaml; registry kind "memory"): what each moves, when, and what it reports.

A mode is installed on the loaded (and optimized) components after the backend, so its hooks are the outermost
ones: the weights are in place before any other hook or the module itself runs. Which components it touches
comes from the stage contracts, never from model names: the text encoders are the weighted components of the
stages that output `prompt_embeds`, the VAE those of the stage that outputs `images`. `remove()` takes every hook
off and puts every component back on the device, as loading left it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from components.memory.offload import HOST, LayerMoves, LayerOffloadHook, OnDemandHook, Residency
from components.memory.vae import VaeDecodeHook, can_slice_and_tile
from runner.errors import ConfigError
from runner.graph import Stage
from runner.hooks import register_hook, remove_hook
from runner.schema import MemorySettings

HOOK = "memory"  # on entry methods (on-demand moves) and on each layer (sequential)
VAE_HOOK = "memory.vae"


def roles_of(stages: Sequence[Stage], weighted: Sequence[str], output: str | None = None) -> list[str]:
    """The weighted components the stages use (only those of stages that output `output`, when given)."""
    found: list[str] = []
    for stage in stages:
        if output is None or output in stage.outputs:
            found += [role for role in stage.components if role in weighted and role not in found]
    return found


def entry_method(module: Any) -> str:
    """How the stages call a component: a VAE through `decode`, the others through their call."""
    return "decode" if callable(getattr(module, "decode", None)) else "forward"


class KeepResident:
    """memory=none: every component stays on the device; the VAE options (slicing, tiling) still apply."""

    exclusive = False  # on-demand moves take the other managed components off the device first

    def __init__(self, *, settings: MemorySettings) -> None:
        self.settings = settings
        self.residency: Residency | None = None
        self.vae_hooks: dict[str, VaeDecodeHook] = {}
        self.stage_roles: dict[str, list[str]] = {}
        self._hooked: list[tuple[Any, str, str]] = []  # (module, hook name, method), to remove them
        self._first_stage: str | None = None

    # ------------------------------------------------------------------ what it touches (checked at plan time)
    @classmethod
    def roles_changed(cls, settings: MemorySettings, stages: Sequence[Stage], weighted: Sequence[str]) -> list[str]:
        """The components whose weights this mode moves or whose calls it re-routes."""
        decoding = settings.vae_slicing or settings.vae_tiling
        return roles_of(stages, weighted, "images") if decoding else []

    def managed_roles(self, stages: Sequence[Stage], weighted: Sequence[str]) -> list[str]:
        """The components it moves between host and device."""
        return []

    # ------------------------------------------------------------------ install / remove
    def install(self, components: Mapping[str, Any], engine: Any, stages: Sequence[Stage],
                weighted: Sequence[str]) -> None:  # fmt: skip
        self.stage_roles = {stage.name: roles_of([stage], weighted) for stage in stages}
        self._first_stage = stages[0].name if stages else None
        s = self.settings
        if s.vae_slicing or s.vae_tiling:
            for role in roles_of(stages, weighted, "images"):
                if not can_slice_and_tile(components[role]):
                    kind = type(components[role]).__name__
                    raise ConfigError(f"memory={s.name}: {role} ({kind}) cannot decode sliced or tiled; set "
                                      "memory.vae_slicing=false memory.vae_tiling=false")  # fmt: skip
                hook = VaeDecodeHook(slicing=s.vae_slicing, tiling=s.vae_tiling, threshold=s.tile_threshold,
                                     tile_size=s.tile_size, overlap=s.tile_overlap)  # fmt: skip
                self.vae_hooks[role] = self._register(components[role], VAE_HOOK, hook, "decode")
        managed = self.managed_roles(stages, weighted)
        if managed:
            self.residency = Residency(engine, components, managed)
            self._install_moves(components, engine, managed)

    def _install_moves(self, components: Mapping[str, Any], engine: Any, managed: list[str]) -> None:
        for role in managed:
            hook = OnDemandHook(self.residency, role, exclusive=self.exclusive)
            self._register(components[role], HOOK, hook, entry_method(components[role]))

    def _register(self, module: Any, name: str, hook: Any, method: str) -> Any:
        register_hook(module, name, hook, method=method)
        self._hooked.append((module, name, method))
        return hook

    def remove(self) -> None:
        """Every hook off, every moved component back on the device."""
        for module, name, method in reversed(self._hooked):
            remove_hook(module, name, method)
        self._hooked.clear()
        self.vae_hooks.clear()
        if self.residency is not None:
            for role in self.residency.modules:
                self.residency.put(role, "device")
            self.residency = None

    # ------------------------------------------------------------------ during a run
    @contextlib.contextmanager
    def around_stage(self, name: str) -> Iterator[None]:
        """Entered by the executor around each stage; what a stage used goes back to host when it ends."""
        if name == self._first_stage:
            self._start_run()
        yield
        if self.residency is not None:
            self.residency.release(self.released_after(name))

    def released_after(self, stage: str) -> list[str]:
        return self.stage_roles.get(stage, [])

    def _start_run(self) -> None:
        if self.residency is not None:
            self.residency.moves.clear()
        for hook in self.vae_hooks.values():
            hook.calls = hook.sliced = hook.tiled = 0

    def report(self) -> dict[str, Any]:
        """report.json's `memory` section: the mode, its options, and what the last run did."""
        s = self.settings
        out: dict[str, Any] = {"mode": s.name, "vae_slicing": s.vae_slicing, "vae_tiling": s.vae_tiling}
        if s.vae_tiling:
            out["tile"] = {"threshold": s.tile_threshold, "size": s.tile_size, "overlap": s.tile_overlap}
        if self.vae_hooks:
            out["decode"] = {role: hook.report() for role, hook in self.vae_hooks.items()}
        if self.residency is not None:
            out["placement_after_run"] = self.residency.placements()
            out["moves"] = self.residency.move_counts()
        return out


class Lean(KeepResident):
    """memory=lean: the text encoders leave the device when the prompt is encoded (and come back at the next
    run's encoding); the YAML switches VAE slicing and tiling on."""

    @classmethod
    def roles_changed(cls, settings: MemorySettings, stages: Sequence[Stage], weighted: Sequence[str]) -> list[str]:
        found = roles_of(stages, weighted, "prompt_embeds")
        return found + [r for r in super().roles_changed(settings, stages, weighted) if r not in found]

    def managed_roles(self, stages: Sequence[Stage], weighted: Sequence[str]) -> list[str]:
        return roles_of(stages, weighted, "prompt_embeds")


class ModelOffload(KeepResident):
    """memory=offload: a component is on the device from its first call in a stage until that stage ends, one
    component at a time; all start in host memory."""

    exclusive = True

    @classmethod
    def roles_changed(cls, settings: MemorySettings, stages: Sequence[Stage], weighted: Sequence[str]) -> list[str]:
        return roles_of(stages, weighted)

    def managed_roles(self, stages: Sequence[Stage], weighted: Sequence[str]) -> list[str]:
        return roles_of(stages, weighted)

    def _install_moves(self, components: Mapping[str, Any], engine: Any, managed: list[str]) -> None:
        super()._install_moves(components, engine, managed)
        self.residency.release(managed)  # the device starts empty
        self.residency.moves.clear()


class SequentialOffload(ModelOffload):
    """memory=sequential: every layer's own weights are on the device only during its call; the components
    themselves live in host memory."""

    def __init__(self, *, settings: MemorySettings) -> None:
        super().__init__(settings=settings)
        self.layer_moves = LayerMoves()
        self.layer_hooks = 0

    def _install_moves(self, components: Mapping[str, Any], engine: Any, managed: list[str]) -> None:
        for role in managed:
            self.residency.put(role, HOST)
            for layer in engine.tensor_holders(components[role]):
                self._register(layer, HOOK, LayerOffloadHook(engine, self.layer_moves), "forward")
                self.layer_hooks += 1
        self.residency.moves.clear()

    def released_after(self, stage: str) -> list[str]:
        return []  # the layers went back themselves

    def _start_run(self) -> None:
        super()._start_run()
        self.layer_moves.to_device = self.layer_moves.to_host = 0

    def report(self) -> dict[str, Any]:
        out = super().report()
        out.pop("moves", None)
        moves = self.layer_moves
        out["layers"] = {"hooked": self.layer_hooks, "to_device": moves.to_device, "to_host": moves.to_host}
        return out
