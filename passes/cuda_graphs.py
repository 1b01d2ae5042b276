"""cuda_graphs: the whole denoise iteration captured as one CUDA graph and replayed every step (PyTorch).

Requires: a denoiser (a UNet, an SD3 or Flux transformer) on a CUDA device, and a sampler with a graph-safe
step (components/torch/graph_safe_schedulers.py: euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras,
flow_euler, pndm; each checked against the stock step, 0 difference on the CPU).
Changes: the denoise stage hands its iterations to components/torch/cuda_graphs.GraphedDenoiseLoop (an
attribute on the denoiser, which the stage looks for): the denoiser call, the guidance combine and the sampler
step with its coefficients precomputed as device tables are captured once per latent shape, step count and
guidance setting, then replayed with no host synchronization and no host arithmetic inside the loop. The
denoiser's weights and code are untouched; removing the pass removes the attribute and its graphs.

Composes with backend=inductor (the compiled denoiser is captured like the eager one). Not with step_cache
(it decides per call, in Python, whether to run the network; a graph replays one fixed sequence), and not
where components move between host and device while the loop runs (memory=offload, memory=sequential).
The result is the eager loop's bit for bit where the kernels are the same (tests/e2e/test_cuda_graphs.py
checks the iteration on the CPU uncaptured; tests/gpu runs it captured on a GPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from components.stages.denoise import DENOISE_LOOP_ATTRIBUTE
from runner.errors import ConfigError
from runner.pass_base import Pass, PassContext, PassOptions

STEP_CACHE_CONFLICT = (
    "step_cache decides in Python at every call whether to run the network, and a captured graph replays one "
    "fixed sequence of kernels"
)
TIMESTEP_EMBEDDINGS = ("time_embedding", "time_text_embed")  # UNet; SD3 and Flux transformers


INDUCTOR_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that capture graphs themselves


@dataclass(frozen=True)
class CudaGraphsOptions(PassOptions):
    # Captures kept (each holds a memory pool of the iteration's activations); the least recently used goes
    # first. A server taking many guidance values or sizes recaptures instead of filling the GPU.
    max_graphs: int = 4

    def __post_init__(self) -> None:
        if self.max_graphs < 1:
            raise ConfigError(f"passes.cuda_graphs.max_graphs={self.max_graphs} must be at least 1")


class CudaGraphs(Pass):
    name = "cuda_graphs"
    options_schema = CudaGraphsOptions
    engines = ("torch",)
    requires = "a denoiser on a CUDA device and a sampler with a graph-safe step"
    changes = "the denoise iteration (denoiser, guidance, sampler step) captured once per shape and replayed"
    defaults = ()  # the GPU figures decide (docs/benchmarks.md)
    verifiable = False  # the denoiser is not changed; tests/gpu compares captured and eager images
    conflicts = MappingProxyType({"step_cache": STEP_CACHE_CONFLICT})

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.loops: list[Any] = []

    @classmethod
    def check_scheduler(cls, class_name: str, config: Mapping[str, Any]) -> str | None:
        from components.torch.graph_safe_schedulers import graph_safe_names, why_not_graph_safe

        reason = why_not_graph_safe(class_name, config)
        if reason is None:
            return None
        return f"{reason}; choose a scheduler with one: {', '.join(graph_safe_names())} (e.g. scheduler=euler)"

    @classmethod
    def check_backend(cls, name: str, options: Any) -> str | None:
        mode = getattr(options, "mode", None)
        if mode in INDUCTOR_GRAPH_MODES:
            return (
                f"backend.mode={mode} captures CUDA graphs of its own inside the iteration cuda_graphs captures; "
                "use backend.mode=null or max-autotune-no-cudagraphs"
            )
        return None

    @classmethod
    def check_memory(cls, mode: str) -> str | None:
        if mode in ("offload", "sequential"):
            return (
                "a captured graph reads the denoiser's weights at fixed device addresses, and this mode moves them "
                "between host and device while the loop runs; use memory=none or memory=lean"
            )
        return None

    @classmethod
    def check_device(cls, device: str) -> str | None:
        if not device.startswith(("cuda", "gpu")):  # PyTorch's and Paddle's names (Paddle: skipped by engine)
            return f"pass cuda_graphs needs a CUDA device; this run's device is {device}"
        return None

    def check(self, component: Any, ctx: PassContext) -> str | None:
        if not any(hasattr(component, name) for name in TIMESTEP_EMBEDDINGS):
            return "not a denoiser (no timestep embedding)"
        device = next(component.parameters()).device
        if device.type != "cuda":
            return f"needs a CUDA device (the component is on {device.type})"
        return None

    def apply(self, component: Any, ctx: PassContext) -> dict[str, Any]:
        from components.torch.cuda_graphs import GraphedDenoiseLoop

        loop = GraphedDenoiseLoop(capture=True, max_graphs=self.options.max_graphs)
        self.loops.append(loop)
        ctx.changes.set_attribute(component, DENOISE_LOOP_ATTRIBUTE, loop)
        ctx.changes.on_undo(loop.clear)  # the graphs and their memory pools go with the pass
        return {"captured": "on first use, once per latent shape, step count and guidance setting"}

    def stats(self) -> dict[str, Any]:
        totals: dict[str, Any] = {"captures": 0, "replays": 0, "capture_s": 0.0}
        for loop in self.loops:
            for key, value in loop.stats().items():
                totals[key] += value
        return totals if totals["captures"] else {}
