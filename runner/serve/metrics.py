"""Prometheus metrics of the service, in a registry of their own (one per app, so several apps in one process,
as in tests or Ray replicas, never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

# Image requests take from tens of milliseconds (tiny models) to minutes (large models on a CPU); the default
# buckets stop at 10 s.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self, prefix: str = "runner") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            f"{prefix}_request_latency_seconds",
            "Time from receiving an image request to answering it",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{prefix}_queue_wait_seconds",
            "Time a request waited in the queue before its batch started",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{prefix}_batch_size", "Images per denoise batch run", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            f"{prefix}_batch_requests", "Requests merged per denoise batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.images = Counter(f"{prefix}_images_generated", "Images generated and returned", registry=r)
        self.requests = Counter(
            f"{prefix}_requests", "Image requests answered, by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            f"{prefix}_request_errors", "Requests answered with an error, by HTTP status", ["status"], registry=r
        )
        self.cancelled = Counter(
            f"{prefix}_requests_cancelled", "Requests dropped before running: the client went away", registry=r
        )
        self.batch_retries = Counter(
            f"{prefix}_batch_oom_retries", "Merged batches that ran out of memory and were retried alone", registry=r
        )
        self.in_flight = Gauge(f"{prefix}_requests_in_flight", "Image requests being handled", registry=r)
        self.queue_depth = Gauge(f"{prefix}_queue_depth", "Requests waiting for a batch", registry=r)
        self.peak_memory = Gauge(
            f"{prefix}_device_peak_memory_bytes", "Largest device memory peak of any batch so far", registry=r
        )
        self._peak_bytes = 0.0
        self.ready = Gauge(f"{prefix}_ready", "1 when the pipeline is loaded and taking requests", registry=r)

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def record_peak_memory(self, megabytes: float) -> None:
        self._peak_bytes = max(self._peak_bytes, megabytes * 2**20)
        self.peak_memory.set(self._peak_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
