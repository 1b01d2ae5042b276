"""channels_last (PyTorch): the convolutions' weights and inputs NHWC, the same images within a level."""

from __future__ import annotations

import pytest

from runner.app import build_pipeline
from runner.plan import plan_run
from tests.support.configs import compose_config
from tests.support.runs import max_pixel_diff, runner_images

RUN = ["model=shapes_sd15", "steps=5", "seed=2", "quiet=true"]


def test_unet_and_vae_run_channels_last_and_verify() -> None:
    import torch

    built = build_pipeline(plan_run(compose_config([*RUN, "backend=torch", "passes=[channels_last]", "verify=true"])))
    images = built.generate().state["images"]
    report = built.passes_report()
    assert {(d["pass"], d["component"]) for d in report["details"]} == {("channels_last", "unet"),
                                                                        ("channels_last", "vae")}  # fmt: skip
    assert {"pass": "channels_last", "component": "text_encoder", "reason": "no 2-D convolutions"} in report["skipped"]
    assert {(v["pass"], v["component"]) for v in report["verified"]} == {("channels_last", "unet"),
                                                                         ("channels_last", "vae")}  # fmt: skip
    assert all(v["max_abs_error"] <= v["bound"] for v in report["verified"])
    for role in ("unet", "vae"):
        convs = [m for m in built.components[role].modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    # oneDNN's NHWC kernels round differently: a level at most on these images (measured 0 or 1).
    assert max_pixel_diff(images, runner_images([*RUN, "backend=torch"])) <= 1


@pytest.mark.paddle
def test_paddle_skips_it_with_the_reason() -> None:
    built = build_pipeline(plan_run(compose_config([*RUN, "backend=paddle", "passes=[channels_last]"])))
    assert built.passes_report()["skipped"] == [
        {"pass": "channels_last", "component": "*", "reason": "engine paddle is not one of torch"}
    ]
    assert not built.passes_report()["details"]
