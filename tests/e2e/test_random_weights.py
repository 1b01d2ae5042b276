"""weights=random at full size: parameters are created in the run's dtype (no fp32 copy first)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from components.host_memory import PeakRssSampler
from tests.support.cases import slow_except
from tests.support.configs import model_spec


def build_engine(engine_name: str):
    if engine_name == "paddle":
        from components.paddle.engine import PaddleEngine

        return PaddleEngine(device="cpu", dtype="bfloat16")
    from components.torch.engine import TorchEngine

    return TorchEngine(device="cpu", dtype="bfloat16")


@pytest.mark.parametrize("engine_name", slow_except(["paddle", "torch"], "torch"))
def test_full_width_flux_is_built_directly_in_bf16(engine_name):
    """Full-width Flux blocks (3072 wide, 24 heads; two blocks to keep the test small) built at random:
    peak memory grows by the bf16 size, not by an fp32 copy's. Checked on the CPU; the same context puts
    PyTorch parameters on the GPU there."""
    spec = model_spec("flux").components["transformer"]
    spec = replace(spec, config={**spec.config, "num_layers": 1, "num_single_layers": 1})
    engine = build_engine(engine_name)
    sampler = PeakRssSampler(interval_s=0.002)
    sampler.reset()
    start_mb = sampler.peak_mb()
    model = engine.load_component(spec, None, seed=0)
    growth_mb = sampler.peak_mb() - start_mb
    sampler.stop()
    dtypes = {str(p.dtype).replace("paddle.", "").replace("torch.", "") for p in model.parameters()}
    assert dtypes == {"bfloat16"}
    bf16_mb = sum(int(p.numel()) for p in model.parameters()) * 2 / 2**20
    assert growth_mb < 1.3 * bf16_mb, f"building took {growth_mb:.0f} MB for {bf16_mb:.0f} MB of bf16 weights"
