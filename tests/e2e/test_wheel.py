"""A built wheel carries the config groups and runs outside a checkout (`pip install .`, then run anywhere)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("runner", "components", "passes")
NOT_SOURCES = {".git", ".venv", "outputs", "build", "dist", ".pytest_cache", ".ruff_cache"}


def _copy_sources(dest: Path) -> Path:
    """The checkout without build leftovers: a stale build/lib would hide files missing from the wheel."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = NOT_SOURCES if Path(folder) == REPO else set()
        return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


def _expected_files() -> set[str]:
    """Paths a wheel must hold: every module of the packages, the tokenizer assets, every config file."""
    files = {p.relative_to(REPO).as_posix() for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    files |= {p.relative_to(REPO).as_posix() for p in (REPO / "components" / "assets").rglob("*") if p.is_file()}
    files |= {"runner/conf/" + p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    return {f for f in files if "__pycache__" not in f}


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    pytest.importorskip("diffusers")
    # Build offline from a clean copy with this environment's setuptools (what `pip install .` does).
    _pip(
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path / "dist"),
        str(_copy_sources(tmp_path / "src")),
    )
    (wheel,) = (tmp_path / "dist").glob("diffusion_runner-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    missing = sorted(_expected_files() - names)
    assert not missing, f"{len(missing)} file(s) missing from {wheel.name}: {missing[:10]}"
    assert "runner/conf/config.yaml" in names and not any(n.startswith("conf/") for n in names)

    # A fresh venv holding only the wheel; the heavy dependencies come from this environment's
    # site-packages through a path entry (its .pth files, an editable install's finder among them, are not run).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    _pip("--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel))
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    assert (venv / "bin" / "diffusion-runner").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(
        [str(python), "-m", "runner", "model=tiny_sd15", "backend=torch", "steps=2", "quiet=true"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (elsewhere / "outputs" / "runs").glob("*/*")  # Hydra's default run dir, under the cwd
    report = json.loads((run_dir / "report.json").read_text())
    assert report["images"] == ["image_000.png"] and (run_dir / "image_000.png").is_file()
    sources = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["config_sources"]
    (main,) = [s for s in sources if s["provider"] == "main"]
    assert Path(main["path"]) == Path(purelib) / "runner" / "conf", "the configs did not come from the wheel"

    # The Python API from the same install: runner.load composes from the wheel's configs too.
    script = (
        "import runner, runner.conf_index as c; "
        "pipe = runner.load(['model=tiny_sd15', 'backend=torch', 'steps=2', 'quiet=true']); "
        "image = pipe.text_to_image('a red fox', seed=3); "
        "print(runner.__file__, c.CONF_DIR, image.size)"
    )
    proc = subprocess.run(
        [str(python), "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, conf, size = proc.stdout.split()[-4], proc.stdout.split()[-3], " ".join(proc.stdout.split()[-2:])
    assert Path(module).is_relative_to(purelib) and Path(conf) == Path(purelib) / "runner" / "conf"
    assert size == "(64, 64)"
