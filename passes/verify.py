"""verify=true: compare a transformed component with its eager copies on the first real call.

The component's first call in the run supplies the inputs; the copy taken before each pass runs on
the same inputs, and consecutive outputs are compared, so a failure names the pass that caused it.
The copies are dropped after the check. Tolerance: passes.base.TOLERANCE for the run's precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from passes.base import TOLERANCE
from runner.errors import VerificationError


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


ENTRY_METHODS = ("decode", "encode")  # called instead of __call__ (the VAE's decode)


class VerifyingProxy:
    def __init__(self, role: str, component: Any, chain: Sequence[tuple[str, Any]], dtype: str, results: list) -> None:
        self._role, self._component, self._chain = role, component, list(chain)
        self._tolerance = TOLERANCE[dtype]
        self._dtype = dtype
        self._results = results

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._component, name)
        if name in ENTRY_METHODS and self._chain and callable(attribute):
            return lambda *args, **kwargs: self._checked_call(name, *args, **kwargs)
        return attribute

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._checked_call(None, *args, **kwargs)

    def _checked_call(self, method: str | None, *args: Any, **kwargs: Any) -> Any:
        call = self._component if method is None else getattr(self._component, method)
        output = call(*args, **kwargs)
        if self._chain:
            chain, self._chain = self._chain, []
            self._check(chain, method, args, kwargs, output)
        return output

    def _check(self, chain: list, method: str | None, args: tuple, kwargs: dict, final: Any) -> None:
        outputs = []
        for _, copy in chain:
            call = copy if method is None else getattr(copy, method)
            outputs.append(to_array(first_tensor(call(*args, **kwargs))))
        outputs.append(to_array(first_tensor(final)))
        for index, (name, _) in enumerate(chain):
            before, after = outputs[index], outputs[index + 1]
            error = float(np.abs(after - before).max())
            bound = self._tolerance * max(1.0, float(np.abs(before).max()))
            self._results.append({"pass": name, "component": self._role, "max_abs_error": error, "bound": bound})
            if not error <= bound:
                earlier = ", ".join(n for n, _ in chain[:index]) or "none"
                raise VerificationError(
                    f"pass {name} changed {self._role}'s output by {error:.3g} (max abs), above the {self._dtype} "
                    f"bound {bound:.3g}; passes applied before it: {earlier}"
                )
