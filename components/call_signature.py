"""A module call as its tensors plus a hashable structure, and back; for backends that run converted graphs.

A converted graph (a Paddle Inference program, an OpenVINO model, an ONNX file) takes a flat list of
tensors of fixed shapes. `flatten_call` splits a call such as `unet(x, t, encoder_hidden_states=e,
added_cond_kwargs={...}, return_dict=False)` into those tensors and a structure that records everything
else (and the tensors' shapes and dtypes), which keys the converted graph; `rebuild_call` puts tensors
back. `flatten_output` / `rebuild_output` do the same for what the module returns (a tensor, a tuple, a
model output object with named fields), so the converted call returns what the module did.
Engine-neutral: the caller says what a tensor is.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

IsTensor = Callable[[Any], bool]


def flatten_call(args: Sequence[Any], kwargs: Mapping[str, Any], is_tensor: IsTensor) -> tuple[list[Any], tuple]:
    """Split a call into its tensors (in order) and a hashable structure with everything else."""
    leaves: list[Any] = []

    def walk(value: Any) -> Any:
        if is_tensor(value):
            leaves.append(value)
            return ("tensor", tuple(value.shape), str(value.dtype))
        if isinstance(value, Mapping):
            return ("dict", tuple((k, walk(v)) for k, v in value.items()))
        if isinstance(value, list | tuple):
            return ("seq", tuple(walk(v) for v in value))
        return ("const", value)

    structure = (tuple(walk(a) for a in args), tuple((k, walk(v)) for k, v in kwargs.items()))
    return leaves, structure


def rebuild_call(structure: tuple, leaves: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Inverse of flatten_call: put `leaves` back where the structure has tensors."""
    it = iter(leaves)

    def build(node: tuple) -> Any:
        kind, payload = node[0], node[1]
        if kind == "tensor":
            return next(it)
        if kind == "dict":
            return {k: build(v) for k, v in payload}
        if kind == "seq":
            return tuple(build(v) for v in payload)
        return payload

    args_s, kwargs_s = structure
    return [build(a) for a in args_s], {k: build(v) for k, v in kwargs_s}


def flatten_output(value: Any, is_tensor: IsTensor) -> tuple[list[Any], tuple]:
    """A module's return value as its tensors and a structure; model output objects keep their class."""
    leaves: list[Any] = []

    def walk(node: Any) -> tuple:
        if is_tensor(node):
            leaves.append(node)
            return ("tensor",)
        if isinstance(node, Mapping):  # transformers' / diffusers' ModelOutput: an ordered dict with a class
            return ("mapping", type(node), tuple((k, walk(v)) for k, v in node.items()))
        if isinstance(node, list | tuple):
            return ("seq", type(node), tuple(walk(v) for v in node))
        if node is None:
            return ("none",)
        raise TypeError(f"a converted call returns tensors, tuples and model outputs; got {type(node).__name__}")

    return leaves, walk(value)


def rebuild_output(structure: tuple, leaves: Sequence[Any]) -> Any:
    """Inverse of flatten_output."""
    it = iter(leaves)

    def build(node: tuple) -> Any:
        kind = node[0]
        if kind == "tensor":
            return next(it)
        if kind == "none":
            return None
        cls, items = node[1], node[2]
        if kind == "mapping":
            return cls(**{k: build(v) for k, v in items})
        values = [build(v) for v in items]
        return values if cls is list else tuple(values)

    return build(structure)


def weights_digest(named_arrays: Iterable[tuple[str, Any]]) -> str:
    """A short digest of a module's weights (name, shape, dtype, then bytes, in name order): part of a
    conversion's cache key, so a cached graph is never used for other weights."""
    digest = hashlib.sha256()
    for name, array in sorted(named_arrays, key=lambda item: item[0]):
        array = np.asarray(array)
        digest.update(f"{name}:{array.shape}:{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return digest.hexdigest()[:16]


def module_config_text(module: Any) -> str:
    """The module's architecture config as text (diffusers / transformers / ppdiffusers keep one as `config`),
    for cache keys: two modules with the same weights can differ in head count or in how a layer is used."""
    config = getattr(module, "config", None)
    if config is None:
        return type(module).__qualname__
    to_json = getattr(config, "to_json_string", None)
    text = to_json() if callable(to_json) else repr(sorted(dict(config).items()))
    return f"{type(module).__qualname__}:{text}"


def default_cache_dir(backend: str) -> Path:
    """A converting backend's default cache: $XDG_CACHE_HOME (or ~/.cache)/diffusion-runner/BACKEND."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "diffusion-runner" / backend
