"""report.json: what ran, how long each part took, how much memory it used, with which versions."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np

REPORT_NAME = "report.json"


def summarize_ms(values: Sequence[float]) -> dict[str, float]:
    """Median, p90, mean, min and max of a list of milliseconds (empty list: empty dict)."""
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "median": round(float(np.median(arr)), 3),
        "p90": round(float(np.percentile(arr, 90)), 3),
        "mean": round(float(arr.mean()), 3),
        "min": round(float(arr.min()), 3),
        "max": round(float(arr.max()), 3),
        "count": len(values),
    }


def runner_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("diffusion-runner", "hydra-core", "omegaconf", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_report(
    *,
    images: list[str],
    stage_ms: Mapping[str, float],
    step_ms: Sequence[float],
    num_images: int,
    peak_memory_mb: float,
    load_ms: float,
    run: Mapping[str, Any],
    backend: Mapping[str, Any],
    config: Mapping[str, Any],
    engine_versions: Mapping[str, str],
    stage_peak_memory_mb: Mapping[str, float] | None = None,
    peak_memory_source: str | None = None,
) -> dict[str, Any]:
    """stage_peak_memory_mb: each stage's peak, reset before it; peak_memory_source: what the peaks measure,
    "device_allocator" (torch / paddle CUDA allocator: max_memory_allocated) or "host_rss" (the process's resident
    set, sampled: on the CPU the host is the device, weights included)."""
    total_ms = sum(stage_ms.values())
    # Denoise iterations per second (tqdm's it/s): a 2nd-order sampler iterates twice per step.
    denoise_ms = sum(step_ms)
    return {
        "images": images,
        "stages": {name: round(ms, 3) for name, ms in stage_ms.items()},
        "denoise_steps": summarize_ms(step_ms),
        "steps_per_s": round(len(step_ms) / (denoise_ms / 1e3), 4) if denoise_ms > 0 else None,
        "images_per_s": round(num_images / (total_ms / 1e3), 4) if total_ms > 0 else None,
        "total_ms": round(total_ms, 3),
        "load_ms": round(load_ms, 3),
        "peak_memory_mb": round(peak_memory_mb, 1),
        "stage_peak_memory_mb": {name: round(mb, 1) for name, mb in (stage_peak_memory_mb or {}).items()},
        "peak_memory_source": peak_memory_source,
        "run": dict(run),
        "backend": dict(backend),
        "config": dict(config),
        "versions": {**runner_versions(), **engine_versions},
    }
