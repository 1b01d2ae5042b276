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


def check_weights_dir(model: ModelSpec) -> tuple[Path | None, dict[str, Any]]:
    """Return (directory, model_index.json contents), or (None, {}) for random weights.

    Raises ConfigError when the directory is missing, is not a pipeline directory, holds another
    family's pipeline, or lacks a component folder the model needs.
    """
    if model.uses_random_weights:
        return None, {}
    root = Path(model.weights).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"model.weights={model.weights!r} is not a directory (give a local pipeline directory or 'random')"
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
