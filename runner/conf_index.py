"""Where the config groups live, and their option files read directly (for error messages and listings)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml


def conf_dir() -> Path:
    """The folder of config groups (config.yaml, model/, backend/, ...) that runs compose from.

    In a checkout (an editable install included) that is conf/ at the top of the repo, beside this
    `runner` package; an installed wheel carries the same files inside the package, as runner/conf/
    (pyproject.toml, setup.py). Both are found from this file's location rather than through the import
    system: the editable finder maps `runner.conf` itself, so `importlib.resources` could resolve it to
    another checkout's editable install (a git worktree beside the main checkout).
    """
    package = Path(__file__).resolve().parent
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "conf" / "config.yaml").is_file():
        return checkout / "conf"
    installed = package / "conf"
    if (installed / "config.yaml").is_file():
        return installed
    raise FileNotFoundError(
        f"no config groups: neither {checkout / 'conf'} (a checkout) nor {installed} (an installed package) "
        "holds config.yaml; reinstall diffusion-runner"
    )


CONF_DIR = conf_dir()


@functools.cache
def group_options(group: str) -> dict[str, dict[str, Any]]:
    """Option name -> its YAML content, for every file in <conf dir>/<group>/."""
    folder = CONF_DIR / group
    options = {}
    for path in sorted(folder.glob("*.yaml")):
        with open(path, encoding="utf-8") as f:
            options[path.stem] = yaml.safe_load(f) or {}
    return options


@functools.cache
def config_groups() -> tuple[str, ...]:
    """The config groups (folders of the conf dir): the composed config's keys that are not run parameters."""
    return tuple(sorted(path.name for path in CONF_DIR.iterdir() if path.is_dir()))
