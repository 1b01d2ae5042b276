"""backend=openvino and backend=onnxruntime: converted components against eager PyTorch, their disk cache,
verify=true, int8 weights, and the errors that come before any weights load.

Tolerances (max |pixel difference| against backend=torch, fp32): 2 for both runtimes (they fuse and reorder
float32 reductions; measured 0-1 on every tiny model). A second run with the same cache converts nothing
and gives the same images exactly (the same compiled graphs on the same shapes).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from components.backends import openvino_backend
from runner.app import build_pipeline
from runner.errors import CapabilityError, VerificationError
from runner.plan import plan_run
from tests.support.cases import names
from tests.support.configs import compose_config
from tests.support.runs import max_pixel_diff, run_cli, runner_images

COMMON = ["seed=5", "steps=2", "batch=2", "negative_prompt=blurry", "quiet=true"]
BACKENDS = ("openvino", "onnxruntime")
TOLERANCE = 2


def build(overrides: list[str]) -> Any:
    return build_pipeline(plan_run(compose_config([*overrides, "quiet=true"])))


def images_of(built: Any) -> np.ndarray:
    return built.generate().state["images"]


# ----------------------------------------------------------------- errors before any weights load
class FakeCore:
    """What an OpenVINO Core reports on a machine with only a CPU without bf16/fp16 kernels."""

    available_devices = ["CPU"]

    def get_property(self, device: str, name: str) -> list[str]:
        assert name == "OPTIMIZATION_CAPABILITIES"
        return ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]


@pytest.fixture
def cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_backend, "core", FakeCore)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["backend=openvino", "precision=bf16"],
         r"precision=bf16 \(bfloat16\) cannot run on backend=openvino device cpu: OpenVINO's CPU reports FP32, "
         r"INT8, BIN, EXPORT_IMPORT \(no such kernels there\); supported there: fp32$"),
        (["backend=openvino", "precision=fp16"], r"precision=fp16 \(float16\) cannot run on backend=openvino"),
        (["backend=openvino", "backend.device=NPU"],
         r"backend=openvino device=NPU: OpenVINO \S+ finds CPU here \(GPU needs Intel's GPU driver"),
    ],
)  # fmt: skip
def test_openvino_refuses_what_the_device_lacks(cpu_without_bf16: None, overrides: list[str], message: str) -> None:
    with pytest.raises(CapabilityError, match=message):
        plan_run(compose_config(["model=tiny_sd15", *overrides]))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["backend=onnxruntime", "backend.providers=[CUDAExecutionProvider]"],
         r"backend=onnxruntime providers=\['CUDAExecutionProvider'\]: onnxruntime \S+ has .*CPUExecutionProvider"),
        (["backend=onnxruntime", "backend.device=cuda"], r"backend=onnxruntime device=cuda: choose the device with"),
        (["backend=onnxruntime", "precision=bf16"],
         r"precision=bf16 \(bfloat16\) cannot run on backend=onnxruntime device cpu: the converted graphs run in "
         r"float32 \(use backend=openvino for bf16 and int8\); supported there: fp32$"),
        (["backend=torch", "precision=int8"],
         r"precision=int8 \(int8 weights\) cannot run on backend=torch: int8 weights run on backend=openvino$"),
        (["backend=onnxruntime", "precision=int8"],
         r"precision=int8 \(int8 weights\) cannot run on backend=onnxruntime"),
    ],
)  # fmt: skip
def test_unsupported_settings_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(CapabilityError, match=message):
        plan_run(compose_config(["model=tiny_sd15", *overrides]))


@pytest.mark.parametrize("backend,package", [("openvino", "openvino"), ("onnxruntime", "onnxruntime")])
def test_a_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, backend: str, package: str) -> None:
    import importlib

    real = importlib.import_module

    def without(name: str, *args: Any) -> Any:
        if name == package:
            raise ImportError(f"No module named {package!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without)
    message = rf"backend={backend} needs the {package} package \(.*\); install the cpu extra: pip install -e '.\[cpu\]'"
    with pytest.raises(CapabilityError, match=message):
        plan_run(compose_config(["model=tiny_sd15", f"backend={backend}"]))


def test_a_refused_backend_exits_2_with_one_line_and_writes_nothing(tmp_path) -> None:
    out = tmp_path / "run"
    proc = run_cli(["backend=onnxruntime", "backend.providers=[NoSuchProvider]", f"hydra.run.dir={out}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "providers=['NoSuchProvider']" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


# ----------------------------------------------------------------- converted against eager
def test_quieting_nncf_leaves_the_applications_handlers_alone() -> None:
    """NNCF's own set_log_level also sets the level of every handler on its logger; an application that routes
    NNCF's messages to its handlers (pytest's log capture was one) then lost its own warnings."""
    nncf_logger = logging.getLogger("nncf")
    shared = logging.Handler(level=logging.DEBUG)
    nncf_logger.addHandler(shared)
    try:
        openvino_backend.quiet_nncf()
        assert shared.level == logging.DEBUG
        assert nncf_logger.getEffectiveLevel() == logging.ERROR
    finally:
        nncf_logger.removeHandler(shared)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", names())
def test_converted_components_match_torch_and_load_from_the_cache(model: str, backend: str, tmp_path) -> None:
    eager = runner_images([f"model={model}", "backend=torch", *COMMON])
    overrides = [f"model={model}", f"backend={backend}", f"backend.cache_dir={tmp_path}", *COMMON]
    first = build(overrides)
    converted = images_of(first)
    assert max_pixel_diff(eager, converted) <= TOLERANCE
    report = first.backend.describe()
    roles = {e["component"] for e in report["max_abs_error"]}
    assert {"vae"} < roles and roles & {"unet", "transformer"} and roles & {"text_encoder"}, report
    assert all(e["max_abs_error"] <= e["bound"] for e in report["max_abs_error"]), report
    assert report["converted"] and not report["loaded_from_cache"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".convert-")], "a staging folder was left"

    second = build(overrides)
    again = images_of(second)
    assert max_pixel_diff(converted, again) == 0
    report = second.backend.describe()
    assert not report["converted"], "the second run converted again"
    assert sorted(report["loaded_from_cache"]) == sorted(first.backend.describe()["converted"])


@pytest.mark.slow
def test_verify_checks_a_cached_conversion_and_stops_on_a_wrong_one(tmp_path, monkeypatch) -> None:
    overrides = ["model=tiny_sd3", "backend=onnxruntime", f"backend.cache_dir={tmp_path}", *COMMON]
    images_of(build(overrides))  # converts
    checked = build([*overrides, "verify=true"])
    images_of(checked)
    errors = checked.backend.describe()["max_abs_error"]
    assert {e["component"] for e in errors} == {
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
    }
    assert all(e["max_abs_error"] <= e["bound"] for e in errors)

    from components.backends.onnxruntime_backend import OnnxRuntimeGraphs

    load = OnnxRuntimeGraphs.load

    def off_by_one(self, folder):  # a converted graph that computes something else
        run = load(self, folder)
        return lambda inputs: [out + 1.0 for out in run(inputs)]

    monkeypatch.setattr(OnnxRuntimeGraphs, "load", off_by_one)
    with pytest.raises(VerificationError, match=r"backend=onnxruntime changed \w+\.\w+'s output by 1 \(max abs\)"):
        images_of(build([*overrides, "verify=true"]))


@pytest.mark.slow
def test_passes_apply_before_conversion_and_eager_only_ones_are_skipped(tmp_path) -> None:
    overrides = ["model=tiny_flux", "backend=onnxruntime", f"backend.cache_dir={tmp_path}", *COMMON]
    plain = images_of(build(overrides))
    built = build([*overrides, "passes=all"])
    assert max_pixel_diff(plain, images_of(built)) <= 1
    report = built.passes_report()
    applied = set(report["applied"])
    skipped = {s["pass"]: s["reason"] for s in report["skipped"] if s["component"] == "*"}
    assert {"qkv_fusion", "text_embedding_cache"} <= applied
    assert set(skipped) == {"attention", "channels_last", "groupnorm_silu", "rope_cache"}
    assert all("converted graphs" in reason for reason in skipped.values())
    # The text-embedding cache runs around the converted encoders: a second generation encodes nothing.
    cache = next(p for p in built.passes if p.name == "text_embedding_cache")
    misses = cache.stats()["misses"]
    built.generate()
    assert cache.stats()["misses"] == misses and cache.stats()["hits"] > 0


@pytest.mark.slow
def test_int8_weights_change_the_images_within_the_verified_bound(tmp_path) -> None:
    overrides = ["model=tiny_sd15", "backend=openvino", f"backend.cache_dir={tmp_path}", *COMMON]
    fp32 = images_of(build(overrides))
    built = build([*overrides, "precision=int8", "verify=true"])
    int8 = images_of(built)
    assert max_pixel_diff(fp32, int8) > 0, "int8 weights left every pixel as fp32 had it"
    errors = built.backend.describe()["max_abs_error"]
    assert errors and all(0 < e["max_abs_error"] <= e["bound"] for e in errors if e["component"] == "unet")


@pytest.mark.slow
def test_int8_hybrid_calibrates_on_the_first_calls_then_reuses_the_calibrated_graph(tmp_path) -> None:
    overrides = ["model=tiny_sd15", "steps=8", "backend=openvino", f"backend.cache_dir={tmp_path}", "quiet=true"]
    fp32 = images_of(build(overrides))
    hybrid = [*overrides, "precision=int8_hybrid", "backend.calibration_calls=4"]
    first = build(hybrid)
    calibrated = images_of(first)  # steps 1-4 eager (calibration), 5-8 through the quantized UNet
    unet = first.backend.hooks["unet"]
    assert len(unet.converted) == 1 and unet.calibration_calls == 4
    assert max_pixel_diff(fp32, calibrated) > 0
    second = build(hybrid)
    quantized = images_of(second)  # every step through the cached quantized UNet: no calibration calls
    assert second.backend.hooks["unet"].loaded == unet.converted and not second.backend.hooks["unet"].converted
    assert max_pixel_diff(images_of(first), quantized) == 0, "the calibrated graph differs between runs"


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (["precision=int8_hybrid", "backend.calibration_calls=0"], "ConfigError",
         r"backend.calibration_calls=0 must be >= 1 for precision=int8_hybrid"),
        (["precision=int8", "+precision.activations=int4"], "ConfigError",
         r"precision.activations='int4' is not one of None, int8"),
        (["precision=fp32", "+precision.activations=int8"], "ConfigError",
         r"precision=fp32: int8 activations need int8 weights"),
        (["backend=onnxruntime", "precision=int8_hybrid"], "CapabilityError",
         r"precision=int8_hybrid \(int8 weights and int8 activations\) cannot run on backend=onnxruntime"),
    ],
)  # fmt: skip
def test_bad_quantization_settings_are_refused(overrides: list[str], error: str, message: str) -> None:
    from runner import errors

    with pytest.raises(getattr(errors, error), match=message):
        plan_run(compose_config(["model=tiny_sd15", "backend=openvino", *overrides]))  # before any weights load


def test_set_loras_is_refused_on_a_backend_running_converted_weights() -> None:
    """The runtime holds its own copy of the converted weights: a LoRA swap in place cannot reach it."""
    import runner
    from runner.errors import ConfigError

    pipe = runner.load(["model=tiny_sd15", "backend=onnxruntime", "steps=2", "quiet=true"])
    expected = (
        r"^backend=onnxruntime runs a converted copy of the weights, which set_loras cannot change in "
        r"place; load the pipeline with loras=\[\.\.\.\] instead$"
    )
    with pytest.raises(ConfigError, match=expected):
        pipe.set_loras([])
