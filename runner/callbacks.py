"""Hydra callback: after a multirun sweep, one comparison table of all jobs (markdown + CSV)."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.files import write_atomic
from runner.report import REPORT_NAME
from runner.tables import SUMMARY_COLUMNS, markdown, summary_row

log = logging.getLogger(__name__)


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for report_path in sorted(sweep_dir.glob(f"*/{REPORT_NAME}"), key=lambda p: _job_number(p.parent.name)):
        with open(report_path, encoding="utf-8") as f:
            rows.append(summary_row(report_path.parent.name, json.load(f)))
    return rows


def _job_number(name: str) -> tuple[int, str]:
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (1 << 30, name)


def write_summary(sweep_dir: Path) -> str | None:
    """Write summary.md and summary.csv into the sweep directory; return the markdown (None: no jobs)."""
    rows = collect_rows(sweep_dir)
    if not rows:
        return None
    # The markdown table leaves out columns no job filled (quality without mode.quality); the CSV keeps all.
    shown = [c for c in SUMMARY_COLUMNS if any(row[c] is not None for row in rows)]
    table = markdown(shown, [[row[c] for c in shown] for row in rows])
    write_atomic(sweep_dir / "summary.md", lambda f: f.write((table + "\n").encode("utf-8")))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(sweep_dir / "summary.csv", lambda f: f.write(buffer.getvalue().encode("utf-8")))
    return table


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = write_summary(sweep_dir) if sweep_dir.is_dir() else None
        if table:
            print(f"\nSweep summary ({sweep_dir / 'summary.md'}, summary.csv):\n{table}", flush=True)
