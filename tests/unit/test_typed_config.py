"""Typed config groups: one schema per group, each default written once, OmegaConf's errors as one line."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import MISSING

from runner import registry
from runner.conf_index import group_options
from runner.errors import ConfigError
from runner.plan import plan_run
from runner.schema import MODES, BenchSettings, MemorySettings, ModelConfig, RunMode, parse_backend, parse_mode
from tests.support.configs import compose_config


def plan(*overrides: str):
    return plan_run(compose_config(list(overrides)), check_capabilities=False)


def declared_defaults(schema: type) -> dict:
    return {
        f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(schema)
        if f.default is not MISSING
    }


@pytest.mark.parametrize(
    "group,schema_of",
    [
        ("backend", lambda name: registry.resolve("backend", name).options_schema),
        ("mode", lambda name: MODES[name]),
        ("model", lambda name: ModelConfig),
        ("family", lambda name: ModelConfig),
        ("memory", lambda name: MemorySettings),
    ],
)
def test_yaml_files_do_not_repeat_schema_defaults(group, schema_of):
    """A default lives in its dataclass; a YAML file that sets a key sets it to something else."""
    for name, option in group_options(group).items():
        defaults = declared_defaults(schema_of(name))
        repeated = [key for key, value in option.items() if key in defaults and defaults[key] == value]
        assert not repeated, f"conf/{group}/{name}.yaml repeats the defaults of {repeated}"


def test_schema_defaults_are_in_the_composed_config_and_take_plain_overrides():
    cfg = compose_config(["backend=tensorrt", "mode=bench", "passes=all"])
    assert cfg.backend.workspace_mb == 4096 and cfg.backend.tensorrt is True and cfg.backend.onednn is False
    assert (cfg.mode.warmup, cfg.mode.repeats, cfg.mode.reference) == (1, 3, True)
    assert cfg.passes.rope_cache.size == 4 and cfg.guidance_rescale == 0.0
    assert cfg.model.weights == "bundled:shapes_sd15"
    options = plan("backend=tensorrt", "backend.workspace_mb=8192", "backend.cache_dir=/tmp/x").backend.options
    assert (options.workspace_mb, options.min_subgraph_size, options.cache_dir) == (8192, 3, "/tmp/x")
    passes = plan("passes=rope_cache", "passes.rope_cache.size=9").passes
    assert [p.options.size for p in passes] == [9]


def test_default_pass_list_gets_the_same_option_defaults_as_the_named_files():
    named = {p.name: p.options for p in plan("passes=all").passes}
    for p in plan("passes=default", "backend=torch").passes:
        assert p.options == named[p.name]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["backend=inductor", "backend.mode=3"], None),  # OmegaConf converts 3 to "3" for a string field
        (["backend=tensorrt", "backend.min_subgraph_size=x"], r"^backend.min_subgraph_size='x' must be an integer$"),
        (["backend=torch", "+backend.compile=[unet]"], r"^backend=torch has no option 'compile'; it accepts: device"),
        (["passes=rope_cache", "passes.rope_cache.size=big"], r"^passes.rope_cache.size='big' must be an integer$"),
        (
            ["passes=rope_cache", "+passes.rope_cache.sise=3"],
            r"^pass rope_cache has no option 'sise'; it accepts: size$",
        ),
        (
            ["+model.components.unet.typ=x"],
            r"^model.components.unet has no option 'typ'; it accepts: asset, config, max_len",
        ),
        (["model.run_defaults.steps=many"], r"^model.run_defaults.steps='many' must be an integer$"),
        (["precision.dtype=int8"], r"^precision.dtype='int8' is not one of float32, float16, bfloat16$"),
        (["scheduler=euler", "+scheduler.colour=red"], r"^scheduler=euler has no option 'colour'; it accepts: class"),
    ],
)
def test_group_errors_are_one_line_and_name_the_key(overrides, message):
    if message is None:
        plan(*overrides)
        return
    with pytest.raises(ConfigError, match=message) as err:
        plan(*overrides)
    assert "\n" not in str(err.value)


def test_backend_options_are_the_registered_class_schema():
    spec = parse_backend(compose_config(["backend=paddle_jit"]).backend)
    assert type(spec.options) is registry.resolve("backend", "paddle_jit").options_schema
    assert (spec.name, spec.engine, spec.device) == ("paddle_jit", "paddle", "auto")
    assert spec.options.compile == ["unet", "transformer"] and spec.options.compiler is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.options.compiler = "CINN"  # type: ignore[misc]


def test_modes_are_typed_by_their_own_schema():
    assert parse_mode(compose_config(["mode=bench"]).mode) == BenchSettings(name="bench")
    assert parse_mode(compose_config([]).mode) == RunMode(name="run")
    with pytest.raises(ConfigError, match=r"^mode=run has no option 'warmup'; it accepts: name$"):
        parse_mode(compose_config(["+mode.warmup=1"]).mode)
