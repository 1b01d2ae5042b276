"""Checks on the weights a model loads (a diffusers / ppdiffusers pipeline directory, or a single-file
checkpoint in the original layout), before anything loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.errors import ConfigError
from runner.schema import ModelSpec
from runner.single_file import PICKLE_CONVERSION, PICKLE_SUFFIXES, SINGLE_FILE_SUFFIX, check_single_file


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
TOKENIZERS_DIR = BUNDLED_DIR.parent / "tokenizers"


def bundled_models() -> list[str]:
    """Names of the pipelines `bundled:NAME` can load."""
    return sorted(p.parent.name for p in BUNDLED_DIR.glob("*/model_index.json"))


def weights_path(weights: str) -> Path:
    """The path `model.weights` names: a local directory or file, or `bundled:NAME` for a pipeline shipped with
    the project."""
    if not weights.startswith(BUNDLED_PREFIX):
        return Path(weights).expanduser()
    name = weights[len(BUNDLED_PREFIX) :]
    if name not in bundled_models():
        raise ConfigError(
            f"model.weights={weights!r} names no bundled pipeline; bundled: {', '.join(bundled_models()) or 'none'}"
        )
    return BUNDLED_DIR / name


def check_weights(model: ModelSpec) -> tuple[Path | None, dict[str, Any]]:
    """Return (the weights path, model_index.json contents), or (None, {}) for random weights.

    A directory is a diffusers-layout pipeline; a `.safetensors` file is a single-file checkpoint in the
    original layout (checked by its header: family and components; its pipeline config is empty, so the
    model YAML's defaults apply). Pickle checkpoints are refused. Raises ConfigError for anything else.
    """
    check_tokenizer_assets(model)
    if model.uses_random_weights:
        return None, {}
    path = weights_path(model.weights)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ConfigError(
            f"model.weights={model.weights!r} is a pickle checkpoint ({suffix}): pickle files can execute code when "
            f"loaded, so they are not loaded; convert it to {SINGLE_FILE_SUFFIX}, e.g. {PICKLE_CONVERSION}"
        )
    if suffix == SINGLE_FILE_SUFFIX or path.is_file():
        if suffix != SINGLE_FILE_SUFFIX:
            raise ConfigError(
                f"model.weights={model.weights!r} is a file but not a {SINGLE_FILE_SUFFIX} checkpoint; give a "
                f"{SINGLE_FILE_SUFFIX} single file or a pipeline directory"
            )
        check_single_file(path, model.weights, model.name, model.single_file, model.weighted_roles)
        return path, {}
    return path, check_weights_dir(model, path)


def check_tokenizer_assets(model: ModelSpec) -> None:
    """A tokenizer `asset` the model YAML names must be one the project ships."""
    shipped = sorted(p.name for p in TOKENIZERS_DIR.iterdir() if p.is_dir())
    for role, spec in model.components.items():
        if spec.asset is not None and spec.asset not in shipped:
            raise ConfigError(
                f"model.components.{role}.asset={spec.asset!r} is not a bundled tokenizer; "
                f"bundled: {', '.join(shipped)}"
            )


def check_weights_dir(model: ModelSpec, root: Path) -> dict[str, Any]:
    """Check a pipeline directory (a pipeline of the model's family, every component folder); return its
    model_index.json.

    Raises ConfigError when the directory is missing, is not a pipeline directory, holds another
    family's pipeline, or lacks a component folder the model needs.
    """
    if not root.is_dir():
        raise ConfigError(
            f"model.weights={model.weights!r} is not a directory (give a local pipeline directory, a "
            f"{SINGLE_FILE_SUFFIX} single-file checkpoint, {BUNDLED_PREFIX}NAME for a bundled pipeline, or 'random')"
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
    return index


def scheduler_config_from(root: Path | None, model: ModelSpec) -> dict[str, Any]:
    """The base scheduler config: the directory's scheduler/scheduler_config.json, else (random weights, a
    single file, which carries no scheduler) the model YAML's."""
    if root is None or root.is_file():
        return dict(model.scheduler_config)
    path = root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise ConfigError(f"model.weights={str(root)!r} has no {path.relative_to(root)}")
    return read_json(path)
