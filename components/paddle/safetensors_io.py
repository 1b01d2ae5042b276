"""Read safetensors checkpoints into Paddle tensors, bfloat16 included, one tensor at a time.

The safetensors library's NumPy reader has no bfloat16 (Flux ships bf16 weights); this reader maps
the file, reads each tensor's bytes at its offsets and builds the Paddle tensor directly (Paddle takes
uint16 arrays as raw bfloat16 bits).
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np
import paddle

NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: Path) -> dict[str, Any]:
    """All tensors of one safetensors file, as Paddle tensors in the file's dtype."""
    tensors = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        (header_size,) = struct.unpack("<Q", mapped[:8])
        header = json.loads(mapped[8 : 8 + header_size])
        base = 8 + header_size
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            dtype = info["dtype"]
            if dtype not in NUMPY_DTYPES:
                raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
            array = np.frombuffer(mapped[base + start : base + end], dtype=NUMPY_DTYPES[dtype]).reshape(info["shape"])
            tensors[name] = paddle.to_tensor(array, dtype="bfloat16" if dtype == "BF16" else None)
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
