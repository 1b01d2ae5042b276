"""Regenerate tests/fixtures/saved_by_newer_libraries/: what the installed diffusers and transformers write when
they save each tiny pipeline (conf/model/tiny_*.yaml), without the weights.

Run it in an environment with the newest releases (the torch extra alone, `make test-latest`'s .venv-latest):

    .venv-latest/bin/python scripts/write_saved_layout_fixtures.py [OUT_DIR]

For each model, OUT_DIR/<model>/ gets every JSON file as written (model_index.json, */config.json,
scheduler/scheduler_config.json, tokenizer*/tokenizer_config.json ...), and files.json: each file of the saved
directory, with the tensor names, dtypes and shapes of each safetensors file in place of its data. Tokenizer
files other than JSON configs (tokenizer.json, spiece.model ...), which are the same for every model, are kept
once under OUT_DIR/tokenizers/<sha256 prefix>/ and files.json names them. flow_match_schedules.json holds the
sigmas and timesteps diffusers' FlowMatchEulerDiscreteScheduler computes with its newer options.
tests/e2e/test_saved_layouts.py rebuilds the directories from these files (weights from the older libraries'
own save, under the names listed here) and loads them on both engines.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_OUT = REPO / "tests" / "fixtures" / "saved_by_newer_libraries"

# FlowMatchEulerDiscreteScheduler options of newer diffusers that the Paddle port follows: (name, init
# arguments, set_timesteps arguments).
FLOW_MATCH_CASES = [
    ("shift_terminal", {"shift": 3.0, "shift_terminal": 0.1}, {"num_inference_steps": 5}),
    ("invert_sigmas", {"shift": 3.0, "invert_sigmas": True}, {"num_inference_steps": 5}),
    ("linear_time_shift", {"use_dynamic_shifting": True, "time_shift_type": "linear"},
     {"sigmas": [1.0, 0.8, 0.6, 0.4, 0.2], "mu": 1.2}),
    ("exponential_time_shift", {"use_dynamic_shifting": True}, {"sigmas": [1.0, 0.8, 0.6, 0.4, 0.2], "mu": 1.2}),
]  # fmt: skip


def describe_safetensors(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        tensors = {}
        for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            view = f.get_slice(name)
            tensors[name] = [view.get_dtype(), list(view.get_shape())]
        return {"metadata": f.metadata() or {}, "tensors": dict(sorted(tensors.items()))}


def write_model(model: str, out: Path, shared: Path) -> None:
    from tests.support.weights import save_torch_layout

    with tempfile.TemporaryDirectory() as tmp:
        saved = save_torch_layout(model, Path(tmp) / model)
        files: dict[str, dict] = {}
        for path in sorted(p for p in saved.rglob("*") if p.is_file()):
            rel = path.relative_to(saved).as_posix()
            if path.suffix == ".safetensors":
                files[rel] = {"safetensors": describe_safetensors(path)}
            elif path.suffix == ".json" and path.name != "tokenizer.json":
                target = out / model / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                files[rel] = {"copy": rel}
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
                target = shared / digest / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                files[rel] = {"shared": f"{shared.name}/{digest}/{path.name}"}
        lines = ",\n".join(f" {json.dumps(rel)}: {json.dumps(entry)}" for rel, entry in files.items())
        (out / model / "files.json").write_text("{\n" + lines + "\n}\n")


def write_flow_match(out: Path) -> None:
    import diffusers

    cases = {}
    for name, init, call in FLOW_MATCH_CASES:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**init)
        scheduler.set_timesteps(**call)
        cases[name] = {
            "init": init,
            "set_timesteps": call,
            "sigmas": scheduler.sigmas.tolist(),
            "timesteps": scheduler.timesteps.tolist(),
        }
    (out / "flow_match_schedules.json").write_text(json.dumps(cases, indent=1) + "\n")


def main() -> None:
    import diffusers
    import torch
    import transformers

    from tests.support.cases import names

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    if out.exists():
        shutil.rmtree(out)
    shared = out / "tokenizers"
    shared.mkdir(parents=True)
    for model in names():
        write_model(model, out, shared)
    write_flow_match(out)
    versions = {
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (out / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    print(f"wrote {out} ({versions})")


if __name__ == "__main__":
    main()
