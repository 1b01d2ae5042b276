"""mode=batch: every prompt of a file, written as one PNG per image plus manifest.jsonl, resumable.

    python -m runner mode=batch model=tiny_sd15 mode.prompts_file=prompts.txt
    python -m runner mode=batch model=sdxl model.weights=/models/sdxl mode.prompts_file=p.jsonl \\
        mode.workers=8 mode.gpus_per_worker=1

Everything is checked before any weights load: the config, every line of the prompts file (bad lines reported
with their numbers), and the output folder (it must hold this batch or nothing). Prompts with equal settings
share denoise batches of up to mode.max_batch images; a rerun of the same command skips every prompt whose
images are finished (runner/batch/store.py) and draws the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from runner.api import run_parameters
from runner.batch.prompts import PromptRequest, plan_batches, read_prompts
from runner.batch.store import BatchOutput
from runner.batch.workers import LocalWorker, RayWorkers
from runner.errors import ConfigError
from runner.files import write_json_atomic
from runner.plan import plan_run
from runner.report import REPORT_NAME
from runner.schema import BatchSettings, RaySettings, parse_mode, parse_ray, to_plain

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("outputs/batch")


def check_batch_settings(settings: BatchSettings) -> None:
    if not settings.prompts_file:
        raise ConfigError("mode=batch needs mode.prompts_file=<a text file, one prompt per line, or .jsonl>")
    for key in ("max_batch", "workers"):
        if getattr(settings, key) < 1:
            raise ConfigError(f"mode.{key}={getattr(settings, key)} must be >= 1")
    if settings.max_retries < 0:
        raise ConfigError(f"mode.max_retries={settings.max_retries} must be >= 0")
    if settings.start_timeout_s <= 0:
        raise ConfigError(f"mode.start_timeout_s={settings.start_timeout_s} must be > 0")
    if settings.cpus_per_worker <= 0:
        raise ConfigError(f"mode.cpus_per_worker={settings.cpus_per_worker} must be > 0")
    if settings.gpus_per_worker < 0:
        raise ConfigError(f"mode.gpus_per_worker={settings.gpus_per_worker} must be >= 0")


def batch_identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What draws the images besides each line's parameters: a folder holds the images of one such config."""
    plain = to_plain(cfg)
    return {
        "model": plain["model"],
        "backend": plain["backend"]["name"],
        "precision": plain["precision"],
        "scheduler": plain["scheduler"],
        "passes": plain["passes"],
        "noise": plain["noise"],
        # Only when set, so folders made without LoRAs keep the identity they were written with.
        **({"loras": plain["loras"]} if plain.get("loras") else {}),
    }


def output_folder(settings: BatchSettings, model: str) -> Path:
    if settings.output_dir:
        return Path(settings.output_dir)
    return DEFAULT_ROOT / f"{model}-{Path(str(settings.prompts_file)).stem}"


def run_batch(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Draw every unfinished prompt of mode.prompts_file; return (and write to the output folder) the report."""
    settings = parse_mode(cfg["mode"])
    assert isinstance(settings, BatchSettings)
    check_batch_settings(settings)
    ray_settings = parse_ray(cfg["ray"])
    plan = plan_run(cfg)
    # quiet: the batch has its own progress bar, not one per denoise batch
    requests = read_prompts(Path(str(settings.prompts_file)), plan, {**run_parameters(cfg), "quiet": True})
    plan_batches(requests, settings.max_batch)  # every line fits a batch, before anything is drawn
    folder = output_folder(settings, plan.model.name)
    output = BatchOutput(folder, batch_identity(cfg))
    output.open(requests)
    todo = [request for request in requests if not output.finished(request)]
    batches = plan_batches(todo, settings.max_batch)
    report: dict[str, Any] = {
        "prompts_file": str(settings.prompts_file),
        "prompts": len(requests),
        "already_finished": len(requests) - len(todo),
        "drawn_prompts": 0,
        "drawn_images": 0,
        "batches": len(batches),
        "workers": settings.workers,
        "ray": settings.workers > 1 or ray_settings.address is not None,
    }
    try:
        if todo:
            _draw(cfg, settings, ray_settings, batches, output, report, quiet=plan.settings.quiet)
    finally:
        output.close()
    report["manifest_images"] = len(output.entries)
    write_json_atomic(folder / REPORT_NAME, report)
    log.info(
        "%d prompt(s): %d finished before, %d drawn (%d images) into %s",
        report["prompts"], report["already_finished"], report["drawn_prompts"], report["drawn_images"], folder,
    )  # fmt: skip
    return report


def _draw(cfg: Mapping[str, Any], settings: BatchSettings, ray_settings: RaySettings,
          batches: list[list[PromptRequest]], output: BatchOutput, report: dict[str, Any],
          quiet: bool) -> None:  # fmt: skip
    started = time.perf_counter()
    config = {**to_plain(cfg), "quiet": True}
    workers = RayWorkers(config, settings, ray_settings) if report["ray"] else LocalWorker(config)
    report["load_s"] = round(time.perf_counter() - started, 3)
    total = sum(len(batch) for batch in batches)
    drawing = time.perf_counter()
    try:
        with tqdm(total=total, unit="prompt", desc="batch", disable=quiet) as bar:
            for batch, rendered in workers.run(batches):
                for request, pngs in zip(batch, rendered):
                    for index, png in enumerate(pngs):
                        output.record(request, index, png)
                    report["drawn_images"] += len(pngs)
                report["drawn_prompts"] += len(batch)
                bar.update(len(batch))
                bar.set_postfix(images_per_s=f"{report['drawn_images'] / (time.perf_counter() - drawing):.3g}")
    finally:
        elapsed = time.perf_counter() - drawing
        report["draw_s"] = round(elapsed, 3)
        report["images_per_s"] = round(report["drawn_images"] / elapsed, 4) if elapsed > 0 else None
        workers.close()
