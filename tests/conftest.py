"""Shared fixtures: tiny pipeline directories in the hub's layout (built once per test session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cases import names

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest_plugins = ["tests.support.ray_cluster"]  # the ray_cluster fixture (Ray Serve and batch worker tests)

TINY_MODELS = tuple(names())  # every tiny model config: the rows of tests/support/cases.py


@pytest.fixture(scope="session")
def weights_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def tiny_weights(weights_root: Path):
    """model name -> a hub-layout (PyTorch safetensors) pipeline directory with tiny random weights."""
    from tests.support.weights import save_torch_layout

    made: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in made:
            made[model] = save_torch_layout(model, weights_root / model)
        return made[model]

    return get


@pytest.fixture(scope="session")
def paddle_layout_weights(weights_root: Path, tiny_weights):
    """model name -> the same weights re-saved by ppdiffusers in Paddle's own layout."""
    from tests.support.weights import save_paddle_layout

    made: dict[str, Path] = {}

    def get(model: str) -> Path:
        if model not in made:
            made[model] = save_paddle_layout(tiny_weights(model), weights_root / f"{model}_paddle")
        return made[model]

    return get
