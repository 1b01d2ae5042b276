"""`python -m runner mode=serve` as operators meet it: a bad serve config is one `error:` line and exit 2
before anything loads or listens, and SIGTERM drains the running requests before exiting 0."""

from __future__ import annotations

import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.cases import slow_except
from tests.support.runs import run_cli
from tests.support.servers import TINY_MODEL, cli_server, decode_png, prometheus_samples, wait_until

# A weights directory that does not exist: were anything planned or loaded before the serve settings are
# checked, the error would be about it.
NO_WEIGHTS = "model.weights=/nonexistent/sd15"

BAD_SERVE = [
    (["serve.max_batch=0"], r"error: serve\.max_batch=0 must be >= 1$"),
    (["serve.engine=k8s"], r"error: serve\.engine='k8s' is not one of local, ray$"),
    (["serve.port=70000"], r"error: serve\.port=70000 must be in \[0, 65535\] \(0: any free port\)$"),
    (["serve.request_timeout_s=0"], r"error: serve\.request_timeout_s=0\.0 must be > 0$"),
    (["serve.max_wait_ms=-1"], r"error: serve\.max_wait_ms=-1\.0 must be >= 0$"),
    (["serve.max_queue=lots"], r"error: serve\.max_queue='lots' must be an integer$"),
    (["serve.min_replicas=1"], r"error: serve\.min_replicas and serve\.max_replicas go together"),
    (
        ["+serve.workers=2"],
        r"error: the serve config has no option 'workers'; it accepts: cpus_per_replica, drain_s, engine, ",
    ),
]


@pytest.mark.parametrize("args,message", slow_except(BAD_SERVE, BAD_SERVE[0], BAD_SERVE[1]))
def test_bad_serve_config_exits_2_before_loading_or_listening(tmp_path, args, message):
    out = tmp_path / "run"
    proc = run_cli(["mode=serve", "serve.port=0", *args, NO_WEIGHTS, f"hydra.run.dir={out}"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.match(message, errors[0]), proc.stderr[-2000:]
    assert "serving on" not in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_a_bad_run_config_exits_2_before_listening(tmp_path):
    proc = run_cli(["mode=serve", "serve.port=0", NO_WEIGHTS, f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: model.weights='/nonexistent/sd15' is not a directory"), errors
    assert "serving on" not in proc.stderr


@pytest.mark.slow
def test_a_taken_port_is_one_error_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli(["mode=serve", f"serve.port={port}", f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"], proc.stderr[-2000:]


def serve_args(tmp_path, drain_s: float) -> list[str]:
    return [
        f"model={TINY_MODEL}",
        "backend=torch",
        "steps=2",
        "quiet=true",
        f"serve.drain_s={drain_s}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]


def wait_running(client: httpx.Client, url: str, timeout: float = 60) -> None:
    """Until the one image request sent is in its batch (its queue wait was observed when the batch started;
    in flight alone could still be reading its body, and would be refused once the drain began)."""

    def running() -> bool:
        m = prometheus_samples(client.get(f"{url}/metrics").text)
        return m[("runner_queue_wait_seconds_count", frozenset())] == 1

    wait_until(running, timeout, "the request to be running", interval=0.05)


@pytest.mark.slow
def test_sigterm_drains_the_running_request_then_exits_0(tmp_path, one_thread_env):
    drain_s = 20
    with (
        cli_server(serve_args(tmp_path, drain_s)) as cli,
        httpx.Client(trust_env=False, timeout=60) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        wait_until(lambda: client.get(f"{cli.url}/healthz").status_code == 200, 120, "the model to load", 0.1)
        # 40 steps: seconds on a CPU, time enough to see the draining service from outside.
        body = {"prompt": "a red fox", "size": "64x64", "steps": 40, "seed": 5}
        long = pool.submit(client.post, f"{cli.url}/v1/images/generations", json=body)
        wait_running(client, cli.url)
        signalled = time.monotonic()
        cli.proc.send_signal(signal.SIGTERM)

        health = client.get(f"{cli.url}/healthz")
        assert (health.status_code, health.json()["status"]) == (503, "draining")
        refused = client.post(f"{cli.url}/v1/images/generations", json={**body, "steps": 2})
        assert refused.status_code == 503, refused.text[:500]
        assert refused.json()["error"]["message"] == "the service is shutting down"
        assert not long.done(), "the long request ended before the drain could be observed"

        answer = long.result(drain_s)
        assert answer.status_code == 200, answer.text[:500]
        pixels, chunks = decode_png(answer.json()["data"][0]["b64_json"])
        assert pixels.shape == (64, 64, 3) and chunks["steps"] == "40"
        assert cli.proc.wait(drain_s) == 0, cli.output[-3000:]
        assert time.monotonic() - signalled < drain_s
    assert "SIGTERM: draining" in cli.output


@pytest.mark.slow
def test_a_drain_that_runs_out_exits_1(tmp_path, one_thread_env):
    with (
        cli_server(serve_args(tmp_path, drain_s=1)) as cli,
        httpx.Client(trust_env=False, timeout=120) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        wait_until(lambda: client.get(f"{cli.url}/healthz").status_code == 200, 120, "the model to load", 0.1)
        body = {"prompt": "a red fox", "size": "64x64", "steps": 100, "seed": 5}
        pool.submit(client.post, f"{cli.url}/v1/images/generations", json=body)
        wait_running(client, cli.url)
        cli.proc.send_signal(signal.SIGTERM)
        assert cli.proc.wait(60) == 1, cli.output[-3000:]
    errors = [line for line in cli.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: serve.drain_s=1.0 ran out with requests still running"], cli.output[-3000:]
