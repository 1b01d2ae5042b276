"""LoRA names -> model family and diffusers module names (components/lora.py), without any model loaded."""

from __future__ import annotations

import pytest

from components.lora import _bfl_dotted, _flux_targets, guess_family, sgm_to_diffusers


@pytest.mark.parametrize(
    "names,family",
    [
        (["denoiser.double_blocks_0_img_attn_qkv", "text_encoder.text_model_encoder_layers_0_mlp_fc1"], "flux"),
        (["transformer.single_transformer_blocks.0.attn.to_q"], "flux"),
        # a Flux LoRA on the double blocks alone, in diffusers' names: not mistaken for SD3
        (["transformer.transformer_blocks.0.attn.add_q_proj", "transformer.transformer_blocks.0.attn.to_q"], None),
        (["denoiser.joint_blocks_0_x_block_attn_qkv"], "sd3"),
        (["denoiser.input_blocks_4_1_transformer_blocks_0_attn1_to_q", "text_encoder_2.text_model_x"], "sdxl"),
        (["unet.down_blocks.0.attentions.0.proj_in", "text_encoder.text_model.encoder.layers.0.mlp.fc1"], "sd"),
    ],
)
def test_guess_family(names, family):
    assert guess_family(names) == family


@pytest.mark.parametrize(
    "sgm,diffusers",
    [
        ("input_blocks_0_0", "conv_in"),
        (
            "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        ),
        ("input_blocks_5_0_in_layers_2", "down_blocks_1_resnets_1_conv1"),
        ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
        ("middle_block_0_emb_layers_1", "mid_block_resnets_0_time_emb_proj"),
        ("middle_block_1_proj_in", "mid_block_attentions_0_proj_in"),
        ("middle_block_2_out_layers_3", "mid_block_resnets_1_conv2"),
        ("output_blocks_2_1_conv", "up_blocks_0_upsamplers_0_conv"),
        ("output_blocks_5_2_conv", "up_blocks_1_upsamplers_0_conv"),
        ("output_blocks_4_1_proj_out", "up_blocks_1_attentions_1_proj_out"),
        ("output_blocks_4_0_skip_connection", "up_blocks_1_resnets_1_conv_shortcut"),
        ("label_emb_0_2", "add_embedding_linear_2"),
    ],
)
def test_sgm_names_of_an_sdxl_unet(sgm, diffusers):
    """SDXL's UNet (2 resnets per level): input block 1 + 3 * level + layer; output block 3 * level + layer."""
    assert sgm_to_diffusers(sgm, layers_per_block=2) == diffusers


def test_bfl_flux_names_split_onto_diffusers_modules():
    assert _bfl_dotted("double_blocks_3_txt_attn_qkv") == "double_blocks.3.txt_attn.qkv"
    assert _flux_targets("double_blocks.3.txt_attn.qkv") == [
        "transformer_blocks.3.attn.add_q_proj", "transformer_blocks.3.attn.add_k_proj",
        "transformer_blocks.3.attn.add_v_proj"]  # fmt: skip
    assert _flux_targets(_bfl_dotted("single_blocks_7_linear1")) == [
        "single_transformer_blocks.7.attn.to_q", "single_transformer_blocks.7.attn.to_k",
        "single_transformer_blocks.7.attn.to_v", "single_transformer_blocks.7.proj_mlp"]  # fmt: skip
    assert _flux_targets(_bfl_dotted("single_blocks_7_modulation_lin")) == ["single_transformer_blocks.7.norm.linear"]
    assert _flux_targets("final_layer.adaLN_modulation.1") == ["norm_out.linear"]
    assert _flux_targets("guidance_in.out_layer") == ["time_text_embed.guidance_embedder.linear_2"]
    assert _bfl_dotted("double_blocks_0_img_attn_norm_query_norm") is None
