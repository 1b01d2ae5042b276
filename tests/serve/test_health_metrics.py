"""/healthz through the service's life (loading, ready, failed) and what /metrics exposes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import (
    TINY_MODEL,
    GatedPipeline,
    serve_in_thread,
    wait_queued,
    wait_ready,
    wait_until,
)

URL = "/v1/images/generations"
GOOD = {"prompt": "a red fox", "size": "64x64", "steps": 2, "seed": 1}


def test_healthz_is_503_while_loading_then_200(tiny_pipeline):
    release = threading.Event()

    def loader():
        assert release.wait(30), "the test never released the loader"
        return tiny_pipeline

    try:
        with serve_in_thread(loader=loader) as live:
            health = live.get("/healthz")
            assert (health.status_code, health.json()) == (503, {"status": "loading"})
            refused = live.post(URL, json=GOOD)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert refused.json()["error"] == {
                "message": "the model is still loading",
                "type": "service_unavailable",
                "param": None,
                "code": None,
            }
            assert live.get("/v1/models").json() == {"object": "list", "data": []}
            assert live.metric("runner_ready") == 0
            release.set()
            wait_ready(live)
            assert live.get("/healthz").json() == {"status": "ready", "model": TINY_MODEL}
            assert [m["id"] for m in live.get("/v1/models").json()["data"]] == [TINY_MODEL]
            assert live.metric("runner_ready") == 1
            assert live.post(URL, json=GOOD).status_code == 200
    finally:
        release.set()


def test_healthz_is_503_with_the_error_when_loading_fails():
    def loader():
        raise FileNotFoundError("no model_index.json in /models/missing")

    with serve_in_thread(loader=loader) as live:
        wait_until(lambda: live.get("/healthz").json()["status"] == "failed", 30, "the load to fail")
        health = live.get("/healthz")
        error = "FileNotFoundError: no model_index.json in /models/missing"
        assert (health.status_code, health.json()) == (503, {"status": "failed", "error": error})
        refused = live.post(URL, json=GOOD)
        assert refused.status_code == 503
        assert refused.json()["error"]["message"] == f"the model failed to load: {error}"
        assert live.metric("runner_ready") == 0


def test_metrics_expose_load_queue_images_memory_and_batch_sizes(tiny_pipeline):
    gated = GatedPipeline(tiny_pipeline)
    with serve_in_thread(gated, max_batch=2) as live, ThreadPoolExecutor(2) as pool:
        wait_ready(live)
        with gated.held():
            running = pool.submit(live.post, URL, json=GOOD)
            gated.wait_calls(1)
            waiting = pool.submit(live.post, URL, json={**GOOD, "seed": 2, "n": 2})
            wait_queued(live, 1)
            assert live.metric("runner_requests_in_flight") == 2
            assert live.metric("runner_queue_depth") == 1
            assert live.metric("runner_images_generated_total") == 0
        assert running.result(60).status_code == 200 and waiting.result(60).status_code == 200
        wait_until(live.service.idle, 30, "the worker to be idle")

        page = live.get("/metrics")
        assert page.headers["content-type"].startswith("text/plain; version=")
        families = {family.name: family for family in text_string_to_metric_families(page.text)}
        m = live.metrics()
        assert m[("runner_requests_in_flight", frozenset())] == 0
        assert m[("runner_queue_depth", frozenset())] == 0
        assert m[("runner_images_generated_total", frozenset())] == 3
        assert m[("runner_requests_total", frozenset({("endpoint", "openai"), ("status", "200")}))] == 2
        # The report's peak (process RSS on a CPU) in bytes: hundreds of MiB for torch and the tiny model.
        assert m[("runner_device_peak_memory_bytes", frozenset())] > 50 * 2**20
        [batch_size] = [f for f in families.values() if f.type == "histogram" and f.name.endswith("batch_size")]
        assert m[(f"{batch_size.name}_count", frozenset())] == 2  # two batches: one and two images
        assert m[(f"{batch_size.name}_sum", frozenset())] == 3
        assert m[(f"{batch_size.name}_bucket", frozenset({("le", "1.0")}))] == 1
        assert m[("runner_queue_wait_seconds_count", frozenset())] == 2
        latency = m[("runner_request_latency_seconds_count", frozenset({("endpoint", "openai")}))]
        assert latency == 2
