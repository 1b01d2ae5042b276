"""The denoise iteration captured once as a CUDA graph and replayed for every step (the cuda_graphs pass).

One iteration is: the latents expanded for guidance, scaled, the denoiser called, the guidance combine, the
sampler step. Eagerly, each of them launches its kernels from Python, and a small model (SD 1.5 at 512x512
on an H100) spends more time launching than computing. Captured, the whole iteration is one graph launch.

What makes it capturable: the graph-safe sampler (components/torch/graph_safe_schedulers.py) reads its
per-step numbers from device tables through a step index that lives on the device, and the iteration ends by
incrementing that index on the device; the latents, the conditioning and the sampler's state are buffers
with fixed addresses, which each generation refills in place before replaying. No host synchronization and
no host arithmetic happen between replays.

One capture per key (latent shape and dtype, number of steps, sampler class, guidance values, conditioning
shapes): the first generation with a key runs one iteration eagerly on a side stream (warm-up: cuBLAS and
cuDNN choose their kernels, lazily built buffers and the ancestral noise appear), restores the buffers,
captures, and replays; later generations with the same key only refill and replay. A different guidance
scale is a different key (it is a constant in the captured kernels). Each capture holds its own memory pool
(the iteration's activations), so at most `max_graphs` are kept, least recently used first out.

A graph replays the kernels and addresses it recorded: when the denoiser's modules or parameter storage
change (another pass removed or applied, weights moved), every capture is dropped and the next generation
captures again. Weights changed in place (a LoRA merged with set_loras) keep their addresses and need nothing.

With capture=False the same buffers and iteration run eagerly: that is how the CPU tests check the iteration
against the stock loop (a CPU has no graphs to capture).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from components.torch.graph_safe_schedulers import GraphSafeSampler, graph_safe_sampler


@dataclass(frozen=True)
class IterationParts:
    """What the denoise stage hands over: its guidance method and values, predictor, components, engine."""

    guidance: Any
    params: Any
    predictor: Any
    components: Mapping[str, Any]
    engine: Any


def _signature(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device)
    return value if value is None else type(value).__name__


class _Iteration:
    """One key's buffers, sampler, step index and (when captured) graph."""

    def __init__(self, parts: IterationParts, sampler: GraphSafeSampler, latents: torch.Tensor, cond: dict) -> None:
        self.parts = parts
        self.sampler = sampler
        self.latents = latents.clone()
        self.cond = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
        self.index = torch.zeros(1, dtype=torch.long, device=latents.device)
        self.graph: Any = None

    def refill(self, latents: torch.Tensor, cond: Mapping[str, Any], scheduler: Any, generator: Any) -> None:
        """This generation's inputs into the buffers the iteration (or its graph) reads."""
        self.latents.copy_(latents)
        for key, value in cond.items():
            if isinstance(value, torch.Tensor):
                self.cond[key].copy_(value)
        self.sampler.load(scheduler, generator)
        self.index.zero_()

    def restart(self, latents: torch.Tensor) -> None:
        """Undo the warm-up iteration (its drawn noise stays: it is this generation's)."""
        self.latents.copy_(latents)
        for buffer in self.sampler.state.values():
            buffer.zero_()
        self.index.zero_()

    def __call__(self) -> None:
        parts, sampler, index = self.parts, self.sampler, self.index
        model_input = parts.guidance.expand(self.latents, parts.engine, parts.params)
        model_input = sampler.scale_input(model_input, index)
        prediction = parts.predictor(parts.components, parts.engine, model_input, sampler.timestep(index), self.cond)
        prediction = parts.guidance.combine(prediction, parts.params)
        self.latents.copy_(sampler.step(prediction, self.latents, index))
        index.add_(1)

    def replay(self) -> None:
        if self.graph is None:
            self()
        else:
            self.graph.replay()


def structure_of(module: Any) -> tuple:
    """What a captured graph depends on besides its inputs: the module objects and their tensors' storage."""
    return (
        tuple(id(m) for m in module.modules()),
        tuple(t.data_ptr() for t in module.parameters()),
        tuple(t.data_ptr() for t in module.buffers()),
    )


class GraphedDenoiseLoop:
    """Runs a generation's denoise iterations, capturing one graph per key (see the module docstring)."""

    def __init__(self, capture: bool = True, max_graphs: int = 4) -> None:
        self.capture = capture
        self.max_graphs = max_graphs
        self._iterations: OrderedDict[tuple, _Iteration] = OrderedDict()
        self._structure: tuple | None = None
        self.captures = 0
        self.replays = 0
        self.capture_s = 0.0

    def run(
        self,
        *,
        guidance: Any,
        params: Any,
        predictor: Any,
        components: Mapping[str, Any],
        engine: Any,
        scheduler: Any,
        latents: torch.Tensor,
        cond: Mapping[str, Any],
        generator: Any,
        on_step: Callable[[], None],
    ) -> torch.Tensor:
        """The latents after all of `scheduler.timesteps` (the denoise stage's parts of one iteration: its
        guidance method and values, predictor, components, engine); `on_step` after each (timing, progress)."""
        parts = IterationParts(guidance, params, predictor, components, engine)
        nested = [k for k, v in cond.items() if isinstance(v, (Mapping, list, tuple))]
        if nested:  # only top-level tensors are refilled; a nested one would stay frozen in the graph
            raise ValueError(f"conditioning entries {nested} are nested; the captured iteration takes flat tensors")
        structure = structure_of(components[predictor.components[0]])
        if structure != self._structure:
            self.clear()
            self._structure = structure
        steps = len(scheduler.timesteps)
        key = (
            _signature(latents),
            steps,
            type(scheduler).__name__,
            scheduler.config.get("prediction_type"),
            parts.params,
            tuple(sorted((k, _signature(v)) for k, v in cond.items())),
        )
        iteration = self._iterations.get(key)
        if iteration is None:
            iteration = _Iteration(parts, graph_safe_sampler(scheduler, latents.device), latents, dict(cond))
            iteration.refill(latents, cond, scheduler, generator)
            if self.capture:
                self._capture(iteration, latents)
            self._iterations[key] = iteration
            while len(self._iterations) > self.max_graphs:
                self._iterations.popitem(last=False)  # its graph and memory pool go with it
        else:
            self._iterations.move_to_end(key)
            iteration.parts = parts  # same key, same values; the components are the same objects
            iteration.refill(latents, cond, scheduler, generator)
        for _ in range(steps):
            iteration.replay()
            self.replays += 1
            on_step()
        return iteration.latents.clone()  # the buffer is refilled by the next generation

    def _capture(self, iteration: _Iteration, latents: torch.Tensor) -> None:
        start = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            iteration()  # warm-up, eager: kernels chosen, lazy buffers and the ancestral noise created
        torch.cuda.current_stream().wait_stream(side)
        iteration.restart(latents)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            iteration()
        iteration.graph = graph
        self.captures += 1
        self.capture_s += time.perf_counter() - start

    def clear(self) -> None:
        """Drop every capture (their graphs and memory pools)."""
        self._iterations.clear()
        self._structure = None

    def stats(self) -> dict[str, Any]:
        return {"captures": self.captures, "replays": self.replays, "capture_s": round(self.capture_s, 3)}
