"""Compose configs the way the CLI does, for tests."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from runner.api import compose
from runner.schema import ModelSpec, parse_model


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config for these command-line overrides (Hydra's compose API, no run directory).

    The API's own `compose`, so tests compose exactly as `runner.load` does (one code path); a bad override
    is its one-line ConfigError."""
    return compose(overrides)


def model_spec(name: str) -> ModelSpec:
    return parse_model(compose_config([f"model={name}"]).model)
