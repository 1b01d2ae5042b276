"""Memory modes on the CPU: every mode draws memory=none's images (<= 2 levels) on both engines, each does what
it says (moves recorded by the mode, decode calls counted on the VAE), its hooks come off again, and report.json
holds each stage's peak memory. On the CPU the host is the device: the moves run the same code and are counted,
but copy nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runner.api import Pipeline, load
from runner.hooks import ModelHook, hooks_in, register_hook, remove_hook
from tests.support.cases import slow_except
from tests.support.runs import max_pixel_diff

RUN = ["model=shapes_sd15", "steps=4", "seed=2", "quiet=true", "batch=2"]
LEVELS = 2  # the requirement; slicing changes the batch size of the decoder's kernels (measured 0-1)
ENGINES = ("torch", "paddle")
MODES = ("lean", "offload", "sequential")


def pipeline(engine: str, *overrides: str) -> Pipeline:
    return load([*RUN, f"backend={engine}", *overrides])


def images(pipe: Pipeline) -> np.ndarray:
    return np.stack(pipe.generate().arrays)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    """memory=none's images per engine, made once."""
    return {}


def reference_images(reference: dict[str, np.ndarray], engine: str) -> np.ndarray:
    if engine not in reference:
        reference[engine] = images(pipeline(engine, "memory=none"))
    return reference[engine]


def component_hooks(pipe: Pipeline) -> dict[str, dict[str, list[str]]]:
    return {role: hooks_in(c) for role, c in pipe.built.components.items() if hooks_in(c)}


@pytest.mark.parametrize(
    "engine,mode",
    slow_except(
        [(e, m) for e in ENGINES for m in MODES], ("torch", "lean"), ("torch", "sequential"), ("paddle", "offload")
    ),
)
def test_every_mode_draws_the_images_of_memory_none(engine, mode, reference):
    if engine == "paddle":
        pytest.importorskip("paddle")
    pipe = pipeline(engine, f"memory={mode}")
    assert max_pixel_diff(images(pipe), reference_images(reference, engine)) <= LEVELS
    # A second run brings back what the first sent to the host, and draws the same images.
    assert max_pixel_diff(images(pipe), reference_images(reference, engine)) <= LEVELS


class CountCalls(ModelHook):
    def __init__(self) -> None:
        self.batches: list[int] = []

    def pre_forward(self, module, args, kwargs):
        self.batches.append(int(args[0].shape[0]))
        return args, kwargs


def test_lean_sends_the_text_encoder_to_host_after_encoding_and_decodes_one_image_at_a_time():
    pipe = pipeline("torch", "memory=lean")
    vae = pipe.built.components["vae"]
    # The VAE's per-image decode (diffusers' AutoencoderKL._decode), counted from outside the mode.
    counter = register_hook(vae, "test.count", CountCalls(), method="_decode")
    try:
        first = pipe.generate().report["memory"]
        assert counter.batches == [1, 1]  # batch=2: two single-image decodes
        assert first["placement_after_run"] == {"text_encoder": "host"}
        assert first["moves"] == {"text_encoder": {"device": 0, "host": 1}}  # loaded on the device, sent away
        assert first["decode"] == {"vae": {"decode_calls": 1, "sliced_calls": 1, "tiled_calls": 0}}
        second = pipe.generate().report["memory"]
        assert second["moves"] == {"text_encoder": {"device": 1, "host": 1}}  # back for encoding, away after it
    finally:
        remove_hook(vae, "test.count", method="_decode")
    # The slicing lives only inside the hooked call: the VAE's own switches are as diffusers left them.
    assert (vae.use_slicing, vae.use_tiling) == (False, False)


@pytest.mark.parametrize("engine", slow_except(ENGINES, "torch"))
def test_offload_moves_each_component_once_per_run_not_per_call(engine):
    if engine == "paddle":
        pytest.importorskip("paddle")
    pipe = pipeline(engine, "memory=offload")
    report = pipe.generate().report
    # The UNet is called 2 x 4 times (CFG) and moves in and out once.
    assert report["memory"]["moves"] == {role: {"device": 1, "host": 1} for role in ("text_encoder", "unet", "vae")}
    assert report["memory"]["placement_after_run"] == dict.fromkeys(("text_encoder", "unet", "vae"), "host")


def test_offload_and_sequential_hooks_are_installed_and_removed():
    offload = pipeline("torch", "memory=offload")
    assert component_hooks(offload) == {"text_encoder": {"forward": ["memory"]}, "unet": {"forward": ["memory"]},
                                        "vae": {"decode": ["memory"]}}  # fmt: skip
    offload.built.memory.remove()
    assert component_hooks(offload) == {}
    assert offload.built.memory.residency is None

    sequential = pipeline("torch", "memory=sequential")
    hooked = component_hooks(sequential)
    report = sequential.generate().report["memory"]["layers"]
    layers = sum(len(paths) for paths in hooked.values())
    assert layers == report["hooked"] > 100
    assert report["to_device"] == report["to_host"] >= layers  # every hooked layer ran at least once
    sequential.built.memory.remove()
    assert component_hooks(sequential) == {}
    # Removed, the pipeline draws what it drew with the hooks on.
    before = images(pipeline("torch", "memory=none"))
    assert max_pixel_diff(images(sequential), before) == 0


def test_report_json_holds_each_stages_peak_memory(tmp_path: Path):
    pipe = pipeline("torch", "memory=lean")
    pipe.generate().save(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    stages = ["encode_prompt", "prepare_latents", "denoise", "decode"]
    assert list(report["stage_peak_memory_mb"]) == stages
    assert all(mb > 0 for mb in report["stage_peak_memory_mb"].values())
    assert report["peak_memory_mb"] == max(report["stage_peak_memory_mb"].values())
    assert report["peak_memory_source"] == "host_rss"  # CPU: the process's resident set (CUDA: device_allocator)
    assert report["run"]["memory"] == "lean" and report["memory"]["mode"] == "lean"


TILED = ["height=128", "width=128", "batch=1", "memory=lean", "memory.tile_threshold=64", "memory.tile_size=64"]


@pytest.mark.parametrize("engine", slow_except(ENGINES, "torch"))
def test_tiling_engages_above_the_threshold_only(engine):
    if engine == "paddle":
        pytest.importorskip("paddle")
    tiled = pipeline(engine, *TILED)
    assert tiled.generate().report["memory"]["decode"]["vae"]["tiled_calls"] == 1
    below = pipeline(engine, *TILED[:-2], "memory.tile_threshold=128", "memory.tile_size=64")
    assert below.generate().report["memory"]["decode"]["vae"]["tiled_calls"] == 0


@pytest.mark.xfail(
    strict=True,
    reason="the libraries' tiled decode (per-tile GroupNorm statistics, mid-block attention within a tile) is not "
    "seamless: measured 96 levels max (mean 17) at 128 px in 64 px tiles; no overlap or blend reaches 2",
)
def test_tiled_decode_matches_the_untiled_one_within_two_levels():
    tiled = images(pipeline("torch", *TILED))
    untiled = images(pipeline("torch", *TILED, "memory.vae_tiling=false"))
    assert max_pixel_diff(tiled, untiled) <= LEVELS
