"""serve.engine=ray: the service's FastAPI app (runner/serve/app.py) as a Ray Serve deployment.

Each replica is a Ray actor that builds its own pipeline from the composed config (a plain dict, shipped with
the deployment) and its own `Service` (batcher, metrics), and serves the same app as `serve.engine=local`
through `@serve.ingress`. Ray's proxy listens on serve.host:serve.port and spreads requests over the replicas;
Ray restarts a replica that dies or fails its health check. `ray.address` joins an existing cluster (the
weights must then be at the same path on every node); null starts a local Ray for this process.

Every answer names its replica in the `X-Replica` header (the replica actor's name, in Ray's "serve"
namespace). /metrics answers with the metrics of the replica that took the request.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

from runner import ray_cluster
from runner.errors import CapabilityError, RunnerError
from runner.schema import RaySettings, ServeSettings
from runner.typed import to_plain

log = logging.getLogger(__name__)

APP_NAME = "diffusion-runner"
DEPLOYMENT_NAME = "DiffusionRunner"
SHUTDOWN_GRACE_S = 30.0  # on top of serve.drain_s: how long stopping Serve (and a local Ray) may take


def import_ray() -> tuple[Any, Any]:
    """(ray, ray.serve), or a one-line CapabilityError when Ray Serve is not installed."""
    try:
        import ray
        from ray import serve
    except ImportError as err:
        raise CapabilityError(
            f"serve.engine=ray needs Ray Serve ({err}): install the ray extra, pip install 'diffusion-runner[ray]'"
        ) from err
    return ray, serve


# ------------------------------------------------------------------------------------------ the deployment
def deployment_options(settings: ServeSettings) -> dict[str, Any]:
    """The @serve.deployment options for `settings`."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica},
        # Ray queues a request at its proxy, with no limit and no answer, once every replica holds
        # max_ongoing_requests. Leave that much room above what the batcher holds (max_queue waiting, up to
        # max_batch running, as many again encoding their answers) so that the batcher sheds load: 429.
        "max_ongoing_requests": settings.max_queue + 2 * settings.max_batch,
        # What Ray's proxy may hold for a deployment whose replicas are all full: bounded, so that overload is
        # answered (503 from the proxy) instead of piling up.
        "max_queued_requests": settings.max_queue,
        # A replica being stopped (scale-down, shutdown) finishes its requests first, as serve.engine=local does.
        "graceful_shutdown_timeout_s": settings.drain_s,
    }
    if settings.min_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options


class ServiceReplica:
    """One replica: its own pipeline, batcher and metrics behind the FastAPI app."""

    def __init__(self, config: dict[str, Any], settings: ServeSettings) -> None:
        from ray import serve

        from runner.api import Pipeline
        from runner.serve.service import Service

        self.name = serve.get_replica_context().replica_id.to_full_id_str()
        self.service = Service(settings, lambda: Pipeline.from_config(config))
        # Load here, not in the background as serve.engine=local does: Ray routes requests to a replica only
        # once its constructor has returned, so with several replicas (and while Ray replaces a dead one)
        # requests go to the replicas that can answer them instead of getting 503 from one still loading.
        self.service.start(background=False)
        if self.service.state == "failed":
            # Ray retries a replica whose constructor raised (a new process, perhaps on another node), and
            # marks the deployment failed after a few tries (serve.run then raises: see serve_ray).
            raise RuntimeError(f"replica {self.name}: loading the pipeline failed: {self.service.failure}")

    def __serve_build_asgi_app__(self) -> Any:
        """Ray Serve (serve.ingress() without an app) calls this after the constructor: the app of this
        replica's service."""
        from runner.serve.app import create_app

        return create_app(self.service, replica=self.name)

    def check_health(self) -> None:
        """Called by Ray every health_check_period_s; raising makes Ray replace the replica."""
        service = self.service
        if service.state == "failed":
            raise RuntimeError(f"the pipeline failed to load: {service.failure}")
        batcher = service.batcher
        if service.state == "ready" and (batcher is None or not batcher.alive()):
            raise RuntimeError("the batcher's worker thread is gone")

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.stop()


def build_application(config: Mapping[str, Any], settings: ServeSettings) -> Any:
    """The Ray Serve application: `settings`' replicas of the pipeline of `config` (a composed config)."""
    _, serve = import_ray()
    ingress = serve.ingress()(ServiceReplica)
    deployment = serve.deployment(ingress, **deployment_options(settings))
    return deployment.bind(to_plain(config), settings)


# ------------------------------------------------------------------------------------------ the cluster
def check_fits(nodes: list[Mapping[str, Any]], settings: ServeSettings) -> None:
    """A one-line CapabilityError when no node of the cluster can ever hold one replica. `nodes`: ray.nodes()."""
    needs = {"CPU": ("serve.cpus_per_replica", settings.cpus_per_replica),
             "GPU": ("serve.gpus_per_replica", settings.gpus_per_replica)}  # fmt: skip
    ray_cluster.check_fits(nodes, needs, "replica", "lower them, e.g. serve.gpus_per_replica=0 without GPUs")


def free_port(host: str) -> int:
    """A port free on `host` now (Ray's proxy cannot take port 0 and report the port it got)."""
    from runner.serve.local import listen

    with listen(host, 0) as sock:
        return sock.getsockname()[1]


def serve_ray(cfg: Mapping[str, Any], settings: ServeSettings, ray_settings: RaySettings) -> None:
    """Deploy on Ray Serve (a local Ray unless ray.address is set), serve until SIGTERM/SIGINT, then stop."""
    ray, serve = import_ray()
    application = build_application(cfg, settings)
    local = ray_cluster.connect(ray, ray_settings)

    stop = threading.Event()
    serving = False

    def on_signal(signum: int, frame: Any) -> None:
        first = not stop.is_set()
        stop.set()
        if not serving or not first:
            raise KeyboardInterrupt  # still deploying, or a second signal: stop waiting

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = False
    try:
        check_fits(ray.nodes(), settings)
        port = settings.port or free_port(settings.host)
        started = True
        serve.start(http_options={"host": settings.host, "port": port})
        replicas = (
            f"{settings.min_replicas}-{settings.max_replicas} replicas"
            if settings.min_replicas is not None
            else f"{settings.replicas} replica{'s' * (settings.replicas != 1)}"
        )
        print(
            f"serving on http://{settings.host}:{port} (Ray Serve, {replicas}, loading the model; "
            "GET /healthz answers 200 when ready)",
            file=sys.stderr,
            flush=True,
        )
        try:
            serve.run(application, name=APP_NAME, route_prefix="/")
        except RuntimeError as err:
            raise RunnerError(f"the Ray Serve deployment failed: {ray_cluster.one_line(err)}") from err
        serving = True
        log.info("ready: %s on Ray Serve at http://%s:%d", replicas, settings.host, port)
        while not stop.wait(1.0):
            pass
        log.info("stopping: Ray Serve drains the replicas (up to serve.drain_s=%.0f s)", settings.drain_s)
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        bound = settings.drain_s + SHUTDOWN_GRACE_S
        if started and local:
            ray_cluster.bounded("serve.shutdown", serve.shutdown, bound)
        elif started:  # a shared cluster: remove this application only, leave Serve and the cluster running
            ray_cluster.bounded("serve.delete", lambda: serve.delete(APP_NAME), bound)
        ray_cluster.bounded("ray.shutdown", ray.shutdown, SHUTDOWN_GRACE_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
