"""SD3 and Flux on the Paddle engine.

SD3: the runner's images equal ppdiffusers' StableDiffusion3Pipeline (fp32, CPU, max pixel difference 1).
Flux (no ppdiffusers release has it): this project's Paddle transformer matches diffusers'
FluxTransformer2DModel on the same safetensors within 1e-4 max abs error, and a full runner run matches
diffusers' FluxPipeline given the same initial latents within 2 pixel levels (measured: 1).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from runner.errors import ConfigError
from runner.plan import plan_run
from tests.support.cases import case, names
from tests.support.configs import compose_config
from tests.support.runs import max_pixel_diff, runner_images, to_uint8

PROMPT = "a lighthouse at dusk"


@pytest.mark.paddle
@pytest.mark.slow
def test_sd3_matches_ppdiffusers_pipeline(tiny_weights):
    from components.paddle.runtime import import_paddle, import_ppdiffusers

    ppdiffusers, paddle = import_ppdiffusers(), import_paddle()
    from ppdiffusers.transformers import T5Tokenizer

    weights = tiny_weights("tiny_sd3")
    # ppdiffusers 0.29's SD3 pipeline always encodes 77 T5 tokens; the runner's default is diffusers' 256.
    ours = runner_images(
        [
            "model=tiny_sd3",
            f"model.weights={weights}",
            "model.max_sequence_length=77",
            "seed=3",
            "batch=2",
            "height=64",
            "width=48",
            "negative_prompt=blurry",
            "steps=3",
            f"prompt='{PROMPT}'",
        ]
    )
    # paddlenlp cannot read the T5 tokenizer_config.json that transformers writes (extra_id numbering):
    # give the stock pipeline the same tokenizer the runner builds, from spiece.model.
    tokenizer_3 = T5Tokenizer(str(weights / "tokenizer_3" / "spiece.model"))
    pipe = ppdiffusers.StableDiffusion3Pipeline.from_pretrained(
        str(weights), from_diffusers=True, tokenizer_3=tokenizer_3
    )
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        prompt=PROMPT,
        negative_prompt="blurry",
        num_images_per_prompt=2,
        height=64,
        width=48,
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=paddle.Generator().manual_seed(3),
        output_type="np",
    )
    assert ours.shape == (2, 64, 48, 3) and ours.std() > 1.0
    assert max_pixel_diff(ours, to_uint8(theirs.images)) <= case("tiny_sd3").tolerances.paddle_stock


def flux_inputs(batch: int, image_tokens: tuple[int, int], text_len: int):
    rng = np.random.default_rng(0)
    rows, cols = image_tokens
    img_ids = np.zeros((rows * cols, 3), np.float32)
    img_ids[:, 1], img_ids[:, 2] = np.repeat(np.arange(rows), cols), np.tile(np.arange(cols), rows)
    return {
        "hidden_states": rng.standard_normal((batch, rows * cols, 64)).astype(np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, text_len, 32)).astype(np.float32),
        "pooled_projections": rng.standard_normal((batch, 32)).astype(np.float32),
        "timestep": np.full([batch], 0.7, np.float32),
        "guidance": np.full([batch], 3.5, np.float32),
        "img_ids": img_ids,
        "txt_ids": np.zeros((text_len, 3), np.float32),
    }


@pytest.mark.paddle
def test_paddle_flux_transformer_matches_diffusers(tiny_weights):
    import diffusers
    import torch

    from components.paddle.flux.transformer import FluxTransformer2DModel
    from components.paddle.runtime import import_paddle

    paddle = import_paddle()
    folder = tiny_weights("tiny_flux") / "transformer"
    reference = diffusers.FluxTransformer2DModel.from_pretrained(str(folder)).eval()
    ours = FluxTransformer2DModel.from_pretrained(str(folder))
    assert set(ours.state_dict()) == set(reference.state_dict())
    inputs = flux_inputs(batch=2, image_tokens=(4, 6), text_len=7)  # non-square token grid
    with torch.no_grad():
        expected = reference(**{k: torch.from_numpy(v) for k, v in inputs.items()}, return_dict=False)[0].numpy()
    with paddle.no_grad():
        got = ours(**{k: paddle.to_tensor(v) for k, v in inputs.items()}, return_dict=False)[0].numpy()
    error = np.abs(got - expected).max()
    assert error <= case("tiny_flux").tolerances.paddle_port_max_abs, error


@pytest.mark.paddle
@pytest.mark.slow
@pytest.mark.parametrize("batch,height,width", [(2, 64, 48), (1, 48, 80)])
def test_flux_run_matches_diffusers_pipeline(tiny_weights, batch, height, width):
    import diffusers
    import torch

    from components.stages.latents import pack_latents

    weights = tiny_weights("tiny_flux")
    ours = runner_images(
        [
            "model=tiny_flux",
            f"model.weights={weights}",
            "noise=numpy",
            "seed=3",
            f"batch={batch}",
            f"height={height}",
            f"width={width}",
            "steps=3",
            "guidance=4.0",
            f"prompt='{PROMPT}'",
        ]
    )
    pipe = diffusers.FluxPipeline.from_pretrained(str(weights))
    pipe.set_progress_bar_config(disable=True)
    # The same initial latents: noise=numpy draws these numbers, packed as the pipeline packs them.
    noise = np.random.default_rng(3).standard_normal((batch, 16, height // 2, width // 2), dtype=np.float32)
    theirs = pipe(
        prompt=PROMPT,
        num_images_per_prompt=batch,
        height=height,
        width=width,
        num_inference_steps=3,
        guidance_scale=4.0,
        latents=pack_latents(torch.from_numpy(noise)),
        output_type="np",
        **case("tiny_flux").stock_call,
    ).images
    assert ours.shape == (batch, height, width, 3) and ours.std() > 1.0
    assert max_pixel_diff(ours, to_uint8(theirs)) <= case("tiny_flux").tolerances.paddle_stock


@pytest.mark.paddle
@pytest.mark.parametrize("model", names(denoiser="transformer"))  # the UNet models: test_weights_and_determinism.py
def test_same_seed_same_image_other_seed_other_image(model):
    first = runner_images([f"model={model}", "seed=1", "steps=2"])
    assert max_pixel_diff(first, runner_images([f"model={model}", "seed=1", "steps=2"])) == 0
    assert max_pixel_diff(first, runner_images([f"model={model}", "seed=2", "steps=2"])) > 10


@pytest.mark.parametrize("model", [*names(denoiser="transformer"), "sd3", "flux", "flux_schnell"])
def test_sizes_must_be_multiples_of_16(model):
    with pytest.raises(ConfigError, match=rf"^height=72 must be a positive multiple of 16 for model={model}$"):
        plan_run(compose_config([f"model={model}", "height=72"]), check_capabilities=False)


def test_t5_length_beyond_its_maximum_is_refused():
    with pytest.raises(ConfigError, match=r"model.max_sequence_length=600 is out of range .* T5 takes 1 to 512 tokens"):
        plan_run(compose_config(["model=tiny_flux", "model.max_sequence_length=600"]), check_capabilities=False)


@pytest.mark.paddle
def test_long_prompts_are_truncated_with_a_warning(caplog):
    long_prompt = " ".join(["a red fox in the snow"] * 20)
    with caplog.at_level(logging.WARNING):
        images = runner_images(["model=tiny_flux", f"prompt='{long_prompt}'", "steps=1"])
    assert images.shape[0] == 1
    assert any("prompt truncated to 32 of its" in r.message for r in caplog.records)


def test_guidance_on_a_model_that_ignores_it_warns(caplog):
    with caplog.at_level(logging.WARNING):
        plan_run(compose_config(["model=flux_schnell", "guidance=3.5"]), check_capabilities=False)
    assert any("model=flux_schnell ignores guidance=3.5" in r.message for r in caplog.records)


def test_schnell_is_the_dev_architecture_without_guidance_or_shift():
    schnell = compose_config(["model=flux_schnell"]).model
    dev = compose_config(["model=flux"]).model
    assert schnell.components.transformer.config.guidance_embeds is False
    assert dev.components.transformer.config.guidance_embeds is True
    assert schnell.scheduler.config.use_dynamic_shifting is False and schnell.scheduler.config.shift == 1.0
    assert schnell.components.transformer.config.num_layers == dev.components.transformer.config.num_layers == 19
    assert (schnell.max_sequence_length, schnell.run_defaults.steps) == (256, 4)


@pytest.mark.paddle
def test_sharded_and_bf16_flux_checkpoints_load(tiny_weights, tmp_path):
    """A transformer/ folder saved in shards (with its index json) and one saved in bf16 load as they are:
    the sharded one to the same weights, the bf16 one to the bf16 values."""
    import diffusers
    import torch

    from components.paddle.flux.transformer import FluxTransformer2DModel

    source = diffusers.FluxTransformer2DModel.from_pretrained(str(tiny_weights("tiny_flux") / "transformer"))
    expected = {k: v.numpy().copy() for k, v in source.state_dict().items()}
    source.save_pretrained(str(tmp_path / "sharded"), max_shard_size="50KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    source.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))  # .to() converts in place
    sharded = FluxTransformer2DModel.from_pretrained(str(tmp_path / "sharded"))
    for name, value in sharded.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), expected[name], err_msg=name)
    bf16 = FluxTransformer2DModel.from_pretrained(str(tmp_path / "bf16"), paddle_dtype="bfloat16")
    reference = {k: v.float().numpy() for k, v in source.state_dict().items()}
    for name, value in bf16.state_dict().items():
        assert str(value.dtype) == "paddle.bfloat16"
        np.testing.assert_array_equal(value.cast("float32").numpy(), reference[name], err_msg=name)


def _flux_outputs(model, inputs, engine: str) -> np.ndarray:
    if engine == "torch":
        import torch

        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, return_dict=False)[0].numpy()
    from components.paddle.runtime import import_paddle

    paddle = import_paddle()
    with paddle.no_grad():
        return model(**{k: paddle.to_tensor(v) for k, v in inputs.items()}, return_dict=False)[0].numpy()


@pytest.mark.paddle
def test_flux_configs_of_newer_diffusers_load_and_out_channels_is_honoured(tiny_weights, tmp_path):
    """Newer diffusers save `out_channels` (None: in_channels; Flux Fill: 384 in, 64 out). The port takes every
    key diffusers' FluxTransformer2DModel takes, and refuses keys it does not know instead of dropping them."""
    import shutil

    import diffusers
    from safetensors.numpy import load_file, save_file

    from components.paddle.flux.transformer import FluxTransformer2DModel

    source = tiny_weights("tiny_flux") / "transformer"
    config = json.loads((source / "config.json").read_text())
    inputs = flux_inputs(batch=1, image_tokens=(4, 4), text_len=5)
    expected = _flux_outputs(diffusers.FluxTransformer2DModel.from_pretrained(str(source)).eval(), inputs, "torch")

    def variant(name: str, **changes) -> Path:
        folder = tmp_path / name
        shutil.copytree(source, folder)
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        return folder

    for out_channels in (None, config["in_channels"]):
        model = FluxTransformer2DModel.from_pretrained(str(variant(f"same-{out_channels}", out_channels=out_channels)))
        assert np.abs(_flux_outputs(model, inputs, "paddle") - expected).max() <= 1e-4
    # Fewer output channels: proj_out keeps its first 32 rows, so the output is the first 32 channels.
    narrow = variant("narrow", out_channels=32)
    weights = load_file(str(narrow / "diffusion_pytorch_model.safetensors"))
    for name in ("proj_out.weight", "proj_out.bias"):
        weights[name] = weights[name][:32]
    save_file(weights, str(narrow / "diffusion_pytorch_model.safetensors"))
    got = _flux_outputs(FluxTransformer2DModel.from_pretrained(str(narrow)), inputs, "paddle")
    assert got.shape == (*expected.shape[:-1], 32)
    assert np.abs(got - expected[..., :32]).max() <= 1e-4
    with pytest.raises(ValueError, match=r"keys \['text_adapter'\] are unknown to the Paddle port, which takes"):
        FluxTransformer2DModel.from_pretrained(str(variant("unknown", text_adapter=True)))


@pytest.mark.paddle
def test_an_image_conditioned_flux_is_refused_by_text_to_image():
    """out_channels != in_channels (Flux Fill's 384 in / 64 out) loads, then text-to-image says why it cannot run
    it, instead of failing on a shape inside the transformer."""
    overrides = ["model=tiny_flux", "backend=paddle", "steps=1", "model.components.transformer.config.in_channels=128",
                 "+model.components.transformer.config.out_channels=64"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"^transformer takes 128 input channels and gives 64: an image-conditioned"):
        runner_images(overrides)
