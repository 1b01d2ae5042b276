"""Importing PyTorch and diffusers quietly, and what the installed build can do."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sysconfig
import warnings
from types import ModuleType

from runner.errors import CapabilityError

_INSTALL_HINT = "install the torch extra: pip install -e '.[torch]'"


@functools.cache
def import_torch() -> ModuleType:
    try:
        import torch
    except ImportError as exc:
        raise CapabilityError(f"the torch engine needs PyTorch ({exc}); {_INSTALL_HINT}") from exc
    return torch


@functools.cache
def import_diffusers() -> ModuleType:
    import_torch()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import diffusers
            import transformers
    except ImportError as exc:
        raise CapabilityError(f"the torch engine needs diffusers and transformers ({exc}); {_INSTALL_HINT}") from exc
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    # transformers 5 draws a "Loading weights" bar for every model it loads, past the verbosity setting.
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    return diffusers


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def cuda_available() -> bool:
    return import_torch().cuda.is_available()


def compiler_toolchain_problem() -> str | None:
    """Why torch.compile (inductor) cannot build kernels here, or None when it can.

    Inductor compiles generated C++ (CPU) with the system compiler and needs Python headers;
    on CUDA it needs triton.
    """
    torch = import_torch()
    if cuda_available():
        try:
            import triton  # noqa: F401
        except ImportError:
            return "inductor on CUDA needs triton, which is not installed"
        return None
    chosen = os.environ.get("CXX")
    if chosen and shutil.which(chosen) is None:
        return f"inductor on CPU compiles with $CXX={chosen}, which is not an executable"
    if not chosen and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "inductor on CPU needs a C++ compiler (c++, g++ or clang++), and none is on PATH"
    include = sysconfig.get_paths().get("include")
    if not include or not os.path.exists(os.path.join(include, "Python.h")):
        return f"inductor on CPU needs the Python headers (Python.h in {include}); install python3-dev"
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    return None
