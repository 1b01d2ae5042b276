"""Every registry entry has its config and every config names a registry entry."""

from __future__ import annotations

import pytest

from runner import registry
from runner.conf_index import group_options
from runner.errors import ConfigError
from tests.support.configs import compose_config, model_spec


def test_every_backend_config_has_a_registered_backend_and_engine():
    for name, option in group_options("backend").items():
        assert option["name"] == name, f"conf/backend/{name}.yaml names itself {option['name']!r}"
        assert name in registry.names("backend"), f"conf/backend/{name}.yaml has no registry entry"
        assert option["engine"] in registry.names("engine")


def test_every_registered_backend_has_a_config():
    assert set(registry.names("backend")) == set(group_options("backend"))


@pytest.mark.parametrize("model", sorted(group_options("model")))
def test_every_model_stage_and_sub_step_is_registered(model):
    spec = model_spec(model)
    assert spec.name == model
    stage_types = set(registry.names("stage"))
    for stage in spec.stages:
        assert stage.type in stage_types, f"model {model}: stage type {stage.type!r} is not registered"
        for kind in ("predictor", "guidance"):
            part = stage.params.get(kind)
            if part is not None:
                part_type = part if isinstance(part, str) else part["type"]
                assert part_type in registry.names(kind)


def test_every_registered_stage_is_used_by_some_model():
    used = {stage.type for model in group_options("model") for stage in model_spec(model).stages}
    assert set(registry.names("stage")) == used


def test_every_registry_entry_imports():
    # Engines and backends import their framework; only check the framework-neutral kinds here.
    for kind in ("stage", "predictor", "guidance"):
        for name in registry.names(kind):
            assert callable(registry.resolve(kind, name))


def test_unknown_name_error_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown stage 'nope'; registered: .*clip_text_encode"):
        registry.resolve("stage", "nope")


def test_scheduler_options_name_themselves_and_declare_a_kind():
    for name, option in group_options("scheduler").items():
        assert option["name"] == name
        if name != "default":
            assert option["kind"] in ("discrete", "flow_match")
            assert option["class_name"].endswith("Scheduler")


def test_default_config_composes():
    cfg = compose_config()
    assert cfg.model.name == "shapes_sd15" and cfg.backend.name == "paddle" and cfg.precision.name == "fp32"
