"""Dynamic request batching: one worker thread takes the oldest queued request, waits up to `max_wait_ms`
after its arrival for others that can share its denoise batch (equal `Pipeline.batch_key`), up to `max_batch`
images, and runs them as one `generate_batch`. Every request keeps its own seed's noise, so merging never
changes an image (up to the kernels' batch-size rounding).

Faults stay with their requests: a failed batch fails only the requests in it; a merged batch that runs out
of memory is retried one request at a time. A request cancelled before its batch starts (the client went
away, or it timed out) is dropped without running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from runner.schema import RunSettings
from runner.serve.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The bounded queue holds `max_queue` requests already."""


class ClosedError(Exception):
    """The batcher no longer takes requests (the service is draining or stopped)."""


class BatchPipeline(Protocol):
    """What the batcher needs of runner.api.Pipeline."""

    def batch_key(self, settings: RunSettings) -> Hashable | None: ...

    def generate_batch(self, requests: Sequence[RunSettings]) -> list[Any]: ...


@dataclass(eq=False)
class Job:
    settings: RunSettings
    key: Hashable | None
    enqueued: float  # time.monotonic() at submission
    future: Future = field(default_factory=Future)

    @property
    def images(self) -> int:
        return self.settings.num_images


def is_out_of_memory(exc: BaseException) -> bool:
    """Device or host out-of-memory, as the engines raise it (torch.OutOfMemoryError, Paddle's
    ResourceExhaustedError / MemoryError, 'CUDA out of memory' RuntimeErrors)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__.lower()
    text = str(exc).lower()
    return "outofmemory" in name or "resourceexhausted" in name or "out of memory" in text


class Batcher:
    def __init__(
        self, pipeline: BatchPipeline, *, max_batch: int, max_wait_ms: float, max_queue: int, metrics: Metrics
    ) -> None:
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1e3
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running = 0  # jobs in the batch being generated
        self._collecting: list[Job] = []  # jobs taken from the queue while the batch waits for more
        self._closed = False
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="runner-batcher", daemon=True)
        metrics.track_queue_depth(self.depth)

    # ------------------------------------------------------------------ intake
    def start(self) -> None:
        self._thread.start()

    def submit(self, settings: RunSettings) -> Job:
        """Queue a request (raises QueueFullError or ClosedError instead of waiting)."""
        job = Job(settings, self.pipeline.batch_key(settings), time.monotonic())
        with self._cond:
            if self._closed:
                raise ClosedError("the service is shutting down")
            self._drop_cancelled()
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(f"the queue holds {self.max_queue} requests (serve.max_queue)")
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def depth(self) -> int:
        with self._cond:
            waiting = [*self._queue, *self._collecting]
            return sum(1 for job in waiting if not job.future.cancelled())

    def idle(self) -> bool:
        """Nothing queued and nothing running."""
        with self._cond:
            waiting = [*self._queue, *self._collecting]
            return self._running == 0 and not any(not job.future.cancelled() for job in waiting)

    def alive(self) -> bool:
        """The worker thread is running (it ends only after `stop`)."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Take no new requests; queued and running ones still complete."""
        with self._cond:
            self._closed = True

    def stop(self, timeout: float = 5.0) -> None:
        """Close, fail what is still queued, and end the worker after its current batch."""
        with self._cond:
            self._closed = self._stopped = True
            while self._queue:
                job = self._queue.popleft()
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(ClosedError("the service stopped before this request ran"))
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the worker
    def _drop_cancelled(self) -> None:
        dropped = [job for job in self._queue if job.future.cancelled()]
        for job in dropped:
            self._queue.remove(job)

    def _take_batch(self) -> list[Job] | None:
        """The oldest live job and the queued jobs that can join it; None when stopped."""
        with self._cond:
            while True:
                self._drop_cancelled()
                if self._stopped:
                    return None
                if self._queue:
                    break
                self._cond.wait()
            first = self._queue.popleft()
            batch, images = [first], first.images
            self._collecting = batch  # still waiting, though no longer in the queue: idle() and depth() count it
            deadline = first.enqueued + self.max_wait_s
            while first.key is not None and images < self.max_batch and not self._stopped:
                for job in list(self._queue):
                    fits = images + job.images <= self.max_batch
                    if job.key == first.key and fits and not job.future.cancelled():
                        self._queue.remove(job)
                        batch.append(job)
                        images += job.images
                remaining = deadline - time.monotonic()
                if images >= self.max_batch or remaining <= 0:
                    break
                self._cond.wait(remaining)
            # A job cancelled from now on still runs (its result is discarded); before this, it costs nothing.
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            self._collecting = []
            self._running = len(batch)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                if batch:
                    self._run(batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the worker and hang every request
                log.exception("the batch worker failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                with self._cond:
                    self._running = 0
                    self._cond.notify_all()

    def _run(self, batch: list[Job]) -> None:
        started = time.monotonic()
        for job in batch:
            self.metrics.queue_wait.observe(started - job.enqueued)
        try:
            self._generate(batch)
        except Exception as exc:
            if len(batch) > 1 and is_out_of_memory(exc):
                log.warning("a merged batch of %d requests ran out of memory; retrying them one by one", len(batch))
                self.metrics.batch_retries.inc()
                for job in batch:
                    try:
                        self._generate([job])
                    except Exception as single:  # noqa: BLE001 - the request's own failure
                        if not job.future.done():
                            job.future.set_exception(single)
                return
            log.error("a batch of %d request(s) failed: %s: %s", len(batch), type(exc).__name__, exc)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)

    def _generate(self, batch: list[Job]) -> None:
        results = self.pipeline.generate_batch([job.settings for job in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"generate_batch returned {len(results)} results for {len(batch)} requests")
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)
        self.metrics.batch_size.observe(sum(job.images for job in batch))
        self.metrics.batch_requests.observe(len(batch))
        peak = getattr(results[0], "report", {}).get("peak_memory_mb") if results else None
        if peak:
            self.metrics.record_peak_memory(peak)
