"""The shared-product cache behind fused projections (engine-neutral; see components/*/fusion.py).

The first stand-in called with an input runs the fused product and splits it; the others, called with
the same input object, take their slices. Once every slice was taken the activation is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class SharedProduct:
    def __init__(self, parts: int) -> None:
        self.parts = parts
        self._cache: dict[str, Any] = {}

    def take(self, x: Any, index: int, compute: Callable[[Any], list[Any]]) -> Any:
        cache = self._cache
        if cache.get("input") is not x:
            cache.update(input=x, outputs=compute(x), taken=0)
        result = cache["outputs"][index]
        cache["taken"] += 1
        if cache["taken"] == self.parts:
            cache.clear()
        return result
