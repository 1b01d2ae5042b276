"""Per-step timing without stalling the device.

Synchronizing after every denoise step would expose kernel-launch latency on a GPU (the host could no
longer queue step i+1 while step i runs), so GPU timers record device events and read them once at the
end. On the CPU, work is synchronous and a host clock is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class HostStepTimer:
    """Host clock; `synchronize` (for devices without event timers) waits for queued work at each mark."""

    def __init__(self, synchronize: Callable[[], None] | None = None) -> None:
        self._marks: list[float] = []
        self._synchronize = synchronize

    def mark(self) -> None:
        if self._synchronize is not None:
            self._synchronize()
        self._marks.append(time.perf_counter())

    def durations_ms(self) -> list[float]:
        """Milliseconds between consecutive marks."""
        return [(b - a) * 1e3 for a, b in zip(self._marks, self._marks[1:])]


class CudaEventStepTimer:
    """The same contract with torch.cuda events (read after one synchronize, at the end)."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        self._events: list[Any] = []

    def mark(self) -> None:
        event = self._torch.cuda.Event(enable_timing=True)
        event.record()
        self._events.append(event)

    def durations_ms(self) -> list[float]:
        if self._events:
            self._events[-1].synchronize()
        return [a.elapsed_time(b) for a, b in zip(self._events, self._events[1:])]
