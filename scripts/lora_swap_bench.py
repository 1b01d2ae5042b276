"""Time a LoRA swap on a live pipeline against loading the pipeline with the LoRA, side by side.

A LoRA of rank RANK on every attention projection of the UNet (and the text encoder's), random numbers, is
written to a temporary file in the kohya format. Printed: median seconds of `runner.load` with `loras=[...]`,
of `set_loras([lora])` on the loaded pipeline, and of `set_loras([])` (originals written back), plus the
host memory the kept originals take.

Usage: python scripts/lora_swap_bench.py [--model sd15] [--backend torch] [--rank 16] [--rounds 3]
(model.weights=random: the full architecture at random, no download).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import runner  # noqa: E402
from components.lora import ORIGINALS_ATTRIBUTE  # noqa: E402
from tests.support.loras import TARGETS, random_pairs, write_kohya  # noqa: E402


def attention_layers(pipe: runner.Pipeline, role: str) -> dict[str, tuple[int, ...]]:
    """The attention projections (Linear layers, by name and PyTorch-layout shape) of a component, on either
    engine, through the engine's own LoRA weight access."""
    weights = pipe.built.engine.lora_weights
    found = {}
    for name, layer in weights.layers(pipe.built.components[role]):
        shape = weights.shape(layer)
        if name.endswith(TARGETS) and shape is not None and len(shape) == 2:
            found[name] = shape
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = [f"model={args.model}", "model.weights=random", f"backend={args.backend}", "quiet=true"]
    pipe = runner.load(base)
    roles = [r for r in ("unet", "transformer", "text_encoder") if r in pipe.built.components]
    pairs = {role: random_pairs(attention_layers(pipe, role), args.rank, seed=i) for i, role in enumerate(roles)}
    with tempfile.TemporaryDirectory() as tmp:
        lora = write_kohya(Path(tmp) / "lora.safetensors", pairs, alpha=args.rank / 2)
        load, swap_in, swap_out = [], [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            runner.load([*base, f"loras=[{{path:'{lora}'}}]"])
            load.append(time.perf_counter() - start)
            start = time.perf_counter()
            pipe.set_loras([str(lora)])
            swap_in.append(time.perf_counter() - start)
            kept = sum(
                sum(t.numel() * t.element_size() if hasattr(t, "element_size") else t.size * 4 for t in
                    component.__dict__.get(ORIGINALS_ATTRIBUTE, {}).values())
                for component in pipe.built.components.values() if hasattr(component, "__dict__")
            )  # fmt: skip
            start = time.perf_counter()
            pipe.set_loras([])
            swap_out.append(time.perf_counter() - start)
    changed = sum(len(p) for p in pairs.values())
    print(f"model={args.model} backend={args.backend} LoRA rank {args.rank} on {changed} layers, {args.rounds} rounds")
    print("| step | median s |")
    print("|---|---|")
    print(f"| runner.load with loras=[...] | {statistics.median(load):.2f} |")
    print(f"| set_loras([lora]) on the loaded pipeline | {statistics.median(swap_in):.2f} |")
    print(f"| set_loras([]) (originals back) | {statistics.median(swap_out):.2f} |")
    print(
        f"load / swap: {statistics.median(load) / statistics.median(swap_in):.1f}x; originals kept on the host "
        f"while a LoRA is set: {kept / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
