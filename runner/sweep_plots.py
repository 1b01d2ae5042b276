"""The plots of a sweep report, beside summary.md: step time and peak memory per job, speed against memory, and
the speed ratio against the stock pipeline when the jobs were benchmarks (mode=bench with a reference).

Drawn with matplotlib's Agg canvas directly (no pyplot): no window, no global backend switched under an
application that imports the runner.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.files import write_atomic

PLOTS_DIR = "plots"
LABEL_CHARS = 48  # job labels (Hydra's override dirnames) are cut to this many characters


def write_plots(folder: Path, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write the plots the rows have data for (PNG, atomically); return their paths."""
    labels = [_label(row["job"]) for row in rows]
    written = []

    def plot(name: str, draw: Callable[[Any], None], height: float) -> None:
        written.append(_save(folder / name, draw, height))

    per_job = 1.0 + 0.35 * len(rows)
    steps = [row.get("step_ms_median") for row in rows]
    if any(v is not None for v in steps):
        references = [row.get("reference_step_ms") for row in rows]
        plot("step_time.png", lambda ax: _bars(ax, labels, steps, "denoise step, median (ms)", references), per_job)
    memory = [row.get("peak_memory_mb") for row in rows]
    if any(v is not None for v in memory):
        plot("peak_memory.png", lambda ax: _bars(ax, labels, memory, "peak memory (MB)"), per_job)
    speed = [row.get("images_per_s") for row in rows]
    if any(v is not None for v in speed) and any(v is not None for v in memory):
        plot("speed_vs_memory.png", lambda ax: _scatter(ax, rows, memory, speed), 4.5)
    ratios = [row.get("speed_ratio_step") for row in rows]
    if any(v is not None for v in ratios):
        plot("speed_ratio.png", lambda ax: _bars(ax, labels, ratios, "step speed vs the stock pipeline (x)", line=1.0),
             per_job)  # fmt: skip
    return written


def _label(job: str) -> str:
    return job if len(job) <= LABEL_CHARS else job[: LABEL_CHARS - 1] + "…"


def _bars(ax: Any, labels: list[str], values: list[Any], title: str, references: list[Any] | None = None,
          line: float | None = None) -> None:  # fmt: skip
    positions = list(range(len(labels)))
    has_reference = references is not None and any(v is not None for v in references)
    height = 0.4 if has_reference else 0.7
    ours = [v if v is not None else 0.0 for v in values]
    ax.barh([p - (height / 2 if has_reference else 0) for p in positions], ours, height=height, label="runner")
    if has_reference:
        refs = [v if v is not None else 0.0 for v in references or []]
        ax.barh([p + height / 2 for p in positions], refs, height=height, label="stock pipeline")
        ax.legend(loc="lower right")
    if line is not None:
        ax.axvline(line, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(positions, labels, fontsize=8)
    ax.invert_yaxis()  # job 0 on top, as in summary.md
    ax.set_xlabel(title)
    ax.grid(axis="x", alpha=0.3)


def _scatter(ax: Any, rows: Sequence[Mapping[str, Any]], memory: list[Any], speed: list[Any]) -> None:
    for row, mb, ips in zip(rows, memory, speed):
        if mb is None or ips is None:
            continue
        ax.scatter([mb], [ips])
        ax.annotate(str(row["job"]).split("_", 1)[0], (mb, ips), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("peak memory (MB)")
    ax.set_ylabel("images/s")
    ax.set_title("speed vs memory (labels: job numbers)", fontsize=9)
    ax.grid(alpha=0.3)


def _save(path: Path, draw: Callable[[Any], None], height: float) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.0, max(height, 2.5)), layout="constrained")
    FigureCanvasAgg(figure)
    draw(figure.add_subplot())
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_atomic(path, lambda f: f.write(buffer.getvalue()))
    return path
