"""Dynamic batching: concurrent requests that can share a denoise batch run as one, and each still gets the
image it gets alone (its own seed's noise), within one pixel level."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.support.runs import max_pixel_diff
from tests.support.servers import GatedPipeline, decode_png, serve_in_thread, wait_queued, wait_ready

URL = "/v1/images/generations"
COMMON = {"size": "64x64", "steps": 2, "guidance": 7.5}
REQUESTS = [
    {"prompt": "a red fox", "negative_prompt": "blurry", "seed": 11},
    {"prompt": "a blue whale", "negative_prompt": "low quality", "seed": 12},
    {"prompt": "a green field", "negative_prompt": "", "seed": 13},
    {"prompt": "a yellow taxi at night", "negative_prompt": "people", "seed": 14},
]
# Another size: another batch key, so it never joins the others.
BLOCKER = {"prompt": "a wall", "size": "64x56", "steps": 2, "seed": 99}


def image_of(response):
    assert response.status_code == 200, response.text[:500]
    [item] = response.json()["data"]
    return decode_png(item["b64_json"])[0]


def test_concurrent_requests_share_a_batch_and_get_their_lone_images(tiny_pipeline):
    pipe = GatedPipeline(tiny_pipeline)
    with serve_in_thread(pipe, max_batch=4, max_wait_ms=500) as live, ThreadPoolExecutor(5) as pool:
        wait_ready(live)
        # Deterministic merging: hold the worker on a blocker until all four requests are queued.
        with pipe.held():
            blocker = pool.submit(live.post, URL, json=BLOCKER)
            pipe.wait_calls(1)
            merged = [pool.submit(live.post, URL, json={**COMMON, **body}) for body in REQUESTS]
            wait_queued(live, 4)
        assert blocker.result(60).status_code == 200
        merged_images = [image_of(future.result(60)) for future in merged]
        seeds = [body["seed"] for body in REQUESTS]
        assert [sorted(call) for call in pipe.seeds_run()] == [[99], seeds]

        m = live.metrics()
        assert m[("runner_batch_requests_count", frozenset())] == 2  # the blocker's batch and the merged one
        assert m[("runner_batch_requests_sum", frozenset())] == 1 + 4
        assert m[("runner_batch_requests_bucket", frozenset({("le", "3.0")}))] == 1  # only the blocker's
        assert m[("runner_batch_size_sum", frozenset())] == 1 + 4

        # Each request alone, one after the other (each waits max_wait_ms for company that never comes).
        lone_images = [image_of(live.post(URL, json={**COMMON, **body})) for body in REQUESTS]
        assert pipe.seeds_run()[2:] == [[seed] for seed in seeds]

    for body, merged_image, lone_image in zip(REQUESTS, merged_images, lone_images, strict=True):
        # Batch-size rounding of the kernels: measured 1 level (in a few pixels) for three of the four.
        assert max_pixel_diff(merged_image, lone_image) <= 1, body
    for i, image in enumerate(merged_images):
        for other in merged_images[i + 1 :]:
            assert max_pixel_diff(image, other) > 10
