"""The runner on the PyTorch engine reproduces diffusers' own pipelines (fp32, CPU).

Same weights directory, seed (torch.Generator on the CPU) and settings; tolerance: max |pixel
difference| <= 1 (Tolerances.torch_stock in tests/support/cases.py). Also: backend=torch never imports Paddle.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from runner.conf_index import group_options
from tests.support.cases import case, names, slow_except
from tests.support.configs import model_spec
from tests.support.runs import REPO, max_pixel_diff, runner_images, to_uint8

PROMPT = "a red fox in the snow"


def diffusers_images(model: str, weights, scheduler: str, seed: int, **call) -> np.ndarray:
    import diffusers
    import torch

    pipeline_cls = getattr(diffusers, model_spec(model).pipeline_classes[0])
    pipe = pipeline_cls.from_pretrained(str(weights))
    if scheduler != "default":
        option = group_options("scheduler")[scheduler]
        scheduler_cls = getattr(diffusers, option["class_name"])
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **option.get("options", {}))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **call)
    return to_uint8(out.images)


SCENARIOS = {
    # model: [(scheduler, negative prompt, batch, height, width)]; extra pipeline arguments: its stock_call
    "tiny_sd15": [("default", "blurry", 2, 64, 48), ("euler_a", None, 1, 48, 64)],
    "tiny_sd21": [("default", "blurry", 2, 64, 48), ("dpmpp_2m", "blurry", 1, 64, 64)],
    "tiny_sdxl": [("default", "blurry", 2, 64, 48), ("default", None, 1, 64, 64)],
    "tiny_sd3": [("default", "blurry", 2, 64, 48)],
    "tiny_flux": [("default", None, 2, 64, 48)],  # no CFG: no negative prompt
}
CASES = [(model, *scenario) for model in names() for scenario in SCENARIOS.get(model, [])]


def test_every_model_has_scenarios():
    assert sorted(SCENARIOS) == sorted(names())


@pytest.mark.parametrize("model,scheduler,negative,batch,height,width", slow_except(CASES, CASES[0]))
def test_torch_engine_matches_diffusers(tiny_weights, model, scheduler, negative, batch, height, width):
    weights = tiny_weights(model)
    extra = case(model).stock_call
    guidance = 4.0
    overrides = [
        f"model={model}",
        f"model.weights={weights}",
        "backend=torch",
        f"scheduler={scheduler}",
        f"prompt='{PROMPT}'",
        f"batch={batch}",
        f"height={height}",
        f"width={width}",
        "steps=3",
        f"guidance={guidance}",
        "seed=7",
    ]
    call = dict(
        prompt=PROMPT,
        num_images_per_prompt=batch,
        height=height,
        width=width,
        num_inference_steps=3,
        guidance_scale=guidance,
        **extra,
    )
    if negative:
        overrides.append(f"negative_prompt='{negative}'")
        call["negative_prompt"] = negative
    ours = runner_images(overrides)
    theirs = diffusers_images(model, weights, scheduler, seed=7, **call)
    assert ours.shape == (batch, height, width, 3) and ours.std() > 1.0
    assert max_pixel_diff(ours, theirs) <= case(model).tolerances.torch_stock


# model, negative prompt: at guidance 12 a rescale of 0.7 moves these images by 8-11 levels (measured).
RESCALE_CASES = [("tiny_sd15", "blurry"), ("tiny_sdxl", None)]


@pytest.mark.slow  # the fast subset checks the rescale in-process (tests/unit/test_guidance.py)
@pytest.mark.parametrize("model,negative", RESCALE_CASES)
def test_guidance_rescale_matches_diffusers(tiny_weights, model, negative):
    weights = tiny_weights(model)
    overrides = [
        f"model={model}",
        f"model.weights={weights}",
        "backend=torch",
        f"prompt='{PROMPT}'",
        "batch=2",
        "height=64",
        "width=48",
        "steps=4",
        "guidance=12",
        "seed=7",
    ]
    call = dict(prompt=PROMPT, num_images_per_prompt=2, height=64, width=48, num_inference_steps=4, guidance_scale=12.0)
    if negative:
        overrides.append(f"negative_prompt='{negative}'")
        call["negative_prompt"] = negative
    ours = runner_images([*overrides, "guidance_rescale=0.7"])
    theirs = diffusers_images(model, weights, "default", seed=7, guidance_rescale=0.7, **call)
    assert ours.shape == (2, 64, 48, 3) and ours.std() > 1.0
    assert max_pixel_diff(ours, theirs) <= 1
    assert max_pixel_diff(ours, runner_images(overrides)) > 1, "the rescale changed nothing"


def test_torch_backend_never_imports_paddle():
    code = (
        "import sys; from runner.plan import plan_run; from runner.app import build_pipeline;"
        "from tests.support.configs import compose_config;"
        "plan = plan_run(compose_config(['backend=torch', 'steps=1', 'quiet=true']));"
        "build_pipeline(plan).generate();"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('paddle', 'ppdiffusers', 'paddlenlp')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_sd3_crops_clip_states_wider_than_t5_as_the_stock_pipeline_does() -> None:
    """SD3 pads the concatenated CLIP states to T5's width with torch's pad, which crops when the amount is
    negative (CLIP-L + CLIP-G wider than T5). Here 2 x 32 CLIP features against a 48-wide T5."""
    import torch

    from runner.app import build_pipeline
    from runner.plan import plan_run
    from tests.support.configs import compose_config

    narrow = ["model.components.text_encoder_3.config.d_model=48",
              "model.components.transformer.config.joint_attention_dim=48"]  # fmt: skip
    plan = plan_run(compose_config(["model=tiny_sd3", "backend=torch", f"prompt={PROMPT}", "negative_prompt=blurry",
                                    "steps=2", "guidance=5", "seed=7", "quiet=true", *narrow]))  # fmt: skip
    built = build_pipeline(plan)
    ours = built.generate().state["images"]
    stock = built.engine.stock_pipeline(plan.model.pipeline_classes[0], built.components)
    stock.set_progress_bar_config(disable=True)
    s = plan.settings
    call = {"num_inference_steps": 2, "guidance_scale": 5.0, "height": s.height, "width": s.width,
            **case("tiny_sd3").stock_call}  # fmt: skip
    generator = torch.Generator("cpu").manual_seed(7)
    out = stock(prompt=PROMPT, negative_prompt="blurry", generator=generator, output_type="np", **call)
    assert max_pixel_diff(ours, to_uint8(out.images)) <= case("tiny_sd3").tolerances.torch_stock
