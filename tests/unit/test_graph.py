"""Stage contracts are checked before anything loads, with messages that name the problem."""

from __future__ import annotations

import pytest

from runner.errors import ConfigError
from runner.graph import build_graph, make_part
from runner.schema import StageSpec
from tests.support.configs import model_spec


def specs(*entries: tuple[str, str, dict]) -> list[StageSpec]:
    return [StageSpec(name=n, type=t, params=p) for n, t, p in entries]


SD_ROLES = ["tokenizer", "text_encoder", "unet", "vae", "scheduler"]
ENCODE = (
    "encode_prompt",
    "clip_text_encode",
    {"encoders": [{"tokenizer": "tokenizer", "text_encoder": "text_encoder"}]},
)
LATENTS = ("prepare_latents", "gaussian_latents", {})
DENOISE = ("denoise", "denoise_loop", {"predictor": {"type": "unet"}})
DECODE = ("decode", "vae_decode", {})


def test_sd_stage_list_passes_the_contract_check():
    stages = build_graph(specs(ENCODE, LATENTS, DENOISE, DECODE), SD_ROLES)
    assert [s.name for s in stages] == ["encode_prompt", "prepare_latents", "denoise", "decode"]
    assert stages[2].inputs[:3] == ("latents", "timesteps", "guidance")


def test_missing_input_names_the_stage_and_the_input():
    with pytest.raises(
        ConfigError, match=r"stage 'denoise' needs input 'prompt_embeds', which no earlier stage produces"
    ):
        build_graph(specs(LATENTS, DENOISE, DECODE), SD_ROLES)


def test_stage_order_matters():
    with pytest.raises(ConfigError, match=r"stage 'decode' needs input 'latents'"):
        build_graph(specs(DECODE, ENCODE, LATENTS, DENOISE), SD_ROLES)


def test_missing_component_is_named():
    with pytest.raises(
        ConfigError, match=r"stage 'prepare_latents' needs component 'vae', which the model does not define"
    ):
        build_graph(specs(ENCODE, LATENTS, DENOISE, DECODE), [r for r in SD_ROLES if r != "vae"])


def test_final_output_must_be_produced():
    with pytest.raises(ConfigError, match=r"never produces 'images'"):
        build_graph(specs(ENCODE, LATENTS, DENOISE), SD_ROLES)


def test_unknown_stage_parameter_lists_accepted_ones():
    bad = ("decode", "vae_decode", {"tile": True})
    expected = r"stage 'decode' \(vae_decode\) has no parameter 'tile'; it accepts: packed, vae"
    with pytest.raises(ConfigError, match=expected):
        build_graph(specs(ENCODE, LATENTS, DENOISE, bad), SD_ROLES)


def test_missing_required_parameter():
    with pytest.raises(ConfigError, match=r"needs parameter 'encoders'"):
        build_graph(specs(("encode_prompt", "clip_text_encode", {}), LATENTS, DENOISE, DECODE), SD_ROLES)


def test_duplicate_stage_names_are_refused():
    with pytest.raises(ConfigError, match=r"two stages are named 'encode_prompt'"):
        build_graph(specs(ENCODE, ENCODE, LATENTS, DENOISE, DECODE), SD_ROLES)


def test_sdxl_denoise_reads_the_added_conditioning():
    stages = build_graph(model_spec("tiny_sdxl").stages, [*model_spec("tiny_sdxl").components, "scheduler"])
    denoise = next(s for s in stages if s.name == "denoise")
    assert {"prompt_embeds", "pooled_prompt_embeds", "add_time_ids"} <= set(denoise.inputs)


def test_sub_step_type_is_required():
    expected = r"predictor needs a 'type'; registered: flux_transformer, sd3_transformer, unet"
    with pytest.raises(ConfigError, match=expected):
        make_part("predictor", {"denoiser": "unet"}, "stage 'denoise'")


def test_bad_layer_value_is_refused():
    bad = ("encode_prompt", "clip_text_encode", {**ENCODE[2], "layer": "third"})
    with pytest.raises(ConfigError, match=r"layer='third' is not one of last, penultimate"):
        build_graph(specs(bad, LATENTS, DENOISE, DECODE), SD_ROLES)
