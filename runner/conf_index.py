"""Read the option files of a config group directly (for error messages and listings)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@functools.cache
def group_options(group: str) -> dict[str, dict[str, Any]]:
    """Option name -> its YAML content, for every file in conf/<group>/."""
    folder = CONF_DIR / group
    options = {}
    for path in sorted(folder.glob("*.yaml")):
        with open(path, encoding="utf-8") as f:
            options[path.stem] = yaml.safe_load(f) or {}
    return options


@functools.cache
def config_groups() -> tuple[str, ...]:
    """The config groups (folders of conf/): the composed config's keys that are not run parameters."""
    return tuple(sorted(path.name for path in CONF_DIR.iterdir() if path.is_dir()))
