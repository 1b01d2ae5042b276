"""Read safetensors checkpoints into Paddle tensors, bfloat16 included, one tensor at a time.

safetensors' own reader does the work: `safe_open(framework="paddle")` maps the file through
`paddle.MmapStorage` (Paddle >= 3.1.1) and hands back each tensor in the file's dtype, bfloat16
included (Flux ships bf16 weights; the library's NumPy reader has no bfloat16). What it cannot do,
checked with safetensors 0.8.0 and Paddle 3.3.1, stays here:

- zero-element tensors: `get_tensor` fails viewing the empty byte range as the element type
  ("input.strides[0] must be 1 to view uint8 as float32"); they are made with `paddle.zeros`.
- Paddle's device names: its `device=` takes torch-style names ("cuda:0") and rejects Paddle's
  ("gpu:0"), so tensors are read on the CPU and moved to Paddle's current device, where the earlier
  reader's `paddle.to_tensor` put them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import paddle
from safetensors import safe_open

# The dtypes this reader accepts: the same set as the hand-written reader it replaces, so a checkpoint
# with any other dtype fails as before (the library would also read the float8 types; no model here has them).
PADDLE_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def read_safetensors(path: Path) -> dict[str, Any]:
    """All tensors of one safetensors file, as Paddle tensors in the file's dtype on Paddle's current device."""
    device = paddle.get_device()
    tensors: dict[str, Any] = {}
    with safe_open(path, framework="paddle") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open has keys() but is not iterable
            view = f.get_slice(name)  # dtype and shape from the header, no data read
            dtype, shape = view.get_dtype(), view.get_shape()
            if dtype not in PADDLE_DTYPES:
                raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
            # Zero-element tensors are made here: the library's get_tensor fails on them (module docstring).
            empty = math.prod(shape) == 0
            tensor = paddle.zeros(shape, dtype=PADDLE_DTYPES[dtype]) if empty else f.get_tensor(name)
            tensors[name] = tensor if device == "cpu" else tensor.to(device)
    return tensors


def load_safetensors_folder(folder: Path, stem: str) -> dict[str, Any]:
    """`stem`.safetensors, or the shards listed in `stem`.safetensors.index.json."""
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = [f"{stem}.safetensors"]
    state: dict[str, Any] = {}
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (listed by {index.name if index.is_file() else 'convention'})")
        state.update(read_safetensors(path))
    return state
