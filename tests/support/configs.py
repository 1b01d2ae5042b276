"""Compose configs the way the CLI does, for tests."""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from runner.conf_index import CONF_DIR
from runner.config_store import register_schema_defaults
from runner.schema import ModelSpec, parse_model


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config for these command-line overrides (Hydra's compose API, no run directory)."""
    register_schema_defaults()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def model_spec(name: str) -> ModelSpec:
    return parse_model(compose_config([f"model={name}"]).model)
