"""Every kind of bad request is a 400 in OpenAI's error shape naming the field and the value, and costs the
service nothing: it keeps serving."""

from __future__ import annotations

import json

import pytest

from tests.support.servers import TINY_MODEL, decode_png, serve_in_thread, wait_ready

# Small limits, so "above the limit" is cheap to ask for.
LIMITS = {"max_n": 2, "max_steps": 10, "max_pixels": 64 * 128}
GOOD = {"prompt": "a red fox", "size": "64x64", "steps": 2, "seed": 1}


def body(**changes):
    """The good request with fields changed (a value of ... removes the field)."""
    return json.dumps({key: value for key, value in {**GOOD, **changes}.items() if value is not ...})


# (raw body, the field `param` names, a fragment of the message)
OPENAI_BAD = [
    pytest.param(b'{"prompt": "a red fox",', None, "the request body is not valid JSON", id="malformed-json"),
    pytest.param(b"\xff\xfe", None, "the request body is not valid JSON", id="not-utf8"),
    pytest.param(b'["a red fox"]', None, "the request body must be a JSON object", id="body-a-list"),
    pytest.param(b'"a red fox"', None, "the request body must be a JSON object", id="body-a-string"),
    pytest.param(body(prompt=...), "prompt", "'prompt' is required", id="prompt-missing"),
    pytest.param(body(prompt=None), "prompt", "'prompt' is required", id="prompt-null"),
    pytest.param(body(prompt=5), "prompt", "'prompt' must be a string, got int", id="prompt-int"),
    pytest.param(body(prompt=["a", "b"]), "prompt", "'prompt' must be a string, got list", id="prompt-list"),
    pytest.param(body(prompt=" \n"), "prompt", "'prompt' must not be empty", id="prompt-blank"),
    pytest.param(body(prompt="x" * 20_001), "prompt", "'prompt' has 20001 characters; at most 20000", id="prompt-long"),
    pytest.param(
        body(model="dall-e-3"),
        "model",
        f"model 'dall-e-3' is not served here; this service runs '{TINY_MODEL}'",
        id="model-other",
    ),
    pytest.param(
        b'{"prompt": "a", "seed": 1' + b"0" * 5000 + b"}", None, "not valid JSON", id="int-beyond-digit-limit"
    ),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, None, "not valid JSON", id="nested-beyond-recursion-limit"),
    pytest.param(body(guidance=10**400), "guidance", "'guidance' is too large to be a number", id="guidance-huge-int"),
    pytest.param(body(n=0), "n", "'n'=0 is out of range: allowed 1 to 2", id="n-zero"),
    pytest.param(body(n=3), "n", "'n'=3 is out of range: allowed 1 to 2", id="n-above-max_n"),
    pytest.param(body(n=1.5), "n", "'n'=1.5 must be an integer", id="n-float"),
    pytest.param(body(n=True), "n", "'n'=True must be an integer", id="n-bool"),
    pytest.param(body(n="2"), "n", "'n'='2' must be an integer", id="n-string"),
    pytest.param(body(size="64"), "size", "'size'='64' must be 'WIDTHxHEIGHT'", id="size-one-number"),
    pytest.param(body(size=64), "size", "'size'=64 must be 'WIDTHxHEIGHT'", id="size-int"),
    pytest.param(body(size="64*64"), "size", "'size'='64*64' must be 'WIDTHxHEIGHT'", id="size-star"),
    pytest.param(
        body(size="60x64"),
        "size",
        f"size 60x64: width and height must be positive multiples of 8 for model={TINY_MODEL}",
        id="size-not-multiple-of-8",
    ),
    pytest.param(
        body(size="0x64"), "size", "size 0x64: width and height must be positive multiples of 8", id="size-zero"
    ),
    pytest.param(
        body(size="128x128"),
        "size",
        "size 128x128 has 16384 pixels; this service allows at most 8192",
        id="size-above-max_pixels",
    ),
    pytest.param(body(steps=0), "steps", "'steps'=0 is out of range: allowed 1 to 10", id="steps-zero"),
    pytest.param(body(steps=11), "steps", "'steps'=11 is out of range: allowed 1 to 10", id="steps-above-max_steps"),
    pytest.param(body(steps=2.5), "steps", "'steps'=2.5 must be an integer", id="steps-float"),
    pytest.param(body(guidance=-1), "guidance", "'guidance'=-1 must be >= 0", id="guidance-negative"),
    pytest.param(body(guidance="7"), "guidance", "'guidance'='7' must be a number", id="guidance-string"),
    pytest.param(
        b'{"prompt": "a red fox", "guidance": NaN}',
        "guidance",
        "'guidance'=nan must be a finite number",
        id="guidance-nan",
    ),
    pytest.param(
        b'{"prompt": "a red fox", "guidance": Infinity}',
        "guidance",
        "'guidance'=inf must be a finite number",
        id="guidance-inf",
    ),
    # The pipeline's own check (the CLI's message), after the service's.
    pytest.param(
        body(guidance_rescale=1.5),
        "guidance_rescale",
        "guidance_rescale=1.5 must be in [0, 1]",
        id="guidance_rescale-above-1",
    ),
    pytest.param(
        body(response_format="url"),
        "response_format",
        "response_format 'url' is not supported; allowed: b64_json",
        id="response_format-url",
    ),
    pytest.param(
        body(output_format="jpeg"), "output_format", "output_format 'jpeg' is not supported", id="output_format-jpeg"
    ),
    pytest.param(body(stream=True), "stream", "stream=true is not supported", id="stream"),
    pytest.param(body(seed=-1), "seed", "'seed'=-1 is out of range: allowed 0 to 2**63-1", id="seed-negative"),
    pytest.param(body(seed=2**63), "seed", f"'seed'={2**63} is out of range", id="seed-2**63"),
    pytest.param(body(seed=1.5), "seed", "'seed'=1.5 must be an integer", id="seed-float"),
    pytest.param(body(seed="3"), "seed", "'seed'='3' must be an integer", id="seed-string"),
    pytest.param(
        body(negative_prompt=5),
        "negative_prompt",
        "'negative_prompt' must be a string, got int",
        id="negative_prompt-int",
    ),
    pytest.param(
        body(negative_prompt=["blurry"]),
        "negative_prompt",
        "'negative_prompt' must be a string, got list",
        id="negative_prompt-list",
    ),
    pytest.param(body(cfg_scale=7), "cfg_scale", "unrecognized request argument(s): cfg_scale", id="unknown-field"),
]

A1111_GOOD = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "seed": 1, "cfg_scale": 7}


def a1111_body(**changes):
    return json.dumps({key: value for key, value in {**A1111_GOOD, **changes}.items() if value is not ...})


A1111_BAD = [
    pytest.param(b"{", None, "not valid JSON", id="malformed-json"),
    pytest.param(b"[]", None, "the request body must be a JSON object", id="body-a-list"),
    pytest.param(a1111_body(prompt=...), "prompt", "'prompt' is required", id="prompt-missing"),
    pytest.param(
        a1111_body(width=100),
        "width",
        "size 100x64: width and height must be positive multiples of 8",
        id="width-not-multiple-of-8",
    ),
    pytest.param(
        a1111_body(height=100),
        "height",
        "size 64x100: width and height must be positive multiples of 8",
        id="height-not-multiple-of-8",
    ),
    pytest.param(a1111_body(width=0), "width", "'width'=0 is out of range", id="width-zero"),
    pytest.param(
        a1111_body(width=128, height=128),
        "width",
        "size 128x128 has 16384 pixels; this service allows at most 8192",
        id="size-above-max_pixels",
    ),
    pytest.param(a1111_body(cfg_scale=-1), "cfg_scale", "'cfg_scale'=-1 must be >= 0", id="cfg_scale-negative"),
    pytest.param(a1111_body(steps=0), "steps", "'steps'=0 is out of range: allowed 1 to 10", id="steps-zero"),
    pytest.param(a1111_body(seed=-2), "seed", "'seed'=-2 is out of range", id="seed-below-minus-1"),
    pytest.param(
        a1111_body(batch_size=3),
        "batch_size",
        "'batch_size'=3 is out of range: allowed 1 to 2",
        id="batch_size-above-max_n",
    ),
    pytest.param(
        a1111_body(batch_size=2, n_iter=2),
        "n_iter",
        "batch_size x n_iter = 4 images; at most 2",
        id="batch_size-times-n_iter-above-max_n",
    ),
    pytest.param(
        a1111_body(negative_prompt=0),
        "negative_prompt",
        "'negative_prompt' must be a string, got int",
        id="negative_prompt-int",
    ),
]


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    with serve_in_thread(tiny_pipeline, **LIMITS) as live:
        wait_ready(live)
        yield live


def post_raw(server, path: str, raw: str | bytes):
    return server.post(path, content=raw, headers={"content-type": "application/json"})


def assert_bad_request(response, param, fragment) -> None:
    assert response.status_code == 400, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert fragment in error["message"], error["message"]


@pytest.mark.parametrize("raw,param,fragment", OPENAI_BAD)
def test_openai_bad_request_is_400_naming_the_field(server, raw, param, fragment):
    assert_bad_request(post_raw(server, "/v1/images/generations", raw), param, fragment)
    assert server.get("/healthz").status_code == 200


@pytest.mark.parametrize("raw,param,fragment", A1111_BAD)
def test_a1111_bad_request_is_400_naming_the_field(server, raw, param, fragment):
    assert_bad_request(post_raw(server, "/sdapi/v1/txt2img", raw), param, fragment)
    assert server.get("/healthz").status_code == 200


def test_wrong_route_or_method_gets_the_same_error_shape(server):
    missing = server.post("/v1/images/edits", json=GOOD)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "POST /v1/images/edits: Not Found"
    wrong_method = server.get("/v1/images/generations")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["message"] == "GET /v1/images/generations: Method Not Allowed"


def test_after_every_bad_request_a_good_one_is_served(server):
    errors_before = server.metric("runner_request_errors_total", status="400")
    batches_before = server.metric("runner_batch_requests_count")
    images_before = server.metric("runner_images_generated_total")
    for case in OPENAI_BAD:
        assert post_raw(server, "/v1/images/generations", case.values[0]).status_code == 400, case.id
    for case in A1111_BAD:
        assert post_raw(server, "/sdapi/v1/txt2img", case.values[0]).status_code == 400, case.id
    assert server.metric("runner_request_errors_total", status="400") - errors_before == len(OPENAI_BAD) + len(
        A1111_BAD
    )
    good = post_raw(server, "/v1/images/generations", body())
    assert good.status_code == 200, good.text
    assert len(good.json()["data"]) == 1
    # No bad request reached the pipeline: only the good one was generated.
    assert server.metric("runner_batch_requests_count") - batches_before == 1
    assert server.metric("runner_images_generated_total") - images_before == 1


def test_a_body_beyond_the_limit_is_413_before_it_is_parsed(server):
    from runner.serve.app import MAX_BODY_BYTES

    huge = json.dumps({**GOOD, "negative_prompt": "x" * MAX_BODY_BYTES})
    answer = post_raw(server, "/v1/images/generations", huge)
    assert answer.status_code == 413
    assert answer.json()["error"]["message"] == f"the request body is larger than {MAX_BODY_BYTES} bytes"
    assert server.metric("runner_request_errors_total", status="413") >= 1
    assert server.get("/healthz").status_code == 200


def test_a_request_without_size_is_held_to_max_pixels_too(tiny_pipeline):
    # The model's default size (64x64 = 4096 pixels) is above this service's limit of 64x32.
    with serve_in_thread(tiny_pipeline, max_pixels=64 * 32) as live:
        wait_ready(live)
        answer = post_raw(live, "/v1/images/generations", body(size=...))
        assert_bad_request(answer, "size", "size 64x64 has 4096 pixels; this service allows at most 2048")


def test_prompts_are_text_never_config_interpolations(server, monkeypatch):
    # OmegaConf would resolve ${oc.env:...} in config text: a request must not read the server's environment.
    monkeypatch.setenv("RUNNER_TEST_SECRET", "hunter2")
    prompt = "a fox ${oc.env:RUNNER_TEST_SECRET}"
    answer = post_raw(server, "/v1/images/generations", body(prompt=prompt, negative_prompt="${oc.env:HOME}"))
    assert answer.status_code == 200, answer.text[:500]
    _, chunks = decode_png(answer.json()["data"][0]["b64_json"])
    assert chunks["prompt"] == prompt and chunks["negative_prompt"] == "${oc.env:HOME}"
    assert "hunter2" not in answer.text
