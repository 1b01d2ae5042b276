"""Faults stay with their requests: a merged batch that runs out of memory is retried one request at a time,
and a batch whose output is not finite fails its own requests (500) and nobody else's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from runner.api import NonFiniteOutputError
from tests.support.runs import max_pixel_diff
from tests.support.servers import GatedPipeline, decode_png, serve_in_thread, wait_queued, wait_ready

URL = "/v1/images/generations"
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"


def body(seed: int, prompt: str = "a red fox", size: str = "64x64"):
    return {"prompt": prompt, "size": size, "steps": 2, "guidance": 7.5, "seed": seed}


def image_of(response):
    assert response.status_code == 200, response.text[:500]
    return decode_png(response.json()["data"][0]["b64_json"])[0]


@pytest.fixture
def gated(tiny_pipeline):
    return GatedPipeline(tiny_pipeline)


def test_a_merged_batch_out_of_memory_is_retried_one_by_one(gated, tiny_pipeline):
    gated.fault = lambda requests: RuntimeError(OOM) if len(requests) > 1 else None
    seeds = [21, 22, 23]
    # max_batch=3 and a long max_wait_ms: the first request waits (bounded) until the other two joined it.
    with serve_in_thread(gated, max_batch=3, max_wait_ms=10_000) as live, ThreadPoolExecutor(3) as pool:
        wait_ready(live)
        futures = [pool.submit(live.post, URL, json=body(seed)) for seed in seeds]
        images = [image_of(future.result(60)) for future in futures]
        calls = gated.seeds_run()
        assert sorted(calls[0]) == seeds and sorted(calls[1:]) == [[seed] for seed in seeds]
        assert live.metric("runner_batch_oom_retries_total") == 1
        assert live.metric("runner_request_errors_total", status="500") == 0
    for seed, image in zip(seeds, images, strict=True):
        # Each ran alone in the retry: the Python API's lone image, the same kernels on the same shapes.
        lone = tiny_pipeline.generate("a red fox", seed=seed, steps=2, guidance=7.5, height=64, width=64)
        assert max_pixel_diff(image, lone.arrays[0]) == 0
    assert max_pixel_diff(images[0], images[1]) > 10


def test_a_lone_request_out_of_memory_is_a_500_saying_so(gated):
    gated.fault = lambda requests: RuntimeError(OOM)
    with serve_in_thread(gated) as live:
        wait_ready(live)
        response = live.post(URL, json=body(1))
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["type"] == "server_error"
        assert error["message"] == f"generation failed (out of memory): {OOM}"
        assert live.metric("runner_batch_oom_retries_total") == 0  # nothing to split
        assert live.metric("runner_request_errors_total", status="500") == 1


def test_a_non_finite_batch_fails_its_requests_only(gated):
    def poison(requests):
        if any(s.prompts[0] == "poison" for s in requests):
            return NonFiniteOutputError(f"the denoiser produced NaN/inf latents for {len(requests)} request(s)")
        return None

    gated.fault = poison
    with serve_in_thread(gated, max_batch=4) as live, ThreadPoolExecutor(4) as pool:
        wait_ready(live)
        with gated.held():
            blocker = pool.submit(live.post, URL, json=body(9, size="64x56"))
            gated.wait_calls(1)
            # Queued in this order: the poisoned request and an innocent one of the same batch key (they
            # share a batch), then one of another size (a batch of its own).
            futures = []
            for request in (body(1, prompt="poison"), body(2), body(3, size="56x64")):
                futures.append(pool.submit(live.post, URL, json=request))
                wait_queued(live, len(futures))
        assert blocker.result(60).status_code == 200
        poisoned, neighbour, other = (future.result(60) for future in futures)
        for response in (poisoned, neighbour):
            assert response.status_code == 500
            error = response.json()["error"]
            assert error["type"] == "server_error" and error["param"] is None
            assert error["message"].startswith("generation failed (NonFiniteOutputError): the denoiser produced NaN")
            assert "2 request(s)" in error["message"]
        assert other.status_code == 200
        assert [sorted(call) for call in gated.seeds_run()] == [[9], [1, 2], [3]]
        assert live.metric("runner_request_errors_total", status="500") == 2
        # The next request is served, and the service still reports ready.
        assert live.post(URL, json=body(4)).status_code == 200
        assert live.get("/healthz").json()["status"] == "ready"
