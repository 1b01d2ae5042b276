"""Hydra callback: after a multirun sweep, one comparison table of all jobs (markdown + CSV), the jobs that
failed, and plots (runner/sweep_plots.py)."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.errors import RunnerError
from runner.files import write_atomic, write_json_atomic
from runner.report import REPORT_NAME
from runner.sweep_plots import PLOTS_DIR, write_plots
from runner.tables import SUMMARY_COLUMNS, markdown, summary_row

log = logging.getLogger(__name__)


def gpus_per_job(init: Any = None) -> int:
    """hydra/launcher=ray's num_gpus (runner/config_store.py): 1 when the Ray cluster the jobs run on has a GPU,
    else 0. Hydra resolves the launcher's config when it creates the launcher, before the launcher connects to
    Ray; so this connects first, with the launcher's own `init` options (the launcher then finds Ray running)."""
    import ray

    if not ray.is_initialized():
        ray.init(**(OmegaConf.to_container(init, resolve=True) if isinstance(init, DictConfig) else dict(init or {})))
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("runner_gpus_per_job"):
        OmegaConf.register_new_resolver("runner_gpus_per_job", gpus_per_job)


register_resolvers()


FAILURES_DIR = "failed"
# Exit codes of the failed jobs of this process's sweep (read back from their files by SweepSummary).
FAILED_EXIT_CODES: list[int] = []


def record_failure(sweep_dir: Path, job: int, overrides: list[str], err: RunnerError) -> None:
    """What a failed job leaves for the sweep's summary: failed/<job>.json in the sweep directory."""
    failure = {"job": job, "overrides": overrides, "exit_code": err.exit_code, "error": err.one_line()}
    write_json_atomic(sweep_dir / FAILURES_DIR / f"{job}.json", failure)


def collect_failures(sweep_dir: Path) -> list[dict[str, Any]]:
    paths = sorted((sweep_dir / FAILURES_DIR).glob("*.json"), key=lambda p: _job_number(p.stem))
    return [json.loads(path.read_text(encoding="utf-8")) for path in paths]


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for report_path in sorted(sweep_dir.glob(f"*/{REPORT_NAME}"), key=lambda p: _job_number(p.parent.name)):
        with open(report_path, encoding="utf-8") as f:
            rows.append(summary_row(report_path.parent.name, json.load(f)))
    return rows


def _job_number(name: str) -> tuple[int, str]:
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (1 << 30, name)


def write_summary(sweep_dir: Path, failures: list[dict[str, Any]]) -> str | None:
    """Write summary.md, summary.csv and the plots into the sweep directory; return the markdown (None: no jobs).
    `failures`: collect_failures(sweep_dir)."""
    rows = collect_rows(sweep_dir)
    if not rows and not failures:
        return None
    # The markdown table leaves out columns no job filled (quality without mode.quality); the CSV keeps all.
    shown = [c for c in SUMMARY_COLUMNS if any(row[c] is not None for row in rows)]
    table = markdown(shown, [[row[c] for c in shown] for row in rows]) if rows else "(no job finished)"
    if failures:
        failed = [[f["job"], " ".join(f["overrides"]), f["exit_code"], f["error"]] for f in failures]
        table += "\n\nFailed jobs:\n" + markdown(["job", "overrides", "exit code", "error"], failed)
    write_atomic(sweep_dir / "summary.md", lambda f: f.write((table + "\n").encode("utf-8")))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(sweep_dir / "summary.csv", lambda f: f.write(buffer.getvalue().encode("utf-8")))
    try:  # the tables are written first: a plot that cannot be drawn costs only the plots
        plots = write_plots(sweep_dir / PLOTS_DIR, rows) if rows else []
    except Exception as err:  # noqa: BLE001 - reported; the summary stands
        log.warning("the sweep's plots could not be drawn: %s", err)
        plots = []
    if plots:
        table += f"\n\nPlots: {', '.join(f'{PLOTS_DIR}/{path.name}' for path in plots)}"
        write_atomic(sweep_dir / "summary.md", lambda f: f.write((table + "\n").encode("utf-8")))
    return table


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A reused sweep directory: failures recorded by an earlier sweep there are not this sweep's.
        shutil.rmtree(Path(config.hydra.sweep.dir) / FAILURES_DIR, ignore_errors=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = collect_failures(sweep_dir)
        FAILED_EXIT_CODES[:] = [f["exit_code"] for f in failures]
        table = write_summary(sweep_dir, failures) if sweep_dir.is_dir() else None
        if table:
            print(f"\nSweep summary ({sweep_dir / 'summary.md'}, summary.csv):\n{table}", flush=True)
