"""Every pass on every tiny family and engine, through the same verification; unfuse, cache accounting,
failure reporting, and passes=none equal to the unoptimized runner."""

from __future__ import annotations

import numpy as np
import pytest

from passes.qkv_fusion import QKVFusion, unfuse
from runner.app import build_pipeline, load_pipeline
from runner.errors import PassError, VerificationError
from runner.pass_base import Pass, PassContext
from runner.pass_manager import apply_passes
from runner.plan import plan_run
from runner.verify import install_verification
from tests.support.cases import case, names, slow_except
from tests.support.configs import compose_config
from tests.support.runs import max_pixel_diff, runner_images


def run(overrides: list[str]):
    built = build_pipeline(plan_run(compose_config([*overrides, "quiet=true"])))
    return built, built.generate().state["images"]


@pytest.mark.parametrize("backend", ["paddle", "torch"])
@pytest.mark.parametrize("model", slow_except(names(), "tiny_flux"))  # Flux: the most passes apply
def test_all_passes_verify_on_every_family(model, backend):
    built, images = run([f"model={model}", f"backend={backend}", "passes=all", "verify=true", "steps=2"])
    report = built.passes_report()
    denoiser = case(model).denoiser
    applied = {(d["pass"], d["component"]) for d in report["details"]}
    assert ("qkv_fusion", denoiser) in applied and ("text_embedding_cache", "text_encoder") in applied
    assert (("rope_cache", denoiser) in applied) == ("rope" in case(model).traits)
    verified = {(v["pass"], v["component"]) for v in report["verified"]}
    assert ("qkv_fusion", denoiser) in verified and ("qkv_fusion", "vae") in verified
    assert all(v["max_abs_error"] <= v["bound"] for v in report["verified"])
    unoptimized = runner_images([f"model={model}", f"backend={backend}", "steps=2"])
    assert max_pixel_diff(images, unoptimized) <= case(model).tolerances.passes


@pytest.mark.parametrize("backend", ["paddle", "torch"])
@pytest.mark.parametrize("model", names())
def test_unfuse_restores_bit_identical_weights(model, backend):
    built = load_pipeline(plan_run(compose_config([f"model={model}", f"backend={backend}", "steps=1"])))
    engine = built.engine
    module = built.components[case(model).denoiser]
    before = {k: np.array(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in module.state_dict().items()}
    QKVFusion().apply(module, PassContext(engine=engine))
    assert set(module.state_dict()) != set(before), "nothing was fused"
    assert unfuse(module, engine) > 0
    after = {k: np.array(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in module.state_dict().items()}
    assert set(after) == set(before)
    for key, value in before.items():
        assert value.shape == after[key].shape and value.tobytes() == after[key].tobytes(), key


@pytest.mark.parametrize("backend", ["paddle", "torch"])
def test_text_embedding_cache_counts_hits_and_misses(backend):
    prompts = ["prompt=[a red fox,a red fox,a lighthouse]", "negative_prompt=blurry"]
    common = ["model=tiny_sd15", f"backend={backend}", "steps=1", *prompts]
    built, images = run([*common, "passes=text_embedding_cache"])
    stats = built.passes_report()["stats"]["text_embedding_cache"]
    # 3 prompt rows (2 distinct) and 3 negative rows (1 distinct): each distinct text encoded once.
    assert stats == {"hits": 3, "misses": 3}
    cached = built.generate()  # every row from the cache: the first run's embeddings
    assert built.passes_report()["stats"]["text_embedding_cache"] == {"hits": 9, "misses": 3}
    uncached = build_pipeline(plan_run(compose_config([*common, "quiet=true"]))).generate()
    # Not bit for bit: the cache encodes only the distinct rows (a batch of 2 prompts, then 1 negative), the
    # uncached run all 3 rows of each, and Paddle's CPU kernels round differently in the last bits for a
    # different batch shape. So the embeddings agree to fp32 rounding (1e-5 of their largest magnitude)
    # and the images within one uint8 rounding step (exactly equal on some machines, 1 level on others).
    for key in ("prompt_embeds", "negative_prompt_embeds"):
        ours, reference = built.engine.to_numpy(cached.state[key]), built.engine.to_numpy(uncached.state[key])
        assert ours.shape == reference.shape, key
        assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max(), key
    assert max_pixel_diff(images, uncached.state["images"]) <= 1


@pytest.mark.paddle
def test_passes_none_equals_the_unoptimized_runner():
    base = ["model=tiny_sdxl", "steps=2", "seed=3"]
    assert max_pixel_diff(runner_images(base), runner_images([*base, "passes=none"])) == 0


class Perturb(Pass):
    """A deliberately wrong pass: scales the denoiser's output layer."""

    name = "perturb"
    engines = ("paddle", "torch")

    def check(self, component, ctx):
        return None if hasattr(component, "conv_out") and hasattr(component, "add_embedding") else "no conv_out"

    def apply(self, component, ctx):
        weight = component.conv_out.weight
        if hasattr(weight, "set_value"):
            weight.set_value(weight * 1.5)
        else:
            weight.data.mul_(1.5)
        return {}


class Explode(Pass):
    name = "explode"
    engines = ("paddle", "torch")

    def check(self, component, ctx):
        return None

    def apply(self, component, ctx):
        raise RuntimeError("boom")


@pytest.mark.parametrize("backend", slow_except(["paddle", "torch"], "paddle"))
def test_verification_names_the_pass_that_broke_the_output(backend):
    built = load_pipeline(plan_run(compose_config(["model=tiny_sdxl", f"backend={backend}", "steps=1", "quiet=true"])))
    outcome = apply_passes([QKVFusion(), Perturb()], built.components, built.engine, verify=True)
    install_verification(built.components, outcome.snapshots, "float32", outcome.report.verified)
    with pytest.raises(VerificationError, match=r"pass perturb changed unet's output by [0-9.e+-]+ \(max abs\), "
                       r"above the float32 bound .*; passes applied before it: qkv_fusion"):  # fmt: skip
        built.generate()


@pytest.mark.paddle
def test_a_failing_pass_is_named_with_those_applied_before_it():
    built = load_pipeline(plan_run(compose_config(["model=tiny_sd15", "steps=1"])))
    with pytest.raises(PassError, match=r"pass explode failed on component '\w+': RuntimeError: boom; "
                       r"passes applied before it: qkv_fusion"):  # fmt: skip
        apply_passes([QKVFusion(), Explode()], built.components, built.engine, verify=False)
