"""Every registered pass can be undone: apply it, remove it, and the pipeline computes exactly what the
untouched pipeline computed (bit for bit: same kernels on the same shapes), on both engines.

Tiny Flux is the model every pass applies to (fused projections in the transformer and the VAE, a
rotary embedding, attention layers, two text encoders). `attention` runs with kernel=math so that it
changes something on both engines (kernel=auto only records the framework's choice).
"""

from __future__ import annotations

import numpy as np
import pytest

from runner import registry
from runner.app import load_pipeline, optimize
from runner.hooks import hooks_in
from runner.plan import plan_run
from tests.support.cases import slow_except
from tests.support.configs import compose_config

OPTIONS = {"attention": ["passes.attention.kernel=math"]}


def _tensors(state: dict, engine) -> dict[str, np.ndarray]:
    """Every tensor the stages produced (embeddings, latents) plus the images."""
    out = {key: engine.to_numpy(value) for key, value in state.items() if hasattr(value, "shape") and key != "images"}
    out["images"] = np.asarray(state["images"])
    return out


def _weights(module) -> dict[str, bytes]:
    return {
        k: np.array(v.detach().cpu() if hasattr(v, "detach") else v).tobytes() for k, v in module.state_dict().items()
    }


# Every pass on every engine it supports (passes this CPU cannot run, cuda_graphs, are checked in tests/gpu).
# The fast subset keeps the pass with the most kinds of change (fused weights, replaced submodules).
CASES = [(name, backend) for name in registry.names("pass") for backend in ("paddle", "torch")
         if backend in registry.resolve("pass", name).engines
         and registry.resolve("pass", name).check_device("cpu") is None]  # fmt: skip


FAST = (("qkv_fusion", "paddle"), ("qkv_fusion", "torch"))


@pytest.mark.parametrize(("pass_name", "backend"), slow_except(CASES, *FAST))
def test_removing_a_pass_restores_the_output_bit_for_bit(pass_name, backend):
    overrides = ["model=tiny_flux", f"backend={backend}", "steps=2", "quiet=true", f"passes={pass_name}"]
    built = load_pipeline(plan_run(compose_config([*overrides, *OPTIONS.get(pass_name, [])])))
    modules = {role: c for role, c in built.components.items() if hasattr(c, "state_dict")}
    weights = {role: _weights(m) for role, m in modules.items()}
    before = _tensors(built.generate().state, built.engine)

    optimize(built)
    assert built.pass_report.applications, f"{pass_name} applied to no component of tiny_flux"
    built.generate()  # run the optimized path once (caches fill, fused products are used)
    assert built.remove_passes() == [pass_name] and not built.pass_report.applications

    for role, module in modules.items():
        assert built.components[role] is module
        assert hooks_in(module) == {}, f"{pass_name} left hooks on {role}"
        assert _weights(module) == weights[role], f"{pass_name} left {role}'s weights changed"
        layouts = [p.is_contiguous() for p in module.parameters() if hasattr(p, "is_contiguous")]
        assert all(layouts), f"{pass_name} left {role}'s weights in another memory layout"
    after = _tensors(built.generate().state, built.engine)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert value.shape == after[key].shape and value.tobytes() == after[key].tobytes(), key
