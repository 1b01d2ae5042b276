"""Overload and impatience: a full queue answers 429 with Retry-After, a request not answered in time 504, and a
request whose client went away before its batch started never runs. The worker is held on a gate the test
opens, so every state is reached deterministically."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.servers import GatedPipeline, serve_in_thread, wait_queued, wait_ready, wait_until

URL = "/v1/images/generations"


def body(seed: int, steps: int = 2):
    return {"prompt": "a red fox", "size": "64x64", "steps": steps, "seed": seed}


def assert_error(response, status: int, kind: str, fragment: str) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["type"] == kind and fragment in error["message"], error
    return error


@pytest.fixture
def gated(tiny_pipeline):
    return GatedPipeline(tiny_pipeline)


def test_a_full_queue_answers_429_with_retry_after(gated):
    with serve_in_thread(gated, max_batch=1, max_queue=1, retry_after_s=3) as live, ThreadPoolExecutor(2) as pool:
        wait_ready(live)
        with gated.held():
            running = pool.submit(live.post, URL, json=body(1))
            gated.wait_calls(1)
            waiting = pool.submit(live.post, URL, json=body(2))
            wait_queued(live, 1)
            flooded = live.post(URL, json=body(3))
            assert_error(flooded, 429, "rate_limit_error", "the queue holds 1 requests (serve.max_queue)")
            assert flooded.headers["retry-after"] == "3"
            assert live.metric("runner_request_errors_total", status="429") == 1
            assert live.metric("runner_requests_total", endpoint="openai", status="429") == 1
        assert running.result(60).status_code == 200 and waiting.result(60).status_code == 200
        # The refused request never ran; once the queue has room, a request is taken again.
        assert live.post(URL, json=body(4)).status_code == 200
        assert gated.seeds_run() == [[1], [2], [4]]


def test_a_request_not_answered_in_time_gets_504_and_the_service_recovers(gated):
    timeout_s = 2.0  # long enough for a tiny request once the worker is free, on a busy CPU
    with serve_in_thread(gated, max_batch=1, request_timeout_s=timeout_s) as live, ThreadPoolExecutor(2) as pool:
        wait_ready(live)
        with gated.held():
            started = time.monotonic()
            running = pool.submit(live.post, URL, json=body(1))
            gated.wait_calls(1)
            queued = pool.submit(live.post, URL, json=body(2))
            for future in (running, queued):  # one held in its batch, one waiting behind it
                assert_error(future.result(30), 504, "timeout", f"no answer within serve.request_timeout_s={timeout_s}")
            assert timeout_s <= time.monotonic() - started < timeout_s + 10
        wait_until(live.service.idle, 30, "the held batch to finish")
        good = live.post(URL, json=body(3, steps=1))
        assert good.status_code == 200, good.text[:500]
        # The timed-out queued request was dropped unrun; the held one ran (its answer was discarded).
        assert gated.seeds_run() == [[1], [3]]
        assert live.metric("runner_request_errors_total", status="504") == 2


def test_a_client_gone_before_its_batch_starts_costs_nothing(gated):
    with serve_in_thread(gated, max_batch=1) as live, ThreadPoolExecutor(1) as pool:
        wait_ready(live)
        with gated.held():
            running = pool.submit(live.post, URL, json=body(1))
            gated.wait_calls(1)
            # A client of its own gives up on its queued request and closes its connection.
            with httpx.Client(trust_env=False) as impatient, pytest.raises(httpx.ReadTimeout):
                impatient.post(live.url + URL, json=body(2), timeout=httpx.Timeout(30, read=0.5))
            wait_until(
                lambda: live.metric("runner_requests_cancelled_total") == 1, 10, "the service to notice the client left"
            )
            assert live.service.batcher.depth() == 0
            assert live.metric("runner_requests_total", endpoint="openai", status="499") == 1
        assert running.result(60).status_code == 200
        wait_until(live.service.idle, 30, "the worker to be idle")
        assert gated.seeds_run() == [[1]]  # request 2 never reached the pipeline
