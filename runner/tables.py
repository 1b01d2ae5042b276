"""Human-readable tables: the bench table of one run, and the summary of a sweep."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runner.quality import CORE_ATTRIBUTES


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def bench_table(report: Mapping[str, Any]) -> str:
    run, bench = report["run"], report["bench"]
    ours, ref = bench["runner"], bench.get("reference") or {}
    ratio = bench.get("ratio", {})
    title = (
        f"model={run['model']} backend={run['backend']} ({run['device']}) precision={run['precision']} "
        f"{run['height']}x{run['width']} steps={run['steps']} batch={run['images_per_prompt']} "
        f"(warm-up {bench['warmup']}, timed {bench['repeats']})"
    )
    rows = [[f"stage {name}", s["median"], s["p90"], None, None, None] for name, s in ours["stages"].items()]
    ref_step, ref_total = ref.get("step") or {}, ref.get("total") or {}
    rows.append(["denoise step", ours["step"].get("median"), ours["step"].get("p90"), ref_step.get("median"),
                 ref_step.get("p90"), ratio.get("step")])  # fmt: skip
    rows.append(["total", ours["total"]["median"], ours["total"]["p90"], ref_total.get("median"),
                 ref_total.get("p90"), ratio.get("total")])  # fmt: skip
    rows.append(["steps/s", ours["steps_per_s"], None, ref.get("steps_per_s"), None, None])
    rows.append(["images/s", ours["images_per_s"], None, ref.get("images_per_s"), None, None])
    rows.append(["peak memory MB", ours["peak_memory_mb"], None, ref.get("peak_memory_mb"), None, None])
    rows.append(["denoiser GFLOP/call", bench["denoiser"]["gflop_per_call"], None, None, None, None])
    rows.append(["denoiser TFLOP/s", bench["denoiser"]["tflop_per_s"], None, None, None, None])
    headers = ["ms unless noted", "runner median", "runner p90", "reference median", "reference p90",
               "speed ratio (ref/runner)"]  # fmt: skip
    notes = [f"reference: {ref.get('pipeline', '-')}"]
    if ref.get("error"):
        notes.append(f"reference unavailable: {ref['error']}")
    if ref.get("note"):
        notes.append(f"note: {ref['note']}")
    quality = bench.get("quality")
    if quality:
        notes.append(quality_line(quality))
    return "\n".join([title, markdown(headers, rows), *notes])


def quality_line(quality: Mapping[str, Any]) -> str:
    ours, ref, sim = quality["adherence"], quality["reference_adherence"], quality["vs_reference"]

    def part(score: Mapping[str, Any]) -> str:
        return " ".join(f"{k} {_fmt(score.get(k))}" for k in CORE_ATTRIBUTES)

    return (
        f"quality over {quality['prompts']} prompts: adherence {part(ours)} (reference: {part(ref)}); "
        f"vs {quality['reference']}: PSNR mean {_fmt(sim['psnr_mean_db'])} dB, min {_fmt(sim['psnr_min_db'])} dB, "
        f"SSIM {_fmt(sim['ssim_mean'])}"
    )


SUMMARY_COLUMNS = [
    "job", "model", "backend", "device", "precision", "passes", "size", "steps", "batch", "step_ms_median",
    "step_ms_p90", "steps_per_s", "images_per_s", "total_ms", "peak_memory_mb", "gflop_per_call", "tflop_per_s",
    "reference_step_ms", "speed_ratio_step", "adherence_colour", "adherence_shape", "adherence_background",
    "psnr_db", "ssim",
]  # fmt: skip


def summary_row(job: str, report: Mapping[str, Any]) -> dict[str, Any]:
    """One sweep job as a flat row (bench jobs fill every column, run jobs the single-run figures)."""
    run = report["run"]
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(
        job=job, model=run["model"], backend=run["backend"], device=run["device"], precision=run["precision"],
        passes=",".join(report.get("passes", {}).get("applied", [])) or "none",
        size=f"{run['height']}x{run['width']}", steps=run["steps"], batch=run["images_per_prompt"],
        step_ms_median=report["denoise_steps"].get("median"), step_ms_p90=report["denoise_steps"].get("p90"),
        steps_per_s=report["steps_per_s"], images_per_s=report["images_per_s"], total_ms=report["total_ms"],
        peak_memory_mb=report["peak_memory_mb"],
    )  # fmt: skip
    bench = report.get("bench")
    if bench:
        ours, ref = bench["runner"], bench.get("reference") or {}
        row.update(
            step_ms_median=ours["step"].get("median"), step_ms_p90=ours["step"].get("p90"),
            steps_per_s=ours["steps_per_s"], images_per_s=ours["images_per_s"], total_ms=ours["total"]["median"],
            peak_memory_mb=ours["peak_memory_mb"], gflop_per_call=bench["denoiser"]["gflop_per_call"],
            tflop_per_s=bench["denoiser"]["tflop_per_s"], reference_step_ms=(ref.get("step") or {}).get("median"),
            speed_ratio_step=bench.get("ratio", {}).get("step"),
        )  # fmt: skip
        quality = bench.get("quality")
        if quality:
            adherence, sim = quality["adherence"], quality["vs_reference"]
            row.update(
                adherence_colour=adherence.get("colour"), adherence_shape=adherence.get("shape"),
                adherence_background=adherence.get("background"), psnr_db=sim["psnr_mean_db"], ssim=sim["ssim_mean"],
            )  # fmt: skip
    return row
