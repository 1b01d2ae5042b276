"""Every model x backend x precision composes; valid combinations plan, invalid ones give the promised error.

Expectations follow the installed Paddle build's features, so the same test holds on a CUDA build.
"""

from __future__ import annotations

import itertools

import pytest

from runner.conf_index import group_options
from runner.errors import CapabilityError, ConfigError
from runner.plan import plan_run
from tests.support.configs import compose_config

MODELS = sorted(group_options("model"))
BACKENDS = sorted(n for n, o in group_options("backend").items() if o["engine"] == "paddle")
PRECISIONS = sorted(group_options("precision"))


@pytest.fixture(scope="module")
def features():
    from components.paddle import runtime

    return runtime.build_features(), runtime.device_count("gpu")


def expected_error(backend: str, precision: str, features: dict, gpus: int) -> str | None:
    """The error this build should give, as a regex, or None when the combination must plan."""
    option = group_options("backend")[backend]
    needed = option.get("requires", [])
    names = {"cuda": "CUDA", "rocm": "ROCm", "xpu": "Kunlun XPU", "cinn": "CINN", "tensorrt": "TensorRT"}
    missing = [names[f] for f in needed if not features[f]]
    if missing:
        return rf"^backend={backend} needs a Paddle build with .*{missing[0]}.* was compiled without it$"
    if backend == "custom_device":
        return r"^backend=custom_device device npu:0: "
    if group_options("precision")[precision].get("weights"):  # int8, int8_hybrid: OpenVINO only
        return rf"^precision={precision} \(int8 weights.*\) cannot run on backend={backend}: .* backend=openvino$"
    on_cpu = option["device"] == "auto" and not ((features["cuda"] or features["rocm"]) and gpus)
    if on_cpu and precision != "fp32":
        prefix = rf"^precision={precision} \(\w+\) cannot run on backend={backend} device cpu"
        return prefix + ": Paddle's CPU kernels run float32 only"
    return None


# The fast subset keeps every backend and precision for one UNet and one transformer model.
@pytest.mark.parametrize(
    "model,backend,precision",
    [
        pytest.param(*combo, marks=() if combo[0] in ("tiny_sd15", "tiny_flux") else pytest.mark.slow)
        for combo in itertools.product(MODELS, BACKENDS, PRECISIONS)
    ],
)
def test_combination_plans_or_gives_the_promised_error(model, backend, precision, features):
    cfg = compose_config([f"model={model}", f"backend={backend}", f"precision={precision}"])
    assert cfg.model.name == model and cfg.backend.name == backend and cfg.precision.name == precision
    expected = expected_error(backend, precision, *features)
    if expected is None:
        plan = plan_run(cfg)
        assert plan.device and plan.stages and plan.model.name == model
    else:
        with pytest.raises(CapabilityError, match=expected) as err:
            plan_run(cfg)
        assert "\n" not in err.value.one_line()


@pytest.mark.parametrize("model", MODELS)
def test_every_model_validates_without_capabilities(model):
    """Values, scheduler and stage graph check out for every model before any engine is touched."""
    plan = plan_run(compose_config([f"model={model}"]), check_capabilities=False)
    assert [s.name for s in plan.stages][-1] == "decode"


def test_flow_scheduler_is_refused_for_a_discrete_family():
    with pytest.raises(
        ConfigError, match=r"^scheduler=flow_euler cannot drive model=shapes_sd15: it needs a discrete-time"
    ):
        plan_run(compose_config(["scheduler=flow_euler"]), check_capabilities=False)
