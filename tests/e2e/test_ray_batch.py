"""Beyond one process: mode=batch sharded over Ray actors (with a worker killed mid-run), and a sweep on Hydra's
Ray launcher (hydra/launcher=ray) with a failing job, its summary and its plots.

The slow tests start a local Ray (2 CPUs) in this process and the runner's processes join it (ray.address=...).
Sharded and single-worker images are compared exactly: both run in Ray actors of one CPU (the same threads), on
the same planned batches (they depend on the prompts file and mode.max_batch only), so the same kernels run on
the same shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner import ray_cluster
from runner.batch.store import MANIFEST
from runner.errors import CapabilityError
from tests.support.runs import REPO, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_workers_that_no_node_can_hold_are_refused() -> None:
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}]
    needs = {"CPU": ("mode.cpus_per_worker", 1.0), "GPU": ("mode.gpus_per_worker", 1.0)}
    with pytest.raises(CapabilityError, match=r"^no node of the Ray cluster can hold one worker \(mode.cpus_per_worker"
                       r"=1, mode.gpus_per_worker=1; the largest node has 2 CPU, 0 GPU\)"):  # fmt: skip
        ray_cluster.check_fits(nodes, needs, "worker", "lower them")
    ray_cluster.check_fits([*nodes, {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}}], needs, "worker", "")


def test_the_cluster_must_hold_every_worker_at_once() -> None:
    """Workers beyond the cluster's room would wait for resources forever: counted before any starts."""
    from runner.batch.workers import worker_room
    from runner.schema import BatchSettings

    nodes = [{"Alive": True, "Resources": {"CPU": 5.0}}, {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]  # fmt: skip
    assert worker_room(nodes, BatchSettings(name="batch", cpus_per_worker=2)) == 2 + 4
    assert worker_room(nodes, BatchSettings(name="batch", cpus_per_worker=1, gpus_per_worker=1)) == 2
    assert worker_room(nodes, BatchSettings(name="batch", cpus_per_worker=1, gpus_per_worker=0.5)) == 4


# ------------------------------------------------------------------------------------------ slow
def batch_args(prompts: Path, out: Path, workers: int, address: str) -> list[str]:
    return ["model=tiny_sd15", "backend=torch", "steps=8", "quiet=true", "mode=batch", f"mode.prompts_file={prompts}",
            f"mode.output_dir={out}", "mode.max_batch=1", f"mode.workers={workers}", f"ray.address={address}",
            f"hydra.run.dir={out}-run"]  # fmt: skip


def drawn(folder: Path) -> dict[tuple[int, int], tuple[dict, np.ndarray]]:
    entries = [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()]
    return {(e["line"], e["index"]): (e, np.asarray(Image.open(folder / e["file"]))) for e in entries}


def kill_one_worker(namespace: str = "diffusion-runner") -> str:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == namespace and "-batch-" in a["name"] and "-worker-" in a["name"]]  # fmt: skip
    assert names, "no batch worker found"
    ray.kill(ray.get_actor(names[0], namespace=namespace), no_restart=True)
    return names[0]


@pytest.mark.slow
def test_sharded_batches_equal_one_worker_and_a_killed_workers_batch_is_redone(ray_cluster: str, tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    colours = ["red", "green", "blue", "yellow"]
    prompts.write_text("\n".join(f"a {c} circle on a {d} background" for c in colours for d in colours) + "\n")
    one = run_cli(batch_args(prompts, tmp_path / "one", 1, ray_cluster), timeout=400)
    assert one.returncode == 0, one.stderr[-3000:]

    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = tmp_path / "two.log"
    with open(log, "w") as stream:
        args = [sys.executable, "-m", "runner", *batch_args(prompts, tmp_path / "two", 2, ray_cluster)]
        process = subprocess.Popen(args, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
    try:
        manifest = tmp_path / "two" / MANIFEST
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if manifest.is_file() and len(manifest.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, f"the run ended before a worker could be killed:\n{log.read_text()[-3000:]}"
        kill_one_worker()
        assert process.wait(300) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    assert "a worker died" in log.read_text()
    single, sharded = drawn(tmp_path / "one"), drawn(tmp_path / "two")
    assert sorted(sharded) == sorted(single) == [(line, 0) for line in range(1, 17)]
    for key, (entry, image) in single.items():
        assert sharded[key][0]["seed"] == entry["seed"] and sharded[key][0]["prompt"] == entry["prompt"]
        assert np.array_equal(sharded[key][1], image), f"line {key[0]} differs between 1 and 2 workers"
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["drawn_images"] == 16 and report["workers"] == 2


@pytest.mark.slow
def test_a_sweep_on_the_ray_launcher_reports_failures_summary_and_plots(ray_cluster: str, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_cluster}", "mode=bench", "mode.warmup=0",
         "mode.repeats=1", "model=tiny_sd15", "backend=torch", "steps=1,0,2", f"hydra.sweep.dir={sweep}"],
        timeout=500,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: 1 job(s) of the sweep failed" in proc.stderr
    assert json.loads((sweep / "failed" / "1.json").read_text())["error"] == "steps=0 must be >= 1"
    summary = (sweep / "summary.md").read_text()
    assert "Failed jobs:" in summary and "steps=0 must be >= 1" in summary
    assert len(list(sweep.glob("*/report.json"))) == 2
    for name in ("step_time", "peak_memory", "speed_vs_memory", "speed_ratio"):
        assert (sweep / "plots" / f"{name}.png").read_bytes().startswith(PNG_MAGIC), name


def test_a_sweep_job_takes_a_gpu_only_where_the_cluster_has_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra resolves the launcher's options before the launcher connects: the resolver connects first, with the
    launcher's own init options, then asks the cluster."""
    import ray
    from omegaconf import OmegaConf

    from runner.callbacks import gpus_per_job
    from runner.config_store import ray_launcher_node

    connected: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(connected))
    monkeypatch.setattr(ray, "init", lambda **kwargs: connected.append(kwargs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 8.0})
    node = OmegaConf.create(ray_launcher_node())
    node.ray.init.address = "ray://head:10001"
    assert node.ray.remote.num_gpus == 1  # resolved as Hydra resolves it: the resolver connected first
    assert connected == [{"address": "ray://head:10001", "include_dashboard": False, "object_store_memory": None}]
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    assert gpus_per_job() == 0
