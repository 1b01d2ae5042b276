"""Peak resident memory of this process, sampled on a background thread.

`ru_maxrss` cannot be reset, so in a multirun sweep (one process, many jobs) it would report the
largest job for every later job; sampling RSS gives a per-run peak instead.
"""

from __future__ import annotations

import threading

import psutil


class PeakRssSampler:
    """Tracks the maximum RSS between `reset()` and `peak_mb()`, sampling every `interval_s`."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self._process = psutil.Process()
        self._interval = interval_s
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reset(self) -> None:
        self.stop()
        self._peak = self._process.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def peak_mb(self) -> float:
        self._peak = max(self._peak, self._process.memory_info().rss)
        return self._peak / 2**20

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
