"""The service behind the HTTP routes: loads the pipeline in the background (the port answers /healthz with 503
meanwhile), owns the batcher and the metrics, and turns a checked request into images or an `ApiError`."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner.errors import ConfigError
from runner.schema import ServeSettings
from runner.serve.batcher import Batcher, ClosedError, QueueFullError, is_out_of_memory
from runner.serve.metrics import Metrics
from runner.serve.protocol import BadRequest, Limits, ParsedRequest, param_of_config_error

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks whether its client is still there


@dataclass
class ApiError(Exception):
    """An answer other than 200: the status, OpenAI's error `type`, the message, the field, extra headers."""

    status: int
    type: str
    message: str
    param: str | None = None
    headers: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": None}}


class ClientGone(Exception):
    """The client disconnected while its request waited; nobody reads the answer."""


class Service:
    def __init__(self, settings: ServeSettings, loader: Callable[[], Any]) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._loader = loader
        self.pipeline: Any = None
        self.batcher: Batcher | None = None
        self.state = "loading"  # loading -> ready -> draining; or failed
        self.failure: str | None = None
        self.created = int(time.time())
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self, background: bool = True) -> None:
        """Load the pipeline (in a thread when `background`) and start the batcher."""
        if background:
            threading.Thread(target=self._load, name="runner-load", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        try:
            pipeline = self._loader()
        except Exception as exc:  # noqa: BLE001 - reported by /healthz and the log; the process keeps answering
            log.exception("loading the pipeline failed")
            with self._lock:
                self.state, self.failure = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            return
        s = self.settings
        batcher = Batcher(
            pipeline, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms, max_queue=s.max_queue, metrics=self.metrics
        )
        batcher.start()
        with self._lock:
            self.pipeline, self.batcher = pipeline, batcher
            if self.state == "loading":
                self.state = "ready"
                self.metrics.ready.set(1)
        log.info("ready: model=%s", pipeline.model_name)

    def begin_drain(self) -> None:
        """Stop intake (new requests get 503); queued and running requests finish."""
        with self._lock:
            self.state = "draining"
            self.metrics.ready.set(0)
            if self.batcher:
                self.batcher.close()

    def idle(self) -> bool:
        return self.batcher is None or self.batcher.idle()

    def worker_alive(self) -> bool:
        return self.batcher is not None and self.batcher.alive()

    def stop(self) -> None:
        if self.batcher:
            self.batcher.stop()

    # ------------------------------------------------------------------ requests
    def limits(self) -> Limits:
        p, s = self.ready_pipeline(), self.settings
        return Limits(
            model=p.model_name,
            multiple=p.resolution_multiple,
            default_width=p.defaults.width,
            default_height=p.defaults.height,
            max_pixels=s.max_pixels,
            max_steps=s.max_steps,
            max_n=s.max_n or s.max_batch,
        )

    def ready_pipeline(self) -> Any:
        if self.state != "ready":
            detail = {"loading": "the model is still loading", "draining": "the service is shutting down"}
            message = detail.get(self.state, f"the model failed to load: {self.failure}")
            raise ApiError(503, "service_unavailable", message, headers={"Retry-After": "5"})
        return self.pipeline

    async def generate(self, parsed: ParsedRequest, is_disconnected: Callable[[], Any]) -> Any:
        """Validate with the pipeline (the CLI's checks), queue, wait for the batch; the Generation."""
        pipeline = self.ready_pipeline()
        try:
            # The CLI's checks cost milliseconds (OmegaConf): not on the event loop.
            settings = await asyncio.to_thread(pipeline.settings, **parsed.params)
        except ConfigError as err:
            raise BadRequest(err.one_line(), param_of_config_error(str(err), parsed.fields)) from err
        try:
            job = self.batcher.submit(settings)
        except QueueFullError as err:
            retry = str(self.settings.retry_after_s)
            raise ApiError(
                429, "rate_limit_error", f"too many requests: {err}", headers={"Retry-After": retry}
            ) from err
        except ClosedError as err:
            raise ApiError(503, "service_unavailable", str(err), headers={"Retry-After": "5"}) from err
        return await self._wait(job, is_disconnected)

    async def _wait(self, job: Any, is_disconnected: Callable[[], Any]) -> Any:
        waiter = asyncio.wrap_future(job.future)
        deadline = job.enqueued + self.settings.request_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                job.future.cancel()
                raise ApiError(
                    504, "timeout", f"no answer within serve.request_timeout_s={self.settings.request_timeout_s}"
                )
            try:
                done, _ = await asyncio.wait({waiter}, timeout=min(DISCONNECT_POLL_S, remaining))
            except asyncio.CancelledError:
                # The handler itself was cancelled (Ray Serve does so when the client leaves; uvicorn at the
                # end of a forced shutdown): a job that has not started must not run for nobody.
                if job.future.cancel():
                    self.metrics.cancelled.inc()
                raise
            if done:
                return self._result(waiter)
            if await is_disconnected():
                if job.future.cancel():
                    self.metrics.cancelled.inc()
                raise ClientGone()

    @staticmethod
    def _result(waiter: asyncio.Future) -> Any:
        try:
            return waiter.result()
        except ClosedError as err:
            raise ApiError(503, "service_unavailable", str(err)) from err
        except Exception as err:
            kind = "out of memory" if is_out_of_memory(err) else type(err).__name__
            message = f"generation failed ({kind}): {' '.join(str(err).split())[:500]}"
            raise ApiError(500, "server_error", message) from err
