"""Single-file conversion without weights: the full-size SD 1.5 / 2.1 / XL name tables against diffusers' own
converter, OpenCLIP's fused attention split, BF16 reading, layout detection, and the shipped CLIP tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from components.single_file import convert_open_clip, read_tensors, rename, unet_prefixes, vae_prefixes
from runner.single_file import detect_layout, read_header
from tests.support.configs import model_spec
from tests.support.single_file import unet_to_original, vae_to_original, write_header_only


def diffusers_names(model: str, role: str) -> list[str]:
    """The weight names of the full-size diffusers model (built on the meta device: no memory, no time)."""
    import diffusers
    import torch

    cls = diffusers.UNet2DConditionModel if role == "unet" else diffusers.AutoencoderKL
    with torch.device("meta"):
        module = cls.from_config(dict(model_spec(model).components[role].config))
    return list(module.state_dict())


# Names in the released checkpoints (v1-5-pruned, v2-1_768-ema-pruned, sd_xl_base_1.0): diffusers' converter
# accepts an upsampler at either slot of an output block, so where it sits is pinned here.
KNOWN_NAMES = {
    "sd15": {
        "unet": [
            "input_blocks.1.1.proj_in.weight",
            "input_blocks.3.0.op.weight",
            "output_blocks.2.1.conv.weight",
            "output_blocks.5.2.conv.weight",
            "output_blocks.8.2.conv.bias",
            "middle_block.2.emb_layers.1.weight",
            "input_blocks.4.0.skip_connection.weight",
            "out.2.weight",
            "time_embed.0.weight",
        ],
        "vae": [
            "decoder.up.0.block.0.nin_shortcut.weight",
            "decoder.up.3.upsample.conv.weight",
            "encoder.down.0.downsample.conv.weight",
            "encoder.mid.attn_1.q.weight",
            "decoder.norm_out.weight",
            "decoder.up.3.block.2.conv2.weight",
            "post_quant_conv.weight",
        ],
    },
    "sd21": {
        "unet": ["input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", "output_blocks.11.1.proj_out.weight"],
        "vae": ["encoder.mid.attn_1.proj_out.weight"],
    },
    "sdxl": {
        "unet": [
            "label_emb.0.0.weight",
            "label_emb.0.2.bias",
            "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight",
            "input_blocks.6.0.op.weight",
            "output_blocks.2.2.conv.weight",
            "output_blocks.5.2.conv.weight",
            "output_blocks.8.0.out_layers.3.weight",
            "middle_block.1.transformer_blocks.9.ff.net.2.weight",
        ],
        "vae": ["decoder.up.1.upsample.conv.weight"],
    },
}


@pytest.mark.parametrize("model", ["sd15", "sd21", "sdxl"])
def test_full_size_unet_and_vae_tables_agree_with_diffusers(model):
    """Every weight name of the real architectures goes to the original name diffusers maps back to it, and
    this project's converter maps that name back too (each tensor is a marker: its index)."""
    import torch
    from diffusers.loaders import single_file_utils as reference

    for role, to_original, table, convert in (
        ("unet", unet_to_original, unet_prefixes, reference.convert_ldm_unet_checkpoint),
        ("vae", vae_to_original, vae_prefixes, reference.convert_ldm_vae_checkpoint),
    ):
        config = dict(model_spec(model).components[role].config)
        names = diffusers_names(model, role)
        markers = {name: np.full((1,), i, dtype=np.float32) for i, name in enumerate(names)}
        original = to_original(markers, config)
        assert len(original) == len(names), role
        assert set(KNOWN_NAMES[model][role]) <= set(original), set(KNOWN_NAMES[model][role]) - set(original)
        prefix = "model.diffusion_model." if role == "unet" else "first_stage_model."
        checkpoint = {prefix + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in original.items()}
        theirs = convert(checkpoint, config)
        ours, unmatched = rename(original, table(config))
        assert not unmatched
        assert sorted(theirs) == sorted(names) == sorted(ours), role
        for name in names:
            assert float(theirs[name].reshape(-1)[0]) == float(ours[name].reshape(-1)[0]) == markers[name][0]


OPEN_CLIP_CASES = [("sd21", "text_encoder", "cond_stage_model.model."),
                   ("sdxl", "text_encoder_2", "conditioner.embedders.1.model.")]  # fmt: skip


@pytest.mark.parametrize("model,role,prefix", OPEN_CLIP_CASES)
def test_open_clip_conversion_agrees_with_diffusers(model, role, prefix):
    """Fused in_proj split into q/k/v by the hidden width, the projection transposed, SD 2.x's unused last
    layer and projection dropped: as diffusers' convert_open_clip_checkpoint does."""
    import torch
    import transformers
    from diffusers.loaders import single_file_utils as reference

    config = dict(model_spec(model).components[role].config)
    hidden, layers = config["hidden_size"], 24 if model == "sd21" else config["num_hidden_layers"]
    rng = np.random.default_rng(0)
    tensors = {
        "token_embedding.weight": rng.standard_normal((3, hidden)),
        "positional_embedding": rng.standard_normal((77, hidden)),
        "ln_final.weight": rng.standard_normal(hidden),
        "ln_final.bias": rng.standard_normal(hidden),
        "text_projection": rng.standard_normal((hidden, config["projection_dim"])),
        "logit_scale": np.array(1.0),
    }
    for n in range(layers):
        for name, shape in (("attn.in_proj_weight", (3 * hidden, 2)), ("attn.in_proj_bias", (3 * hidden,)),
                            ("attn.out_proj.weight", (hidden, 2)), ("ln_1.weight", (hidden,)),
                            ("ln_2.bias", (hidden,)), ("mlp.c_fc.weight", (4, hidden)),
                            ("mlp.c_proj.bias", (hidden,))):  # fmt: skip
            tensors[f"transformer.resblocks.{n}.{name}"] = rng.standard_normal(shape)
    projection = model_spec(model).components[role].type == "clip_text_model_with_projection"
    ours, _ = convert_open_clip(tensors, config, projection)
    with torch.device("meta"):
        cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
        text_model = cls(transformers.CLIPTextConfig(**config))
    checkpoint = {prefix + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
    theirs = reference.convert_open_clip_checkpoint(text_model, checkpoint, prefix=prefix)
    if model == "sd21":  # diffusers keeps the layers beyond the config (the loader drops them as unexpected)
        theirs = {k: v for k, v in theirs.items() if f"layers.{config['num_hidden_layers']}." not in k}
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value.numpy(), err_msg=key)
    assert ("text_projection.weight" in ours) == projection


def test_bf16_tensors_are_read_exactly_as_float32(tmp_path):
    import torch
    from safetensors.torch import save_file

    values = torch.randn(5, 7).to(torch.bfloat16)
    save_file({"model.diffusion_model.w": values, "other": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    read = read_tensors(tmp_path / "x.safetensors", "model.diffusion_model.")
    assert list(read) == ["w"] and read["w"].dtype == np.float32
    np.testing.assert_array_equal(read["w"], values.float().numpy())


@pytest.mark.parametrize(
    "names,shape,layout",
    [
        (["cond_stage_model.transformer.text_model.final_layer_norm.weight"], (2, 2), "sd1"),
        (["cond_stage_model.model.ln_final.weight"], (2, 2), "sd2"),
        (["conditioner.embedders.1.model.ln_final.weight"], (2, 2), "sdxl"),
        (["model.diffusion_model.label_emb.0.0.weight"], (2, 2), "sdxl"),  # an SDXL UNet alone
        (["model.diffusion_model.input_blocks.1.1.proj_in.weight"], (2, 2), "sd2"),  # Linear projections: SD 2.x
        (["model.diffusion_model.input_blocks.1.1.proj_in.weight"], (2, 2, 1, 1), "sd1"),  # 1x1 convs: SD 1.x
        (["text_model.encoder.layers.0.mlp.fc1.weight"], (2, 2), "diffusers"),
    ],
)
def test_layouts_are_told_from_the_names(tmp_path, names, shape, layout):
    path = write_header_only(tmp_path / "x.safetensors", names, shape)
    assert detect_layout(read_header(path)) == layout


@pytest.mark.parametrize("engine", ["torch", "paddle"])
def test_the_shipped_clip_tokenizer_gives_clip_ids_and_each_model_its_padding(engine):
    """The full vocabulary (known ids), padded with <|endoftext|> for SD 1.5 and SDXL's first tokenizer, and
    with "!" (id 0) for SD 2.x and SDXL's second one, as those models' own tokenizers pad."""
    import runner.registry as registry

    engine_obj = registry.resolve("engine", engine)(device="cpu", dtype="float32")
    expected = {("sd15", "tokenizer"): 49407, ("sd21", "tokenizer"): 0, ("sdxl", "tokenizer"): 49407,
                ("sdxl", "tokenizer_2"): 0}  # fmt: skip
    for (model, role), pad_id in expected.items():
        tokenizer = engine_obj.load_component(model_spec(model).components[role], None, seed=0)
        ids = engine_obj.to_numpy(engine_obj.tokenize(tokenizer, ["a photo of a cat"], 10)).astype(int).tolist()
        assert ids == [[49406, 320, 1125, 539, 320, 2368, 49407] + [pad_id] * 3], (model, role)
        assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
