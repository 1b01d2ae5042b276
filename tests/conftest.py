"""Shared fixtures: tiny pipeline directories in the hub's layout (built once per test session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.support.cases import names

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest_plugins = ["tests.support.ray_cluster"]  # the ray_cluster fixture (Ray Serve and batch worker tests)

TINY_MODELS = tuple(names())  # every tiny model config: the rows of tests/support/cases.py

# The `paddle` marker (pyproject.toml) says a test needs the Paddle engine (the paddle extra). One rule applies
# it at collection: a test parametrized with a Paddle backend, engine or framework (a parameter named backend,
# engine, engine_name or framework whose value is `paddle` or a conf/backend/*.yaml of the paddle engine), or
# using a Paddle fixture (PADDLE_FIXTURES), is marked; other tests that use Paddle carry the marker themselves
# (modules that use it throughout set `pytestmark`). Nothing is skipped: an environment without the paddle
# extra deselects them with -m "not paddle" (pytest counts them as deselected), and a Paddle test that lacks the
# marker fails there instead of passing unnoticed.
ENGINE_PARAMETERS = ("backend", "engine", "engine_name", "framework")
PADDLE_FIXTURES = ("paddle", "paddle_layout_weights")
BACKEND_DIR = Path(__file__).resolve().parents[1] / "conf" / "backend"


def _paddle_backends() -> frozenset[str]:
    found = {"paddle"}
    for path in BACKEND_DIR.glob("*.yaml"):
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if spec.get("engine") == "paddle" or path.stem.startswith("paddle"):
            found.add(path.stem)
    return frozenset(found)


PADDLE_BACKENDS = _paddle_backends()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        uses_fixture = any(name in PADDLE_FIXTURES for name in getattr(item, "fixturenames", ()))
        values = [params.get(name) for name in ENGINE_PARAMETERS]
        if uses_fixture or any(isinstance(v, str) and v in PADDLE_BACKENDS for v in values):
            item.add_marker(pytest.mark.paddle)


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
