"""step_cache: skip a denoiser call when its first block says the step changes little (lossy).

Requires: a denoiser whose first block is `down_blocks[0]` (a UNet) or `transformer_blocks[0]` (SD3, Flux).
Changes: every denoiser call runs its first block; the relative L1 change of that block's output from the
previous call's is added up (TeaCache's rule, on the first block's output as first-block caches measure it),
and while the sum stays below `threshold` the rest of the network is skipped and the last computed output is
returned again. A call that runs to the end resets the sum. A call whose timestep is above the previous
call's, or whose input shape differs, starts over (a new generation); a call at the same timestep as the
previous one (Heun's second evaluation, or a one-step generation run again) always runs in full. The report
counts the calls and the skipped ones.

Lossy: the skipped steps reuse an older prediction, so it is never in a `default` list; its cost is measured
with the quality metric (adherence and PSNR against the uncached run: `mode=bench mode.quality=true`,
docs/benchmarks.md). Eager only: the skip leaves the network midway, which a converted graph cannot do;
backends that compile the denoiser (inductor, paddle_jit, paddle_inference) refuse it before loading.
The first call always runs in full and computes what the original does, which `verify=true` checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.errors import ConfigError
from runner.hooks import ModelHook
from runner.pass_base import Pass, PassContext, PassOptions

FIRST_BLOCK_LISTS = ("down_blocks", "transformer_blocks")  # UNet; SD3 and Flux transformers


class _Skip(Exception):  # noqa: N818 - control flow, not an error
    """Raised by the first block's hook to leave the denoiser's forward early."""


def _tensors(output: Any) -> list[Any]:
    """The tensors in a block's output (a tensor, or nested tuples of them)."""
    if hasattr(output, "shape"):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []


def _timestep(args: tuple, kwargs: dict[str, Any]) -> float | None:
    value = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if value is None:
        return None
    if hasattr(value, "shape") and len(value.shape) > 0:
        value = value.reshape([-1])[0]
    return float(value)


class StepCacheState:
    """What the two hooks share: the last computed call's first-block output and result, and counters."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.calls = self.skipped = 0
        self.reset()

    def reset(self) -> None:
        self.reference: list[Any] | None = None  # first-block output of the last computed call
        self.output: Any = None  # that call's result
        self.accumulated = 0.0
        self.timestep: float | None = None
        self.shape: tuple | None = None
        self.in_call = False
        self.may_skip = False


class DenoiserHook(ModelHook):
    """On the denoiser's call: returns the last result when the first block's hook asks to skip."""

    def __init__(self, state: StepCacheState) -> None:
        self.state = state

    def new_forward(self, module: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        sample = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
        shape = tuple(sample.shape) if sample is not None else None
        timestep = _timestep(args, kwargs)
        if shape != state.shape or timestep is None or state.timestep is None or timestep > state.timestep:
            state.reset()
        state.may_skip = state.timestep is not None and timestep < state.timestep
        state.shape, state.timestep = shape, timestep
        state.calls += 1
        state.in_call = True
        try:
            output = call(*args, **kwargs)
        except _Skip:
            state.skipped += 1
            return state.output
        finally:
            state.in_call = False
        state.output = output
        return output


class FirstBlockHook(ModelHook):
    """On the first block: adds up the change from the previous call and decides whether to skip."""

    def __init__(self, state: StepCacheState) -> None:
        self.state = state

    def post_forward(self, module: Any, output: Any) -> Any:
        state = self.state
        if not state.in_call:
            return output
        current = _tensors(output)
        reference, state.reference = state.reference, current
        if reference is None or state.output is None or len(reference) != len(current):
            return output
        change = sum(float((a - b).abs().mean()) for a, b in zip(current, reference))
        scale = sum(float(b.abs().mean()) for b in reference)
        state.accumulated += change / max(scale, 1e-12)
        if state.may_skip and state.accumulated < state.threshold:
            raise _Skip
        state.accumulated = 0.0
        return output


def first_block(component: Any) -> Any | None:
    for name in FIRST_BLOCK_LISTS:
        blocks = getattr(component, name, None)
        if blocks is not None and len(blocks) > 0:
            return blocks[0]
    return None


@dataclass(frozen=True)
class StepCacheOptions(PassOptions):
    # Skip while the first block's accumulated relative L1 change stays below this (0: never skip).
    # Larger skips more steps and costs more quality: docs/benchmarks.md measures 0.05-0.2 (0.05: 40% of the
    # calls skipped at 45 dB on shapes_sd15; 0.2: 77% at 31 dB, and adherence starts to drop).
    threshold: float = 0.05


class StepCache(Pass):
    name = "step_cache"
    engines = ("paddle", "torch")
    requires = "a denoiser with down_blocks (UNet) or transformer_blocks (SD3, Flux)"
    changes = "denoiser calls skipped while the first block's output changes little; skipped calls reported"
    defaults = ()  # lossy: never in a default list
    eager_only = True
    needs_python_call = True  # the skip leaves the denoiser's call midway: no compiled denoiser
    options_schema = StepCacheOptions

    def __init__(self, options: StepCacheOptions | None = None) -> None:
        super().__init__(options)
        if self.options.threshold < 0:
            raise ConfigError(f"passes.step_cache.threshold={self.options.threshold} must be >= 0")
        self.states: list[StepCacheState] = []

    def check(self, component: Any, ctx: PassContext) -> str | None:
        if first_block(component) is None:
            return "not a denoiser (no down_blocks or transformer_blocks)"
        return None

    def apply(self, component: Any, ctx: PassContext) -> dict[str, Any]:
        state = StepCacheState(self.options.threshold)
        ctx.changes.register_hook(component, self.name, DenoiserHook(state))
        ctx.changes.register_hook(first_block(component), self.name, FirstBlockHook(state))
        self.states.append(state)
        return {"threshold": self.options.threshold}

    def stats(self) -> dict[str, Any]:
        if not self.states:
            return {}
        return {"calls": sum(s.calls for s in self.states), "skipped": sum(s.skipped for s in self.states)}
