"""verify=true: compare a transformed component with its eager copies on its first real call.

A `verify` hook on the component's entry methods (its call, and `decode` / `encode` where it has them)
lets the first call of the run supply the inputs; the copy taken before each pass runs on the same
inputs, and consecutive outputs are compared, so a failure names the pass that caused it. The copies
are dropped after the check. Tolerance: runner.pass_base.TOLERANCE for the run's precision, or a lossy
pass's own `tolerance` where it is larger (fp8_linear: the check then bounds its error instead of refusing it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import runner.registry as registry
from runner.errors import VerificationError
from runner.hooks import HookRegistry, ModelHook, register_hook
from runner.pass_base import TOLERANCE

HOOK_NAME = "verify"
ENTRY_METHODS = ("forward", "decode", "encode")  # a VAE is called through decode, not __call__


def first_tensor(output: Any) -> Any:
    """The main output of a model call: the tensor itself, or element 0 of a tuple / model output."""
    if hasattr(output, "shape"):
        return output
    return output[0]


def to_array(tensor: Any) -> np.ndarray:
    value = tensor.detach() if hasattr(tensor, "detach") else tensor
    if hasattr(value, "float"):
        value = value.float()
    elif hasattr(value, "cast"):
        value = value.cast("float32")
    if hasattr(value, "cpu"):
        value = value.cpu()
    return np.asarray(value.numpy(), dtype=np.float64)


def tolerance_of(name: str, dtype: str) -> tuple[float, str]:
    """(relative bound, what sets it) for pass `name`: the precision's, or the pass's own when larger.
    A pass that is not registered (a test's) has the precision's."""
    own = registry.resolve("pass", name).tolerance if name in registry.names("pass") else None
    if own is not None and own > TOLERANCE[dtype]:
        return own, f"{name} (lossy)"
    return TOLERANCE[dtype], dtype


def _entry(module: Any, method: str) -> Any:
    return module if method == "forward" else getattr(module, method)


class FirstCallCheck:
    """Runs once, on whichever entry method is called first, then holds nothing."""

    def __init__(self, role: str, chain: Sequence[tuple[str, Any]], dtype: str, results: list) -> None:
        self.role, self.chain, self.dtype, self.results = role, list(chain), dtype, results

    def run(self, method: str, args: tuple, kwargs: dict[str, Any], final: Any) -> None:
        if not self.chain:
            return
        chain, self.chain = self.chain, []
        outputs = [to_array(first_tensor(_entry(copy, method)(*args, **kwargs))) for _, copy in chain]
        outputs.append(to_array(first_tensor(final)))
        for index, (name, _) in enumerate(chain):
            tolerance, source = tolerance_of(name, self.dtype)
            before, after = outputs[index], outputs[index + 1]
            error = float(np.abs(after - before).max())
            bound = tolerance * max(1.0, float(np.abs(before).max()))
            self.results.append({"pass": name, "component": self.role, "max_abs_error": error, "bound": bound})
            if not error <= bound:
                earlier = ", ".join(n for n, _ in chain[:index]) or "none"
                raise VerificationError(
                    f"pass {name} changed {self.role}'s output by {error:.3g} (max abs), above the {source} "
                    f"bound {bound:.3g}; passes applied before it: {earlier}"
                )


class VerificationHook(ModelHook):
    def __init__(self, check: FirstCallCheck, method: str) -> None:
        self.check, self.method = check, method

    def new_forward(self, module: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
        output = call(*args, **kwargs)
        self.check.run(self.method, args, kwargs, output)
        return output


def install_verification(
    components: Mapping[str, Any], snapshots: Mapping[str, list], dtype: str, results: list
) -> None:
    """Components changed by passes check themselves on their first call against their eager copies."""
    for role, chain in snapshots.items():
        component = components[role]
        check = FirstCallCheck(role, chain, dtype, results)
        for method in ENTRY_METHODS:
            if callable(getattr(component, method, None)):
                register_hook(component, HOOK_NAME, VerificationHook(check, method), method)


def pending_copies(components: Mapping[str, Any]) -> dict[str, list[Any]]:
    """role -> the eager copies a component still holds for its first-call check (none once it has run).
    A change made to the component after the passes (set_loras) must be made to these copies too, or the
    check would blame a pass for it."""
    copies: dict[str, list[Any]] = {}
    for role, component in components.items():
        for method in ENTRY_METHODS:
            registry = HookRegistry.find(component, method) if callable(getattr(component, method, None)) else None
            if registry is not None and HOOK_NAME in registry.names():
                chain = registry.get(HOOK_NAME).check.chain
                copies[role] = [copy for _, copy in chain]
                break
    return {role: found for role, found in copies.items() if found}
