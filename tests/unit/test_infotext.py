"""The AUTOMATIC1111 `parameters` text of each PNG: sampler names and the exact line format A1111 reads back."""

from __future__ import annotations

import pytest

from runner.conf_index import group_options
from runner.infotext import A1111_SAMPLERS, infotext, sampler_label

FOX = dict(prompt="a red fox", steps=25, sampler="Euler a", seed=3, width=512, height=768, model="sd15")


@pytest.mark.parametrize(
    "class_name,config,label",
    [
        ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),
        ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
        ("EulerDiscreteScheduler", {"use_karras_sigmas": False}, "Euler"),
        ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, "Euler"),
        ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
        ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, "Euler Karras"),
        ("DDIMScheduler", {}, "DDIM"),
        # A class A1111 has no name for keeps its own.
        ("KDPM2DiscreteScheduler", {}, "KDPM2DiscreteScheduler"),
    ],
)
def test_sampler_labels_are_a1111s(class_name, config, label):
    assert sampler_label(class_name, config) == label


def test_every_configured_sampler_has_an_a1111_name():
    # A sampler added to conf/scheduler/ (or a model's own) without a row in A1111_SAMPLERS would show its
    # class name instead.
    samplers = {options["class_name"] for options in group_options("scheduler").values() if "class_name" in options}
    models = {options.get("scheduler", {}).get("class_name") for options in group_options("model").values()} - {None}
    assert len(samplers) >= 10 and len(models) >= 4
    assert samplers | models <= set(A1111_SAMPLERS)
    karras = group_options("scheduler")["dpmpp_2m_karras"]
    assert sampler_label(karras["class_name"], karras["options"]) == "DPM++ 2M Karras"


def test_infotext_is_prompt_negative_prompt_then_parameters():
    assert infotext(**FOX, negative_prompt="blurry, dark", guidance=7.5) == (
        "a red fox\n"
        "Negative prompt: blurry, dark\n"
        "Steps: 25, Sampler: Euler a, CFG scale: 7.5, Seed: 3, Size: 512x768, Model: sd15"
    )


@pytest.mark.parametrize("negative", [None, ""])
def test_no_negative_prompt_line_without_one(negative):
    text = infotext(**FOX, negative_prompt=negative, guidance=7.5)
    assert text.splitlines() == [
        "a red fox",
        "Steps: 25, Sampler: Euler a, CFG scale: 7.5, Seed: 3, Size: 512x768, Model: sd15",
    ]


@pytest.mark.parametrize("guidance,shown", [(7.0, "7"), (7.5, "7.5"), (3.25, "3.25"), (0.0, "0")])
def test_cfg_scale_drops_a_trailing_zero(guidance, shown):
    # As A1111 writes it: `CFG scale: 7`, `CFG scale: 7.5`.
    assert f", CFG scale: {shown}, " in infotext(**FOX, negative_prompt="", guidance=guidance)
