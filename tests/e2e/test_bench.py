"""mode=bench: report fields, the printed table, FLOP counts that agree across engines, sweep summaries."""

from __future__ import annotations

import contextlib
import csv
import json

import pytest

from runner.app import create_engine, load_pipeline
from runner.bench import count_denoiser_flops, measure_reference, parse_bench
from runner.errors import ConfigError
from runner.plan import plan_run
from runner.schema import BenchSettings
from tests.support.cases import names, slow_except
from tests.support.configs import compose_config
from tests.support.runs import run_cli


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["paddle", "torch"])
def test_bench_report_and_table(tmp_path, backend):
    out = tmp_path / "bench"
    proc = run_cli(["mode=bench", "model=tiny_sd15", f"backend={backend}", "steps=2", "mode.warmup=1",
                    "mode.repeats=2", "quiet=true", f"hydra.run.dir={out}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    bench = report["bench"]
    assert (bench["warmup"], bench["repeats"]) == (1, 2)
    runner = bench["runner"]
    assert set(runner["stages"]) == {"encode_prompt", "prepare_latents", "denoise", "decode"}
    assert runner["step"]["count"] == 2 * 2  # PNDM iterates steps + 1 = 3 times; the first is left out
    assert 0 < runner["step"]["median"] <= runner["step"]["p90"]
    assert runner["steps_per_s"] > 0 and runner["images_per_s"] > 0 and runner["peak_memory_mb"] > 100
    assert bench["denoiser"]["gflop_per_call"] > 1 and bench["denoiser"]["tflop_per_s"] > 0
    reference = bench["reference"]
    assert reference["pipeline"] == "StableDiffusionPipeline" and reference["step"]["median"] > 0
    assert bench["ratio"]["step"] > 0 and bench["ratio"]["total"] > 0
    assert "| denoise step |" in proc.stdout and "speed ratio" in proc.stdout
    assert report["images"] == ["image_000.png"] and (out / "image_000.png").is_file()


@pytest.mark.parametrize("model", slow_except(names()))  # two engines' FLOP counters: slow
def test_flop_counts_agree_across_engines(model):
    """Paddle's counter (hooks + patched matmul/attention) and PyTorch's FlopCounterMode count the same
    denoiser call within 1%."""
    counts = {}
    for backend in ("paddle", "torch"):
        plan = plan_run(compose_config([f"model={model}", f"backend={backend}", "steps=1", "quiet=true"]))
        built = load_pipeline(plan)
        counts[backend] = count_denoiser_flops(plan, built.engine, built.components)["flops_per_call"]
    assert counts["paddle"] > 0
    assert abs(counts["paddle"] - counts["torch"]) <= 0.01 * counts["torch"], counts


@pytest.mark.parametrize("model", ["tiny_sd15", "tiny_flux"])
def test_torch_flop_count_is_flop_counter_mode_with_attention_visible(model):
    """On CPU, scaled_dot_product_attention runs a flash kernel that FlopCounterMode has no formula for
    (it counts 0); the engine's counter adds that kernel's two matmuls. With the math kernel forced,
    FlopCounterMode sees attention as bmm and counts it itself: the two counts are then equal (attention
    counted once), and the stock count without it is lower by exactly the attention matmuls."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    plan = plan_run(compose_config([f"model={model}", "backend=torch", "steps=1", "quiet=true"]))
    built = load_pipeline(plan)

    def count(make_counter, *contexts):
        counter = make_counter()
        with torch.no_grad(), contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            stack.enter_context(counter)
            count_denoiser_flops(plan, built.engine, built.components)
        return counter

    def per_op(counter) -> dict[str, int]:
        return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}

    ours = count(lambda: built.engine.flop_counter([]))
    math = count(lambda: FlopCounterMode(display=False), sdpa_kernel(SDPBackend.MATH))
    default = count(lambda: FlopCounterMode(display=False))
    assert ours.total > 0 and ours.total == math.get_total_flops()
    flash = ours.per_op()["aten._scaled_dot_product_flash_attention_for_cpu"]
    assert flash > 0 and flash == per_op(math)["aten.bmm"] - per_op(default).get("aten.bmm", 0)
    assert default.get_total_flops() == ours.total - flash


@pytest.mark.slow
def test_paddle_flux_has_no_stock_reference(tmp_path):
    out = tmp_path / "bench"
    proc = run_cli(["mode=bench", "model=tiny_flux", "steps=1", "mode.warmup=0", "mode.repeats=1", "quiet=true",
                    f"hydra.run.dir={out}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = json.loads((out / "report.json").read_text())["bench"]["reference"]
    assert reference["error"].startswith("ppdiffusers 0.29.0 has no FluxPipeline")
    assert "reference unavailable: ppdiffusers 0.29.0 has no FluxPipeline" in proc.stdout


@pytest.mark.slow
def test_multirun_bench_writes_one_summary(tmp_path):
    sweep = tmp_path / "sweep"
    # The summary is under test, not each model: one UNet and one transformer model on both engines.
    models = [names(denoiser="unet")[0], names(denoiser="transformer")[0]]
    args = ["-m", "mode=bench", f"model={','.join(models)}", "backend=paddle,torch", "steps=2", "mode.warmup=0",
            "mode.repeats=1", "quiet=true", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = run_cli(args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert sorted((r["model"], r["backend"]) for r in rows) == sorted(
        (model, backend) for model in models for backend in ("paddle", "torch")
    )
    assert all(float(r["step_ms_median"]) > 0 and float(r["gflop_per_call"]) > 0 for r in rows)
    assert all(float(r["speed_ratio_step"]) > 0 for r in rows)
    table, plots = (sweep / "summary.md").read_text().rstrip("\n").split("\n\n")
    assert table.startswith("| job | model | backend |") and table.count("\n") == 5  # header, rule, 4 jobs
    plot_names = ["step_time", "peak_memory", "speed_vs_memory", "speed_ratio"]
    assert plots == "Plots: " + ", ".join(f"plots/{name}.png" for name in plot_names)
    for name in plot_names:
        assert (sweep / "plots" / f"{name}.png").read_bytes().startswith(b"\x89PNG"), name
    assert "Sweep summary" in proc.stdout


@pytest.mark.parametrize("key,value", [("warmup", -1), ("repeats", 0)])
def test_bad_bench_settings(key, value):
    with pytest.raises(ConfigError, match=rf"mode.{key}={value} must be an integer >= "):
        parse_bench({"name": "bench", "warmup": 1, "repeats": 1, key: value})


def test_bad_bench_setting_types_are_named():
    with pytest.raises(ConfigError, match=r"^mode.repeats='many' must be an integer$"):
        parse_bench({"name": "bench", "repeats": "many"})
    accepted = "name, quality, quality_prompts, reference, repeats, warmup"
    with pytest.raises(ConfigError, match=rf"^mode=bench has no option 'warmups'; it accepts: {accepted}$"):
        parse_bench({"name": "bench", "warmups": 2})
    assert parse_bench({"name": "bench"}) == BenchSettings(name="bench")  # the defaults, written once


class StockWithRescale:
    """Stands in for a stock pipeline: records the arguments it is called with."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, prompt=None, negative_prompt=None, num_images_per_prompt=1, height=None, width=None,
                 num_inference_steps=1, guidance_scale=1.0, guidance_rescale=0.0, output_type="np",
                 callback_on_step_end=None, generator=None):  # fmt: skip
        self.calls.append({"guidance_scale": guidance_scale, "guidance_rescale": guidance_rescale})


class StockWithoutRescale:
    def __call__(self, prompt=None, guidance_scale=1.0, output_type="np", generator=None):
        pass


def test_reference_pipeline_gets_the_guidance_rescale(monkeypatch):
    plan = plan_run(compose_config(["backend=torch", "guidance=6", "guidance_rescale=0.3", "steps=1"]))
    engine = create_engine(plan)
    bench = BenchSettings(name="bench", warmup=0, repeats=1)
    stock = StockWithRescale()
    monkeypatch.setattr(engine, "stock_pipeline", lambda class_name, components: stock)
    assert "note" not in measure_reference(plan, engine, {}, bench)
    assert stock.calls == [{"guidance_scale": 6.0, "guidance_rescale": 0.3}]
    monkeypatch.setattr(engine, "stock_pipeline", lambda class_name, components: StockWithoutRescale())
    note = measure_reference(plan, engine, {}, bench)["note"]
    assert note == "StableDiffusionPipeline takes no guidance_rescale; its guidance is not rescaled"


def test_bench_quality_scores_the_job_against_its_fp32_unoptimized_run(tmp_path):
    """mode.quality=true: adherence of the fixed prompt set, and PSNR/SSIM against the fp32 eager run of the
    same prompts and seeds. A job that is that run scores PSNR 100 (identical, capped) and SSIM 1; bf16 less;
    a sweep prints the quality columns."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "mode=bench", "mode.quality=true", "mode.quality_prompts=4", "model=tiny_sd15",
                    "backend=torch", "precision=fp32,bf16", "steps=2", "mode.warmup=0", "mode.repeats=1",
                    "mode.reference=false", "quiet=true", f"hydra.sweep.dir={sweep}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = {}
    for path in sweep.glob("*/report.json"):
        report = json.loads(path.read_text())
        reports[report["run"]["precision"]] = report["bench"]["quality"]
        assert (path.parent / "quality_grid.png").is_file()
    fp32, bf16 = reports["fp32"], reports["bf16"]
    assert fp32["prompts"] == 4 and fp32["reference"] == "precision=fp32 passes=none backend=torch"
    assert fp32["vs_reference"] == {"psnr_mean_db": 100.0, "psnr_min_db": 100.0, "ssim_mean": 1.0}
    assert fp32["adherence"] == fp32["reference_adherence"] and fp32["adherence"]["images"] == 4
    assert 10 < bf16["vs_reference"]["psnr_mean_db"] < 100 and bf16["vs_reference"]["ssim_mean"] < 1
    assert bf16["reference_adherence"] == fp32["reference_adherence"]  # one reference, drawn once per process
    summary = (sweep / "summary.md").read_text()
    assert "psnr_db" in summary and "adherence_shape" in summary


def test_bench_quality_prompts_must_be_positive():
    with pytest.raises(ConfigError, match=r"mode.quality_prompts=0 must be an integer >= 1"):
        parse_bench(compose_config(["mode=bench", "mode.quality_prompts=0"]).mode)
