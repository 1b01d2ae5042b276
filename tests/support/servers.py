"""Start the HTTP service for tests: in this process (uvicorn in a thread, port 0 on 127.0.0.1) or as the CLI
(`python -m runner mode=serve ...` in a subprocess); a pipeline wrapper whose batches the test holds back or
breaks; the service's Prometheus samples as numbers. Every wait here is bounded."""

from __future__ import annotations

import base64
import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from runner.schema import RunSettings, parse_serve
from runner.serve.app import create_app
from runner.serve.local import listen
from runner.serve.service import Service
from tests.support.runs import REPO

HOST = "127.0.0.1"
TINY_MODEL = "tiny_sd15"
# The pipeline the in-process servers of tests/serve serve (tests/serve/conftest.py loads it once).
TINY_LOAD = [f"model={TINY_MODEL}", "backend=torch", "steps=2", "height=64", "width=64", "quiet=true"]
SERVING_LINE = re.compile(r"serving on http://127\.0\.0\.1:(\d+) ")


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy (returned); AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------- in-process
@dataclass
class LiveServer:
    """A running service: its base URL and the objects behind it."""

    port: int
    service: Service
    server: uvicorn.Server
    client: httpx.Client  # shared by the test's threads (keep-alive connections; no proxy from the environment)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(self.url + path, timeout=kwargs.pop("timeout", 60), **kwargs)

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        return prometheus_samples(self.get("/metrics").text)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0.0 when it has not been recorded yet)."""
        return self.metrics().get((name, frozenset(labels.items())), 0.0)


def serve_settings(**overrides: Any):
    """ServeSettings as the serve group would give them (checked), on port 0."""
    return parse_serve({"port": 0, **overrides})


@contextmanager
def serve_in_thread(
    pipeline: Any = None, *, loader: Callable[[], Any] | None = None, startup_s: float = 30, **settings: Any
) -> Iterator[LiveServer]:
    """The app of a `Service` (loading `pipeline`, or what `loader` returns) served by uvicorn in a thread on
    127.0.0.1, a free port. `settings`: serve.* options. Waits until the port answers; stops at exit."""
    if (pipeline is None) == (loader is None):
        raise ValueError("give a pipeline or a loader")
    service = Service(serve_settings(**settings), loader or (lambda: pipeline))
    sock = listen(HOST, 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(service), log_level="warning", access_log=False, timeout_graceful_shutdown=2, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    service.start(background=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), startup_s, "uvicorn to start")
        assert server.started, "uvicorn stopped before it started"
        with httpx.Client(trust_env=False) as client:
            yield LiveServer(port, service, server, client)
    finally:
        server.should_exit = True
        thread.join(15)
        service.stop()
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop within 15 s"


def wait_ready(live: LiveServer, timeout: float = 60) -> None:
    wait_until(lambda: live.get("/healthz").status_code == 200, timeout, "/healthz to answer 200", interval=0.05)


def wait_queued(live: LiveServer, count: int, timeout: float = 30) -> None:
    """Until exactly `count` requests wait in the batcher's queue."""
    wait_until(lambda: live.service.batcher.depth() == count, timeout, f"{count} queued request(s)")


# ---------------------------------------------------------------------------------------------- the CLI
@dataclass
class CliServer:
    """`python -m runner mode=serve ...` running: its process, port and output so far."""

    proc: subprocess.Popen
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def cli_server(args: Sequence[str], announce_s: float = 60) -> Iterator[CliServer]:
    """Start the CLI server (stdout and stderr read by a thread) and wait for its `serving on` line;
    at exit, a process still running is killed."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "runner", "mode=serve", "serve.port=0", *args]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: list[str] = []
    fresh: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            fresh.put(line)
        fresh.put(None)

    reader = threading.Thread(target=read, name="cli-server-output", daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + announce_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = fresh.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise AssertionError(f"no 'serving on' line within {announce_s} s:\n{''.join(lines)}") from None
            if line is None:
                raise AssertionError(f"the server exited ({proc.wait(10)}) before serving:\n{''.join(lines)}")
            match = SERVING_LINE.search(line)
            if match:
                break
        yield CliServer(proc, int(match.group(1)), lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        reader.join(10)
        proc.stdout.close()


# ---------------------------------------------------------------------------------------------- pipelines
class GatedPipeline:
    """A runner.api.Pipeline whose `generate_batch` the test controls: it records every call's requests,
    waits while the gate is closed (`held()`), and may raise `fault(requests)` instead of generating.
    Everything else is the real pipeline's."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self._gate.set()
        self.calls: list[list[RunSettings]] = []
        self.fault: Callable[[Sequence[RunSettings]], BaseException | None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    def generate_batch(self, requests: Sequence[RunSettings]) -> list[Any]:
        with self._lock:
            self.calls.append(list(requests))
        if not self._gate.wait(60):
            raise RuntimeError("the test never opened the gate")
        error = self.fault(requests) if self.fault else None
        if error is not None:
            raise error
        return self._pipeline.generate_batch(requests)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Batches started inside the block wait until it ends (also when the test fails)."""
        self._gate.clear()
        try:
            yield
        finally:
            self._gate.set()

    def seeds_run(self) -> list[list[int]]:
        """The seeds of the requests of each generate_batch call so far."""
        with self._lock:
            return [[s.seed for s in call] for call in self.calls]

    def wait_calls(self, count: int, timeout: float = 30) -> None:
        wait_until(lambda: len(self.calls) >= count, timeout, f"{count} generate_batch call(s)")


# ---------------------------------------------------------------------------------------------- answers
def prometheus_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, frozenset of label items) -> value, for every sample of a /metrics page."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def decode_png(b64: str) -> tuple[np.ndarray, dict[str, str]]:
    """A base64 PNG of an answer: its pixels (uint8 [H, W, 3]) and text chunks."""
    with Image.open(io.BytesIO(base64.b64decode(b64, validate=True))) as picture:
        assert picture.format == "PNG", picture.format
        return np.asarray(picture.convert("RGB")), dict(picture.text)
