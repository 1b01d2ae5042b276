"""Checks on a local weights directory (diffusers / ppdiffusers layout), before anything loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.errors import ConfigError
from runner.schema import ModelSpec


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc


BUNDLED_PREFIX = "bundled:"
# The trained pipelines shipped with the project: data beside the engine code (a checkout and an installed
# wheel lay out runner/ and components/ side by side), found by path so that runner/ imports no engine code.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "components" / "assets" / "models"


def bundled_models() -> list[str]:
    """Names of the pipelines `bundled:NAME` can load."""
    return sorted(p.parent.name for p in BUNDLED_DIR.glob("*/model_index.json"))


def weights_path(weights: str) -> Path:
    """The directory `model.weights` names: a local path, or `bundled:NAME` for a pipeline shipped with the project."""
    if not weights.startswith(BUNDLED_PREFIX):
        return Path(weights).expanduser()
    name = weights[len(BUNDLED_PREFIX) :]
    if name not in bundled_models():
        raise ConfigError(
            f"model.weights={weights!r} names no bundled pipeline; bundled: {', '.join(bundled_models()) or 'none'}"
        )
    return BUNDLED_DIR / name


def check_weights_dir(model: ModelSpec) -> tuple[Path | None, dict[str, Any]]:
    """Return (directory, model_index.json contents), or (None, {}) for random weights.

    Raises ConfigError when the directory is missing, is not a pipeline directory, holds another
    family's pipeline, or lacks a component folder the model needs.
    """
    if model.uses_random_weights:
        return None, {}
    root = weights_path(model.weights)
    if not root.is_dir():
        raise ConfigError(
            f"model.weights={model.weights!r} is not a directory (give a local pipeline directory, "
            f"{BUNDLED_PREFIX}NAME for a bundled one, or 'random')"
        )
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise ConfigError(
            f"model.weights={model.weights!r} has no model_index.json; expected a diffusers-layout pipeline directory"
        )
    index = read_json(index_path)
    found = index.get("_class_name")
    if found not in model.pipeline_classes:
        raise ConfigError(
            f"model.weights={model.weights!r} holds a {found} but model={model.name} needs "
            f"{' or '.join(model.pipeline_classes)}; pick the model config that matches the weights"
        )
    folders = [(spec.role, spec.path) for spec in model.components.values()] + [("scheduler", "scheduler")]
    for role, folder in folders:
        if folder and not (root / folder).is_dir():
            raise ConfigError(
                f"model.weights={model.weights!r} has no {folder}/ folder (component {role!r} of model={model.name})"
            )
    return root, index


def scheduler_config_from(root: Path | None, model: ModelSpec) -> dict[str, Any]:
    """The base scheduler config: the directory's scheduler/scheduler_config.json, else the model YAML's."""
    if root is None:
        return dict(model.scheduler_config)
    path = root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise ConfigError(f"model.weights={str(root)!r} has no {path.relative_to(root)}")
    return read_json(path)
