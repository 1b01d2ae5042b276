"""The OpenAI images endpoint as the official `openai` client meets it: its images and PNG text chunks are the
Python API's and the CLI's for the same settings."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
from PIL import Image

from runner.images import read_png_metadata
from runner.schema import ServeSettings
from tests.support.runs import max_pixel_diff, run_cli
from tests.support.servers import TINY_MODEL as MODEL
from tests.support.servers import decode_png, serve_in_thread, wait_ready

PROMPT = "a red fox in the snow"
EXTRA = {"seed": 3, "steps": 2, "guidance": 7.0, "negative_prompt": "blurry"}
# The A1111 infotext of those settings (the `parameters` chunk; PNDM's sampler label is PLMS).
INFOTEXT = (
    f"{PROMPT}\nNegative prompt: blurry\nSteps: 2, Sampler: PLMS, CFG scale: 7, Seed: 3, Size: 64x64, Model: {MODEL}"
)


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    with serve_in_thread(tiny_pipeline) as live:
        wait_ready(live)
        yield live


@pytest.fixture(scope="module")
def client(server):
    # No retries: a 429 or 5xx must reach the test, not be retried away.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def generate(client: openai.OpenAI, n: int = 1, **extra):
    response = client.images.generate(
        model=MODEL,
        prompt=PROMPT,
        size="64x64",
        response_format="b64_json",
        n=n,
        extra_body={**EXTRA, **extra},
    )
    return response


def test_the_client_lists_the_served_model(client):
    assert [model.id for model in client.models.list()] == [MODEL]


def test_images_are_the_python_api_images(client, tiny_pipeline):
    response = generate(client, n=2)
    assert len(response.data) == 2 and all(item.seed == 3 for item in response.data)
    served = [decode_png(item.b64_json) for item in response.data]
    direct = tiny_pipeline.generate(
        PROMPT, negative_prompt="blurry", seed=3, steps=2, guidance=7.0, height=64, width=64, batch=2
    )
    # A lone request is one generate_batch of the same settings: the same kernels on the same shapes.
    for (pixels, chunks), array, metadata in zip(served, direct.arrays, direct.metadata, strict=True):
        assert pixels.shape == (64, 64, 3)
        assert max_pixel_diff(pixels, array) == 0
        assert chunks == {key: str(value) for key, value in metadata.items()}
    # The two images of the request have noise of their own, and another seed gives another image.
    assert max_pixel_diff(served[0][0], served[1][0]) > 10
    other, _ = decode_png(generate(client, seed=4).data[0].b64_json)
    assert max_pixel_diff(other, served[0][0]) > 10


@pytest.mark.slow
def test_image_and_png_chunks_are_the_clis(client, tmp_path, one_thread_env):
    out = tmp_path / "run"
    proc = run_cli(
        [
            f"model={MODEL}",
            "backend=torch",
            f"prompt='{PROMPT}'",
            "negative_prompt=blurry",
            "seed=3",
            "steps=2",
            "guidance=7.0",
            "height=64",
            "width=64",
            "quiet=true",
            f"hydra.run.dir={out}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    served_b64 = generate(client).data[0].b64_json
    (tmp_path / "served.png").write_bytes(base64.b64decode(served_b64))
    served_pixels, _ = decode_png(served_b64)
    with Image.open(out / "image_000.png") as picture:
        cli_pixels = np.asarray(picture.convert("RGB"))
    # Another process, the same kernels on the same shapes and the same seeded generator.
    assert max_pixel_diff(served_pixels, cli_pixels) == 0
    served_chunks = read_png_metadata(tmp_path / "served.png")
    assert served_chunks == read_png_metadata(out / "image_000.png")
    assert served_chunks["parameters"] == INFOTEXT
    assert (served_chunks["seed"], served_chunks["backend"], served_chunks["steps"]) == ("3", "torch", "2")


def test_the_client_raises_the_error_the_service_names(client):
    with pytest.raises(openai.BadRequestError) as caught:
        generate(client, n=0)
    err = caught.value
    assert err.status_code == 400 and err.type == "invalid_request_error" and err.param == "n"
    # serve.max_n defaults to serve.max_batch: a request's images run in one batch.
    assert f"'n'=0 is out of range: allowed 1 to {ServeSettings().max_batch}" in err.message
