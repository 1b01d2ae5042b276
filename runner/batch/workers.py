"""Who draws the batches of mode=batch: this process, or Ray actors that each load the pipeline once.

The driver (this process) keeps the list of batches and hands one at a time to each idle worker, so a fast
worker takes more of them. A worker sends back PNG bytes and the driver writes every file: no shared file
system is needed between the nodes, and one writer keeps the manifest consistent. A worker that dies (its node
lost, its process killed) is replaced, and its batch goes back to the front of the list for another worker, up
to mode.max_retries times; an error inside the pipeline (a bad weights path on a node, NaN latents) stops the
job with that error.
"""

from __future__ import annotations

import collections
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from runner import ray_cluster
from runner.api import Pipeline
from runner.batch.prompts import PromptRequest
from runner.errors import CapabilityError, RunnerError
from runner.schema import BatchSettings, RaySettings, RunSettings

log = logging.getLogger(__name__)

# A worker's answer to one batch: the PNG bytes of each request's images, in the batch's order.
Rendered = list[list[bytes]]
SHUTDOWN_S = 30.0


def payload(batch: Sequence[PromptRequest]) -> list[RunSettings]:
    """What a worker needs of a batch: its requests' settings, checked by the driver against the same config."""
    return [request.settings for request in batch]


def render(pipe: Pipeline, requests: Sequence[RunSettings]) -> Rendered:
    """Draw one planned batch: one denoise batch, or one request at a time on samplers whose step noise
    cannot be shared (Pipeline.merges_requests); each request gets the images it gets alone."""
    if pipe.merges_requests:
        generations = pipe.generate_batch(requests)
    else:
        generations = [pipe.generate_batch([request])[0] for request in requests]
    return [[g.png(i) for i in range(len(g.arrays))] for g in generations]


class LocalWorker:
    """mode.workers=1 without ray.address: the pipeline in this process."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.pipe = Pipeline.from_config(config)

    def run(self, batches: Sequence[Sequence[PromptRequest]]) -> Iterator[tuple[Sequence[PromptRequest], Rendered]]:
        for batch in batches:
            yield batch, render(self.pipe, payload(batch))

    def close(self) -> None:
        self.pipe = None  # type: ignore[assignment]


class BatchWorker:
    """A Ray actor: one pipeline, loaded once. A load failure is kept as (exit code, one line), plain data that
    always crosses to the driver (an actor whose constructor raises is restarted by Ray instead of saying why)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.failure: tuple[int, str] | None = None
        try:
            self.pipe: Pipeline | None = Pipeline.from_config(config)
        except RunnerError as err:
            self.pipe, self.failure = None, (err.exit_code, err.one_line())
        except Exception as err:  # noqa: BLE001 - reported by ready()
            self.pipe, self.failure = None, (1, f"{type(err).__name__}: {ray_cluster.one_line(err)}")

    def ready(self) -> tuple[int, str] | None:
        """(exit code, why) when this worker could not load the pipeline, else None."""
        return self.failure

    def render(self, batch: list[RunSettings]) -> Rendered:
        if self.pipe is None:  # not reached: the driver gives batches to workers that loaded
            raise RuntimeError(f"this worker could not load the pipeline: {self.failure}")
        return render(self.pipe, batch)


class WorkerError(RunnerError):
    """A worker's pipeline failed (to load, or on a batch); carries the exit code of the error it had."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RayWorkers:
    """mode.workers Ray actors (on ray.address, or a local Ray this process starts and stops). Batches go only
    to workers whose pipeline has loaded."""

    def __init__(self, config: Mapping[str, Any], settings: BatchSettings, ray_settings: RaySettings) -> None:
        self.ray = ray_cluster.import_ray("mode=batch with mode.workers > 1 or ray.address")
        self.config = dict(config)
        self.settings = settings
        # Inside a Ray task (a sweep on hydra/launcher=ray) Ray is connected already: use that connection.
        self.owns_connection = not self.ray.is_initialized()
        if self.owns_connection:
            ray_cluster.connect(self.ray, ray_settings)
        self.prefix = f"diffusion-runner-batch-{uuid.uuid4().hex[:8]}"
        self.started = 0
        self.workers: list[Any] = []
        try:
            # Workers beyond the cluster's room would wait for resources forever (a GPU where there is none).
            room = worker_room(self.ray.nodes(), settings)
            if room < settings.workers:
                raise CapabilityError(
                    f"mode.workers={settings.workers}: the Ray cluster has room for {room} worker(s) now "
                    f"(mode.cpus_per_worker={settings.cpus_per_worker:g}, "
                    f"mode.gpus_per_worker={settings.gpus_per_worker:g}); lower mode.workers or the per-worker needs"
                )
            self.actor = self.ray.remote(BatchWorker)
            starting = [self._start() for _ in range(settings.workers)]
            # Every pipeline loads before anything is drawn: a load failure stops the job first, and images/s
            # counts drawing only.
            for worker in starting:
                self._await_ready(worker)
        except BaseException:
            self.close()
            raise

    def _start(self) -> Any:
        """A new actor; named `<prefix>-worker-<n>` in the Ray namespace, so an operator can find it."""
        name = f"{self.prefix}-worker-{self.started}"
        self.started += 1
        s = self.settings
        options = {"name": name, "num_cpus": s.cpus_per_worker, "num_gpus": s.gpus_per_worker, "max_restarts": 0}
        worker = self.actor.options(**options).remote(self.config)
        self.workers.append(worker)
        return worker

    def _await_ready(self, worker: Any) -> None:
        ray = self.ray
        ref = worker.ready.remote()
        done, _ = ray.wait([ref], timeout=self.settings.start_timeout_s)
        if not done:
            raise WorkerError(
                f"a worker did not start within mode.start_timeout_s={self.settings.start_timeout_s:g} s "
                "(the cluster had no room for it, or loading the pipeline took longer)"
            )
        try:
            failure = ray.get(ref)
        except ray.exceptions.RayError as err:  # its process died while loading (out of memory, killed)
            raise WorkerError(f"a worker died while loading the pipeline: {ray_cluster.one_line(err)}") from err
        if failure is not None:
            exit_code, why = failure
            raise WorkerError(f"a worker could not load the pipeline: {why}", exit_code)

    def _replace(self, worker: Any) -> Any:
        """Kill `worker` (dead, or unreachable and perhaps back later holding its resources) and start another."""
        self.workers.remove(worker)
        ray_cluster.bounded("ray.kill", lambda: self.ray.kill(worker, no_restart=True), SHUTDOWN_S)
        replacement = self._start()
        self._await_ready(replacement)
        return replacement

    def run(self, batches: Sequence[Sequence[PromptRequest]]) -> Iterator[tuple[Sequence[PromptRequest], Rendered]]:
        ray = self.ray
        pending = collections.deque(range(len(batches)))
        retries: collections.Counter[int] = collections.Counter()
        idle = list(self.workers)
        in_flight: dict[Any, tuple[Any, int]] = {}
        while pending or in_flight:
            while idle and pending:
                worker, index = idle.pop(0), pending.popleft()
                in_flight[worker.render.remote(payload(batches[index]))] = (worker, index)
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            worker, index = in_flight.pop(ref)
            lines = _lines(batches[index])
            try:
                rendered = ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # the pipeline raised on this batch
                cause = getattr(err, "cause", None)
                why = cause.one_line() if isinstance(cause, RunnerError) else ray_cluster.one_line(cause or err)
                raise WorkerError(f"a worker failed on prompt lines {lines}: {why}",
                                  getattr(cause, "exit_code", 1)) from err  # fmt: skip
            except ray.exceptions.RayError as err:  # the worker died or became unreachable, or lost its result
                retries[index] += 1
                if retries[index] > self.settings.max_retries:
                    raise WorkerError(
                        f"the batch of prompt lines {lines} lost its worker {retries[index]} times "
                        f"(mode.max_retries={self.settings.max_retries}): {ray_cluster.one_line(err)}"
                    ) from err
                log.warning("a worker died (%s); the batch of lines %s goes to another worker",
                            ray_cluster.one_line(err), lines)  # fmt: skip
                pending.appendleft(index)
                idle.append(self._replace(worker))
                continue
            idle.append(worker)
            yield batches[index], rendered

    def close(self) -> None:
        ray = self.ray
        for worker in self.workers:
            ray_cluster.bounded("ray.kill", lambda w=worker: ray.kill(w, no_restart=True), SHUTDOWN_S)
        self.workers = []
        if self.owns_connection:  # a local Ray stops; a cluster is only disconnected from
            ray_cluster.bounded("ray.shutdown", ray.shutdown, SHUTDOWN_S)


def worker_room(nodes: Sequence[Mapping[str, Any]], settings: BatchSettings) -> int:
    """How many workers the alive nodes of `nodes` (ray.nodes()) can hold at once."""
    room = 0
    for node in nodes:
        if not node.get("Alive", True):
            continue
        have = node.get("Resources", {})
        fits = [int(have.get("CPU", 0.0) // settings.cpus_per_worker)]
        if settings.gpus_per_worker > 0:
            fits.append(int(have.get("GPU", 0.0) // settings.gpus_per_worker))
        room += min(fits)
    return room


def _lines(batch: Sequence[PromptRequest]) -> str:
    first, last = batch[0].line, batch[-1].line
    return str(first) if first == last else f"{first}-{last}"
