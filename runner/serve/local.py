"""Serve the app with uvicorn in this process, with a drain on SIGTERM (and on the first Ctrl-C).

On SIGTERM the service stops intake (new requests and /healthz answer 503, so a load balancer moves on),
requests already queued or running finish, and the process exits 0 once idle, or 1 when `serve.drain_s`
ran out first. A second signal quits at once (exit 1).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn

from runner.errors import RunnerError
from runner.schema import ServeSettings
from runner.serve.app import create_app
from runner.serve.service import Service

log = logging.getLogger(__name__)


class DrainTimeoutError(RunnerError):
    exit_code = 1


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service, drain_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.drain_s = drain_s
        self.drain_deadline: float | None = None
        self.drain_begun = False
        self.drain_signal = ""
        self.unfinished = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler runs between any two bytecodes of the main thread: it only sets flags (taking a
        # lock here, as the metrics do, could deadlock with the interrupted code); on_tick does the rest.
        if sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
        elif self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.drain_s
            self.drain_signal = signal.Signals(sig).name
            self.service.state = "draining"  # a plain assignment: new requests and /healthz get 503 from now on
        else:  # a second signal: stop now, without waiting for running requests (not re-raised: exit 1)
            self.unfinished = True
            self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if not self.drain_begun:
                log.info(
                    "%s: draining (no new requests; up to %.0f s for the running ones)", self.drain_signal, self.drain_s
                )
                self.service.begin_drain()
                self.drain_begun = True
            if self.service.idle() and not self.server_state.tasks:
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                # Out of time: uvicorn must not wait again (its graceful shutdown would add drain_s).
                self.unfinished = True
                self.should_exit = self.force_exit = True
        return await super().on_tick(counter)


def listen(host: str, port: int) -> socket.socket:
    """Bind before loading anything, so a taken port is a one-line error, and port 0 gets a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise RunnerError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve_local(service: Service, settings: ServeSettings) -> None:
    """Bind, announce the address, load in the background, serve until drained."""
    sock = listen(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    app = create_app(service)
    config = uvicorn.Config(
        app,
        log_level="info",
        timeout_graceful_shutdown=max(1, int(settings.drain_s)),
        access_log=False,
    )
    server = DrainingServer(config, service, settings.drain_s)
    print(
        f"serving on http://{host}:{port} (loading the model; GET /healthz answers 200 when ready)",
        file=sys.stderr,
        flush=True,
    )
    service.start(background=True)
    try:
        server.run(sockets=[sock])
    finally:
        service.stop()
    if server.unfinished:
        err = DrainTimeoutError(f"serve.drain_s={settings.drain_s} ran out with requests still running")
        # The batcher's thread may still be inside the engine's native code: interpreter shutdown under it
        # aborts the process (std::terminate, exit -6). Report as the CLI does, then leave at once.
        print(f"error: {err.one_line()}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(err.exit_code)
