"""AUTOMATIC1111's txt2img endpoint as its clients (the `webuiapi` package) meet it: every field they send is
taken, the answer has their shape, and the image is the OpenAI endpoint's for the same settings."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.runs import max_pixel_diff
from tests.support.servers import TINY_MODEL, decode_png, serve_in_thread, wait_ready

PROMPT = "a lighthouse at dusk"


def webuiapi_payload(**changes):
    """The body `webuiapi.WebUIApi().txt2img(...)` posts (its defaults; webuiapi 0.9), with `changes`."""
    payload = {
        "enable_hr": False,
        "hr_scale": 2,
        "hr_upscaler": "Latent",
        "hr_second_pass_steps": 0,
        "hr_resize_x": 0,
        "hr_resize_y": 0,
        "denoising_strength": 0.7,
        "firstphase_width": 0,
        "firstphase_height": 0,
        "prompt": PROMPT,
        "styles": [],
        "seed": 3,
        "subseed": -1,
        "subseed_strength": 0.0,
        "seed_resize_from_h": 0,
        "seed_resize_from_w": 0,
        "batch_size": 1,
        "n_iter": 1,
        "steps": 2,
        "cfg_scale": 7.0,
        "width": 64,
        "height": 64,
        "restore_faces": False,
        "tiling": False,
        "do_not_save_samples": False,
        "do_not_save_grid": False,
        "negative_prompt": "blurry",
        "eta": 1.0,
        "s_churn": 0,
        "s_tmax": 0,
        "s_tmin": 0,
        "s_noise": 1,
        "override_settings": {},
        "override_settings_restore_afterwards": True,
        "sampler_name": "Euler a",
        "sampler_index": "Euler a",
        "script_name": None,
        "script_args": [],
        "send_images": True,
        "save_images": False,
        "alwayson_scripts": {},
    }
    return {**payload, **changes}


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    with serve_in_thread(tiny_pipeline) as live:
        wait_ready(live)
        yield live


def txt2img(server, **changes):
    response = server.post("/sdapi/v1/txt2img", json=webuiapi_payload(**changes))
    assert response.status_code == 200, response.text[:500]
    return response.json()


def test_answer_has_webuis_shape_and_the_openai_endpoints_image(server):
    answer = txt2img(server)
    assert set(answer) == {"images", "parameters", "info"}
    assert isinstance(answer["info"], str)  # a JSON document in a string, as the web UI sends it
    info = json.loads(answer["info"])
    # The sampler is the loaded pipeline's (PNDM, "PLMS" in the web UI's words), not the one asked for.
    infotext = (
        f"{PROMPT}\nNegative prompt: blurry\nSteps: 2, Sampler: PLMS, CFG scale: 7, Seed: 3, Size: 64x64, "
        f"Model: {TINY_MODEL}"
    )
    assert info["infotexts"] == [infotext]
    assert (info["seed"], info["all_seeds"], info["all_prompts"], info["all_negative_prompts"]) == (
        3,
        [3],
        [PROMPT],
        ["blurry"],
    )
    assert (info["sampler_name"], info["sd_model_name"], info["steps"], info["cfg_scale"]) == ("PLMS", TINY_MODEL, 2, 7)
    assert answer["parameters"]["seed"] == 3 and answer["parameters"]["width"] == 64
    [image] = answer["images"]
    pixels, chunks = decode_png(image)
    assert chunks["parameters"] == infotext

    openai = server.post(
        "/v1/images/generations",
        json={"prompt": PROMPT, "negative_prompt": "blurry", "seed": 3, "steps": 2, "guidance": 7, "size": "64x64"},
    )
    assert openai.status_code == 200, openai.text[:500]
    openai_pixels, openai_chunks = decode_png(openai.json()["data"][0]["b64_json"])
    # Both are one lone request of the same settings: the same kernels on the same shapes.
    assert max_pixel_diff(pixels, openai_pixels) == 0 and chunks == openai_chunks


def test_seed_minus_one_draws_a_seed_and_reports_it(server):
    first, second = txt2img(server, seed=-1), txt2img(server, seed=-1)
    seeds = [json.loads(answer["info"])["seed"] for answer in (first, second)]
    assert all(isinstance(seed, int) and 0 <= seed < 2**32 for seed in seeds) and seeds[0] != seeds[1]
    pixels = []
    for answer, seed in zip((first, second), seeds, strict=True):
        info = json.loads(answer["info"])
        assert info["all_seeds"] == [seed] and answer["parameters"]["seed"] == seed
        assert re.search(rf"\bSeed: {seed},", info["infotexts"][0])
        image, chunks = decode_png(answer["images"][0])
        assert chunks["seed"] == str(seed)
        pixels.append(image)
    assert max_pixel_diff(*pixels) > 10
    # The reported seed gives the image again.
    again, _ = decode_png(txt2img(server, seed=seeds[0])["images"][0])
    assert max_pixel_diff(again, pixels[0]) == 0


@pytest.mark.slow
def test_batch_size_and_n_iter_multiply(server):
    answer = txt2img(server, batch_size=2, n_iter=2, negative_prompt="")
    info = json.loads(answer["info"])
    assert len(answer["images"]) == 4 and len(info["infotexts"]) == 4
    assert info["negative_prompt"] == "" and "Negative prompt" not in info["infotexts"][0]
    images = [decode_png(image)[0] for image in answer["images"]]
    assert all(max_pixel_diff(a, b) > 10 for i, a in enumerate(images) for b in images[i + 1 :])
