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
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from runner import ray_cluster
from runner.api import Pipeline
from runner.batch.prompts import PromptRequest
from runner.errors import RunnerError
from runner.schema import BatchSettings, RaySettings

log = logging.getLogger(__name__)

# One batch as sent to a worker: (line, params) per request. Its answer: (line, PNG bytes per image) per request.
Payload = list[tuple[int, dict[str, Any]]]
Rendered = list[tuple[int, list[bytes]]]
SHUTDOWN_S = 30.0


def payload(batch: Sequence[PromptRequest]) -> Payload:
    return [(request.line, request.params) for request in batch]


def render(pipe: Pipeline, batch: Payload) -> Rendered:
    """Draw one planned batch: one denoise batch, or one request at a time on samplers whose step noise
    cannot be shared (Pipeline.merges_requests); each request gets the images it gets alone."""
    requests = [pipe.settings(**params) for _, params in batch]
    if pipe.merges_requests:
        generations = pipe.generate_batch(requests)
    else:
        generations = [pipe.generate_batch([request])[0] for request in requests]
    return [(line, [g.png(i) for i in range(len(g.arrays))]) for (line, _), g in zip(batch, generations)]


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
    """A Ray actor: one pipeline, loaded once. A load failure is kept and raised by every render call (an
    actor whose constructor raises is restarted by Ray instead of reporting why)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.failure: BaseException | None = None
        try:
            self.pipe: Pipeline | None = Pipeline.from_config(config)
        except Exception as err:  # noqa: BLE001 - handed to the driver by render()
            self.pipe, self.failure = None, err

    def render(self, batch: Payload) -> Rendered:
        if self.pipe is None:
            raise (
                self.failure
                if isinstance(self.failure, RunnerError)
                else RunnerError(
                    f"a worker could not load the pipeline: {ray_cluster.one_line(self.failure or RuntimeError())}"
                )
            )
        return render(self.pipe, batch)

    def ready(self) -> tuple[int, BaseException | None]:
        """(this worker's process id, why it could not load the pipeline or None)."""
        return os.getpid(), self.failure


class RayWorkers:
    """mode.workers Ray actors (on ray.address, or a local Ray this process starts and stops)."""

    def __init__(self, config: Mapping[str, Any], settings: BatchSettings, ray_settings: RaySettings) -> None:
        self.ray = ray_cluster.import_ray("mode=batch with mode.workers > 1 or ray.address")
        self.config = dict(config)
        self.settings = settings
        self.local = ray_cluster.connect(self.ray, ray_settings)
        self.prefix = f"diffusion-runner-batch-{uuid.uuid4().hex[:8]}"
        self.started = 0
        try:
            needs = {"CPU": ("mode.cpus_per_worker", settings.cpus_per_worker),
                     "GPU": ("mode.gpus_per_worker", settings.gpus_per_worker)}  # fmt: skip
            ray_cluster.check_fits(self.ray.nodes(), needs, "worker", "lower them, e.g. mode.gpus_per_worker=0")
            self.actor = self.ray.remote(BatchWorker)
            self.workers = [self._start() for _ in range(settings.workers)]
            # Wait for every pipeline to load, so that a load failure stops the job before anything is drawn
            # and images/s counts drawing only.
            try:
                loaded = self.ray.get([worker.ready.remote() for worker in self.workers])
            except self.ray.exceptions.RayActorError as err:  # its process died (out of memory, killed)
                raise RunnerError(f"a worker died while loading the pipeline: {ray_cluster.one_line(err)}") from err
            for _, failure in loaded:
                if failure is not None:
                    raise (
                        failure
                        if isinstance(failure, RunnerError)
                        else RunnerError(f"a worker could not load the pipeline: {ray_cluster.one_line(failure)}")
                    )
        except BaseException:
            self.close()
            raise

    def _start(self) -> Any:
        """A new actor; named `<prefix>-worker-<n>` in the Ray namespace, so an operator can find it."""
        name = f"{self.prefix}-worker-{self.started}"
        self.started += 1
        s = self.settings
        options = {"name": name, "num_cpus": s.cpus_per_worker, "num_gpus": s.gpus_per_worker, "max_restarts": 0}
        return self.actor.options(**options).remote(self.config)

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
            except ray.exceptions.RayActorError as err:
                retries[index] += 1
                if retries[index] > self.settings.max_retries:
                    raise RunnerError(
                        f"the batch of prompt lines {lines} lost its worker {retries[index]} times "
                        f"(mode.max_retries={self.settings.max_retries}): {ray_cluster.one_line(err)}"
                    ) from err
                log.warning("a worker died (%s); the batch of lines %s goes to another worker",
                            ray_cluster.one_line(err), lines)  # fmt: skip
                self.workers.remove(worker)
                replacement = self._start()
                self.workers.append(replacement)
                idle.append(replacement)
                pending.appendleft(index)
                continue
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, RunnerError):
                    raise cause from None
                why = ray_cluster.one_line(cause or err)
                raise RunnerError(f"a worker failed on prompt lines {lines}: {why}") from err
            idle.append(worker)
            yield batches[index], rendered

    def close(self) -> None:
        ray = self.ray
        for worker in getattr(self, "workers", []):
            ray_cluster.bounded("ray.kill", lambda w=worker: ray.kill(w), SHUTDOWN_S)
        if self.local:
            ray_cluster.bounded("ray.shutdown", ray.shutdown, SHUTDOWN_S)


def _lines(batch: Sequence[PromptRequest]) -> str:
    first, last = batch[0].line, batch[-1].line
    return str(first) if first == last else f"{first}-{last}"
