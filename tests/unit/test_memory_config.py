"""The memory group: its schema's defaults under every option, one-line errors before any weights load, and the
combinations with compiling backends refused."""

from __future__ import annotations

import pytest

from runner import registry
from runner.conf_index import group_options
from runner.errors import ConfigError
from runner.plan import plan_run
from runner.schema import MemorySettings, parse_memory
from tests.support.configs import compose_config


def plan(*overrides: str):
    return plan_run(compose_config(list(overrides)), check_capabilities=False)


def test_every_registered_mode_has_its_yaml_and_every_yaml_its_mode():
    assert set(registry.names("memory")) == set(group_options("memory")) == {"none", "lean", "offload", "sequential"}


def test_default_is_none_with_every_option_in_the_composed_config():
    cfg = compose_config([])
    assert cfg.memory.name == "none" and cfg.memory.tile_threshold == 1024 and cfg.memory.tile_overlap == 0.25
    assert plan().memory == MemorySettings(name="none")
    lean = plan("memory=lean", "memory.tile_threshold=256").memory
    assert (lean.name, lean.vae_slicing, lean.vae_tiling, lean.tile_threshold) == ("lean", True, True, 256)


def test_plan_and_report_name_the_mode():
    from runner.plan import describe_plan

    assert describe_plan(plan("memory=offload"))["memory"] == "offload"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["memory=bogus"],
            r"^In 'config': Could not find 'memory/bogus' Available options in 'memory': "
            r"lean none offload sequential$",
        ),
        (["memory.name=fast"], r"^memory=fast is not one of lean, none, offload, sequential$"),
        (["memory.tile_size=100"], r"^memory.tile_size=100 must be a positive multiple of 8$"),
        (["memory.tile_overlap=0.9"], r"^memory.tile_overlap=0.9 must be in \[0, 0.75\]$"),
        (["memory.tile_threshold=0"], r"^memory.tile_threshold=0 must be >= 1 \(pixels\)$"),
        (["memory.vae_tiling=maybe"], r"^memory.vae_tiling='maybe' must be true or false$"),
        (["+memory.tiles=4"], r"^memory=none has no option 'tiles'; it accepts: "),
    ],
)
def test_bad_values_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        plan(*overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides,roles",
    [
        (["memory=offload", "backend=inductor"], "unet"),
        (["memory=sequential", "backend=paddle_inference"], "unet"),
        (["memory=offload", "backend=paddle_jit"], "unet"),
        (["memory=lean", "backend=openvino"], "text_encoder, vae"),
        (["memory=sequential", "backend=onnxruntime"], "text_encoder, unet, vae"),
        (["memory=offload", "backend=tensorrt"], "unet"),
    ],
)
def test_modes_that_move_compiled_components_are_refused_before_loading(overrides, roles):
    backend = overrides[1].split("=")[1]
    with pytest.raises(ConfigError) as err:
        plan(*overrides)
    mode = overrides[0].split("=")[1]
    assert str(err.value).startswith(f"memory={mode} cannot run with backend={backend}: it moves or re-routes {roles}, "
                                     "which the backend compiles or converts (backend.compile=[")  # fmt: skip


@pytest.mark.parametrize(
    "overrides",
    [
        ["memory=lean", "backend=inductor"],  # inductor compiles the denoiser only: lean never touches it
        ["memory=offload", "backend=inductor", "backend.compile=[]"],
        ["memory=sequential", "backend=torch"],
        ["memory=offload", "backend=paddle"],
        ["model=tiny_flux", "memory=lean", "backend=inductor"],
    ],
)
def test_combinations_that_can_work_plan(overrides):
    mode = next(o for o in overrides if o.startswith("memory=")).split("=")[1]
    assert plan(*overrides).memory.name == mode


def test_parse_memory_takes_a_plain_mapping():
    assert parse_memory({"name": "sequential"}) == MemorySettings(name="sequential")
