"""Package layout only (the metadata is in pyproject.toml).

The Hydra config groups stay in conf/ at the top of the repo and ship inside the package as
`runner.conf` (runner/conf/ in a wheel), so an installed runner composes configs from any directory;
runner/conf_index.py decides which folder a run reads. pyproject.toml cannot map a folder into a package
and discover the other packages at the same time, hence this file.
"""

from setuptools import find_namespace_packages, setup

CODE = find_namespace_packages(include=["runner", "runner.*", "components", "components.*", "passes", "passes.*"])
CONF = ["runner.conf", *(f"runner.conf.{name}" for name in find_namespace_packages(where="conf"))]

setup(packages=CODE + CONF, package_dir={"runner.conf": "conf"})
