"""serve.engine=ray: the deployment's options and resource check (fast), and a real Ray Serve app (slow).

The slow test starts a local Ray in this process (the cluster) and `python -m runner mode=serve
serve.engine=ray ray.address=...` joins it with two CPU replicas of tiny_sd15. It checks that both replicas
answer, kills one replica actor while a bounded stream of concurrent requests runs, checks that every request
was answered (an image, or an error status: none hangs or is lost), that Ray Serve is back to two running
replicas, and that SIGTERM stops the server with exit code 0. Ray is a dependency of `make setup`: a missing
Ray fails the test instead of skipping it. 90-110 s on 2 shared cores.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest

from runner.errors import CapabilityError
from runner.schema import ServeSettings
from runner.serve import ray_deploy
from tests.support.runs import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ fast
def test_options_fixed_replicas() -> None:
    options = ray_deploy.deployment_options(ServeSettings(replicas=3, gpus_per_replica=1, cpus_per_replica=2))
    assert options["num_replicas"] == 3
    assert "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}
    settings = ServeSettings()
    assert options["max_ongoing_requests"] >= settings.max_queue + settings.max_batch


def test_options_autoscaling_range() -> None:
    options = ray_deploy.deployment_options(ServeSettings(min_replicas=1, max_replicas=4, target_ongoing_requests=3))
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3}


def test_check_fits() -> None:
    cpu_node = {"Alive": True, "Resources": {"CPU": 2.0, "memory": 1e9}}
    ray_deploy.check_fits([cpu_node], ServeSettings(cpus_per_replica=0.5))
    with pytest.raises(CapabilityError, match=r"serve.gpus_per_replica=1;.* largest node has 2 CPU, 0 GPU"):
        ray_deploy.check_fits([cpu_node], ServeSettings(gpus_per_replica=1))
    with pytest.raises(CapabilityError, match=r"serve.cpus_per_replica=4"):
        ray_deploy.check_fits(
            [cpu_node, {"Alive": False, "Resources": {"CPU": 8.0}}], ServeSettings(cpus_per_replica=4)
        )
    ray_deploy.check_fits(
        [cpu_node, {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}], ServeSettings(gpus_per_replica=1)
    )


def test_missing_ray_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(CapabilityError, match=r"pip install 'diffusion-runner\[ray\]'") as info:
        ray_deploy.import_ray()
    assert "\n" not in info.value.one_line()


# ------------------------------------------------------------------------------------------ slow
REPLICAS = 2
REQUESTS = 12  # the bounded stream sent while a replica is killed
CLIENT_TIMEOUT_S = 150.0  # a request unanswered by then counts as lost
READY_TIMEOUT_S = 200.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = CLIENT_TIMEOUT_S) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a GET (body None) or a JSON POST; HTTP errors are answers too."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, dict(err.headers), err.read()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = {"raw": raw[:200].decode("latin-1")}
    return status, {key.lower(): value for key, value in headers.items()}, payload


def generate(base: str, seed: int) -> tuple[int, str | None, dict]:
    status, headers, payload = http(f"{base}/v1/images/generations", {"prompt": "a red fox", "seed": seed, "steps": 2})
    if status == 200:
        assert base64.b64decode(payload["data"][0]["b64_json"]).startswith(PNG_MAGIC)
    return status, headers.get("x-replica"), payload


def wait_ready(base: str, process: subprocess.Popen, log: Path) -> None:
    """Until every replica has loaded (the application RUNNING) and /healthz answers 200."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited ({process.returncode}):\n{log.read_text()[-4000:]}"
        try:
            app_status, states, _ = deployment_status()
        except (KeyError, RuntimeError):  # Serve or the application is not there yet
            app_status, states = None, {}
        if (
            app_status == "RUNNING"
            and states == {"RUNNING": REPLICAS}
            and http(f"{base}/healthz", timeout=10)[0] == 200
        ):
            return
        time.sleep(2)
    pytest.fail(f"not ready within {READY_TIMEOUT_S:.0f} s:\n{log.read_text()[-4000:]}")


def deployment_status() -> tuple[str, dict[str, int], set[str]]:
    """The application's status, its deployment's replica states, and the names of the live replica actors."""
    import ray
    from ray import serve

    app = serve.status().applications[ray_deploy.APP_NAME]
    states = app.deployments[ray_deploy.DEPLOYMENT_NAME].replica_states
    prefix = f"SERVE_REPLICA::{ray_deploy.APP_NAME}#{ray_deploy.DEPLOYMENT_NAME}#"
    actors = {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)}
    return (
        getattr(app.status, "value", str(app.status)),
        {getattr(state, "value", str(state)): count for state, count in states.items()},
        {name for name in actors if name.startswith(prefix)},
    )


@pytest.mark.slow
def test_two_replicas_survive_a_killed_replica(ray_cluster: str, tmp_path: Path) -> None:
    import ray

    started = time.monotonic()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [
        "mode=serve",
        "serve.engine=ray",
        f"serve.replicas={REPLICAS}",
        "serve.cpus_per_replica=0.5",
        f"serve.port={port}",
        "serve.drain_s=10",
        f"ray.address='{ray_cluster}'",
        "model=tiny_sd15",
        "backend=torch",
        "steps=2",
        "quiet=true",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    log = tmp_path / "server.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with log.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "runner", *args], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(base, server, log)
        ready_s = time.monotonic() - started

        # Both replicas answer: rounds of concurrent image requests until both have made images.
        seen: set[str] = set()
        with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
            for round_ in range(4):
                for status, replica, payload in pool.map(
                    lambda s: generate(base, s), range(4 * round_, 4 * round_ + 4)
                ):
                    assert status == 200, payload
                    assert replica and replica.startswith("SERVE_REPLICA::"), replica
                    seen.add(replica)
                if len(seen) == REPLICAS:
                    break
        assert len(seen) == REPLICAS, f"images came from {sorted(seen)} only"

        # Kill one replica actor while a bounded stream of requests is in flight.
        victim = sorted(seen)[0]
        with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
            futures = [pool.submit(generate, base, 100 + i) for i in range(REQUESTS)]
            time.sleep(2.0)  # the requests are spread over both replicas' queues by now
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            killed_at = time.monotonic()
            done, pending = wait(futures, timeout=CLIENT_TIMEOUT_S + 30)
        assert not pending, f"{len(pending)} request(s) never answered"
        outcomes: dict[str, int] = {}
        lost = []
        for future in futures:
            try:
                status, replica, payload = future.result()
            except Exception as err:  # noqa: BLE001 - a request without an HTTP answer: lost
                lost.append(repr(err))
                continue
            key = "200" if status == 200 else f"{status} {json.dumps(payload)[:160]}"
            outcomes[key] = outcomes.get(key, 0) + 1
            assert status == 200 or status >= 400, (status, payload)
        print(f"outcomes of {REQUESTS} requests with a replica killed: {outcomes}; lost: {lost}")
        assert not lost, f"requests without an answer: {lost}"
        assert sum(outcomes.values()) == REQUESTS
        assert outcomes.get("200", 0) >= 1, outcomes

        # Ray Serve replaces the dead replica: the victim's actor gone, two replica actors, two RUNNING replicas
        # (the status alone lags: it still counts the dead replica until the controller notices).
        deadline = time.monotonic() + 150
        while True:
            app_status, states, replicas_now = deployment_status()
            replaced = victim not in replicas_now and len(replicas_now) == REPLICAS
            if replaced and app_status == "RUNNING" and states == {"RUNNING": REPLICAS}:
                break
            assert time.monotonic() < deadline, f"not back to {REPLICAS} replicas: {app_status} {states} {replicas_now}"
            time.sleep(2)
        recovered_s = time.monotonic() - killed_at
        status, replica, payload = generate(base, 999)
        assert status == 200 and replica in replicas_now, (status, replica, payload)
        print(f"ready after {ready_s:.0f} s; back to {REPLICAS} replicas {recovered_s:.0f} s after the kill")

        # SIGTERM: the application is removed, the process exits 0.
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=90) == 0, log.read_text()[-4000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
