"""groupnorm_silu (PyTorch): GroupNorm+SiLU fused in UNets and VAEs, verified against eager, the same images
within a level; the fused operation against F.group_norm + F.silu; the Triton kernel in Triton's interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from passes.groupnorm_silu import TRITON_MISSING, GroupNormSiLU
from runner.app import build_pipeline
from runner.hooks import hooks_in
from runner.pass_base import PassContext
from runner.pass_manager import apply_passes
from runner.plan import plan_run
from tests.support.configs import compose_config
from tests.support.runs import REPO, max_pixel_diff, runner_images

RUN = ["model=shapes_sd15", "steps=5", "seed=2", "quiet=true", "backend=torch"]
# max |fused - unfused| relative to max(1, max |unfused|): fp32 rounding; bf16 rounds the unfused pair twice
# (after the norm and after the SiLU), the fused once, so they differ by about one bf16 step.
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}


def _run(overrides: list[str]):
    built = build_pipeline(plan_run(compose_config([*RUN, *overrides, "verify=true"])))
    return built, built.generate().state["images"]


def test_unet_and_vae_fused_and_verified_within_a_level_of_eager() -> None:
    built, images = _run(["passes=[groupnorm_silu]"])
    report = built.passes_report()
    fused = {d["component"]: d["fused_norms"] for d in report["details"]}
    # Every ResNet block's two norms, plus the output norm of the UNet and of the VAE encoder and decoder.
    assert fused["unet"]["UNet2DConditionModel"] == 1 and fused["unet"]["ResnetBlock2D"] > 0
    assert fused["vae"]["Encoder"] == fused["vae"]["Decoder"] == 1 and fused["vae"]["ResnetBlock2D"] > 0
    assert {"pass": "groupnorm_silu", "component": "text_encoder", "reason": "no GroupNorm feeding a SiLU"} in report[
        "skipped"
    ]
    assert {(v["pass"], v["component"]) for v in report["verified"]} == {("groupnorm_silu", "unet"),
                                                                          ("groupnorm_silu", "vae")}  # fmt: skip
    assert type(built.components["unet"].conv_norm_out).__name__ == "FusedGroupNormSiLU"
    # Rounding only: measured 0 or 1 level on these images.
    assert max_pixel_diff(images, runner_images(RUN)) <= 1


def test_composes_with_channels_last() -> None:
    built, images = _run(["passes=[channels_last,groupnorm_silu]"])
    verified = {(v["pass"], v["component"]) for v in built.passes_report()["verified"]}
    assert verified == {(p, c) for p in ("channels_last", "groupnorm_silu") for c in ("unet", "vae")}
    assert max_pixel_diff(images, runner_images(RUN)) <= 1


@pytest.mark.parametrize("model", ["tiny_flux", "tiny_sd3"])
def test_vae_of_transformer_families(model: str) -> None:
    """SD3 and Flux: the VAE (no time embedding) is fused; the transformer has no GroupNorm+SiLU."""
    overrides = [f"model={model}", "backend=torch", "steps=2", "quiet=true", "passes=[groupnorm_silu]"]
    built = build_pipeline(plan_run(compose_config([*overrides, "verify=true"])))
    built.generate()
    report = built.passes_report()
    assert [d["component"] for d in report["details"]] == ["vae"]
    assert {"pass": "groupnorm_silu", "component": "transformer", "reason": "no GroupNorm feeding a SiLU"} in report[
        "skipped"
    ]
    assert [(v["component"], v["max_abs_error"] <= v["bound"]) for v in report["verified"]] == [("vae", True)]


@pytest.mark.slow
def test_inductor_compiles_the_fused_norms() -> None:
    """backend=inductor bypasses submodule hooks in its compiled code: the fusion must be modules to count."""
    built = build_pipeline(plan_run(compose_config([*RUN, "steps=2", "backend=inductor", "passes=[groupnorm_silu]",
                                                    "verify=true"])))  # fmt: skip
    built.generate()
    assert [v["component"] for v in built.passes_report()["verified"]] == ["unet", "vae"]


@pytest.mark.paddle
def test_paddle_skips_it_with_the_reason() -> None:
    overrides = ["model=shapes_sd15", "steps=2", "quiet=true", "backend=paddle", "passes=[groupnorm_silu]"]
    built = build_pipeline(plan_run(compose_config(overrides)))
    assert built.passes_report()["skipped"] == [
        {"pass": "groupnorm_silu", "component": "*", "reason": "engine paddle is not one of torch"}
    ]


# ----------------------------------------------------------------- the fused operation and blocks
def _inputs(dtype: str, layout: str, shape=(2, 64, 9, 7), seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * 3 + 2  # an offset mean: the statistics must not cancel
    weight, bias = torch.randn(shape[1], generator=generator), torch.randn(shape[1], generator=generator)
    x, weight, bias = (t.to(getattr(torch, dtype)) for t in (x, weight, bias))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, weight, bias


def _error(actual, expected) -> float:
    return float((actual.float() - expected.float()).abs().max() / max(1.0, float(expected.float().abs().max())))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_operation_equals_group_norm_then_silu(dtype: str, layout: str) -> None:
    import torch
    import torch.nn.functional as F

    from components.torch.groupnorm_silu import group_norm_silu

    x, weight, bias = _inputs(dtype, layout)
    expected = F.silu(F.group_norm(x, 32, weight, bias, 1e-6))
    fused = group_norm_silu(x, weight, bias, 32, 1e-6)
    assert fused.dtype == x.dtype and fused.shape == x.shape
    assert fused.is_contiguous(
        memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format
    )
    assert _error(fused, expected) <= TOLERANCE[dtype]
    assert _error(group_norm_silu(x, None, None, 8, 1e-5), F.silu(F.group_norm(x, 8, eps=1e-5))) <= TOLERANCE[dtype]


def _block(**options):
    import torch
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(0)
    return ResnetBlock2D(in_channels=32, out_channels=64, temb_channels=16, groups=8, **options).eval()


def _apply(module, engine=None) -> dict:
    engine = engine or SimpleNamespace(name="torch", device="cpu")
    outcome = apply_passes([GroupNormSiLU()], {"block": module}, engine, verify=False)
    return outcome.report


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("options", [{}, {"up": True}, {"down": True}, {"skip_time_act": True}])
def test_fused_resnet_block_equals_eager(dtype: str, layout: str, options: dict) -> None:
    """Both norms fused, the time embedding still activated (the block's one activation module serves both)."""
    import torch

    block = _block(**options).to(getattr(torch, dtype))
    x, _, _ = _inputs(dtype, layout, shape=(2, 32, 8, 8))
    temb = torch.randn(2, 16, generator=torch.Generator().manual_seed(1)).to(x.dtype)
    with torch.no_grad():
        expected = block(x, temb)
        keys = list(block.state_dict())
        report = _apply(block)
        assert list(block.state_dict()) == keys  # the fused norms hold the originals' parameters, same names
        assert report.applications[0].details == {"fused_norms": {"ResnetBlock2D": 2}, "skipped_blocks": {}}
        fused = block(x, temb)
        report.applications[0].changes.undo()
        restored = block(x, temb)
    assert _error(fused, expected) <= TOLERANCE[dtype]
    assert torch.equal(restored, expected) and hooks_in(block) == {}


def test_unsupported_blocks_are_skipped_with_the_reason() -> None:
    from diffusers.models.resnet import ResnetBlockCondNorm2D

    scale_shift = _block(time_embedding_norm="scale_shift")
    reason = GroupNormSiLU().check(scale_shift, PassContext(engine=None))
    assert reason == (
        "no supported block: 1 x ResnetBlock2D: time_embedding_norm=scale_shift scales and shifts norm2's output "
        "before the activation"
    )
    conditional = ResnetBlockCondNorm2D(in_channels=32, temb_channels=16, groups=8, time_embedding_norm="ada_group")
    assert "ResnetBlockCondNorm2D: norm1 is AdaGroupNorm, not GroupNorm" in GroupNormSiLU().check(
        conditional, PassContext(engine=None)
    )


def test_unet_with_scale_shift_blocks_fuses_the_rest_and_reports_the_skipped() -> None:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=4, resnet_time_scale_shift="scale_shift",
    ).eval()  # fmt: skip
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 3, 16))
    with torch.no_grad():
        expected = unet(*inputs).sample
        details = _apply(unet).applications[0].details
        fused = unet(*inputs).sample
    assert details["fused_norms"] == {"UNet2DConditionModel": 1}  # the output norm; every ResNet block skipped
    [(reason, count)] = details["skipped_blocks"].items()
    assert "scale_shift" in reason and count == sum(1 for m in unet.modules() if type(m).__name__ == "ResnetBlock2D")
    assert _error(fused, expected) <= TOLERANCE["float32"]


def test_cuda_without_triton_is_refused_naming_the_package(monkeypatch) -> None:
    import passes.groupnorm_silu as module
    from runner.errors import PassError

    monkeypatch.setattr(module, "triton_available", lambda: False)
    assert GroupNormSiLU.check_device("cuda:0") == TRITON_MISSING and GroupNormSiLU.check_device("cpu") is None
    with pytest.raises(PassError, match="needs the 'triton' package"):
        _apply(_block(), SimpleNamespace(name="torch", device="cuda"))
    assert "\n" not in TRITON_MISSING


# ----------------------------------------------------------------- the Triton kernel, interpreted on the CPU
INTERPRETED = """
import json
import torch
from components.torch import groupnorm_silu, groupnorm_silu_triton
errors = []
for shape, groups, dtype, channels_last in [((2, 64, 9, 7), 32, torch.float32, False),
                                            ((2, 64, 9, 7), 32, torch.float32, True),
                                            ((1, 96, 40, 50), 8, torch.float32, False),
                                            ((2, 32, 6, 5), 4, torch.bfloat16, True)]:
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=generator) * 3 + 2).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = (torch.randn(shape[1], generator=generator).to(dtype) for _ in range(2))
    kernel = groupnorm_silu_triton.group_norm_silu(x, weight, bias, groups, 1e-6)
    expected = groupnorm_silu.reference(x, weight, bias, groups, 1e-6)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    error = float((kernel.float() - expected.float()).abs().max() / max(1.0, float(expected.float().abs().max())))
    errors.append([str(dtype), error, kernel.dtype == dtype and kernel.is_contiguous(memory_format=layout)])
print(json.dumps(errors))
"""


def test_triton_kernel_in_the_interpreter_equals_the_reference() -> None:
    # No importorskip: triton is in the dev extra (Linux), so a missing triton is a failure, not a skip.
    # TRITON_INTERPRET must be set before triton defines the kernel: a fresh process.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    done = subprocess.run(
        [sys.executable, "-c", INTERPRETED], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for dtype, error, same_layout in json.loads(done.stdout.strip().splitlines()[-1]):
        assert same_layout and error <= TOLERANCE[dtype.removeprefix("torch.")], (dtype, error)
