"""Importing Paddle and ppdiffusers quietly, and asking the installed build what it can do.

Capability answers come from the build itself (`paddle.is_compiled_with_*`), never from the device
name in a config. Custom-device plugins are probed in a child process: on a build without the
plugin, `create_predictor` with a custom device aborts the whole process (SIGABRT).
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import warnings
from types import ModuleType

import numpy as np

from runner.errors import CapabilityError

_INSTALL_HINT = "install the paddle extra: pip install -e '.[paddle]'"


def _quiet_environment() -> None:
    # Weights come from local folders only; hub lookups would only stall on machines without network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("GLOG_minloglevel", "2")
    warnings.filterwarnings("ignore", message="No ccache found")
    # datasets (imported by paddlenlp) logs its torch detection at INFO on import.
    logging.getLogger("datasets").setLevel(logging.WARNING)


@functools.cache
def import_paddle() -> ModuleType:
    _quiet_environment()
    try:
        import paddle
    except ImportError as exc:
        raise CapabilityError(f"the paddle engine needs paddlepaddle ({exc}); {_INSTALL_HINT}") from exc
    return paddle


@functools.cache
def import_ppdiffusers() -> ModuleType:
    import_paddle()
    torch_uint16 = _torch_uint16()
    numpy_bool = np.bool  # numpy >= 2: the boolean scalar type
    had_bfloat16 = hasattr(np, "bfloat16")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import ppdiffusers
            from paddlenlp.utils.log import logger as paddlenlp_logger
    except ImportError as exc:
        raise CapabilityError(f"the paddle engine needs ppdiffusers ({exc}); {_INSTALL_HINT}") from exc
    # ppdiffusers' load_utils rebinds library names on import: torch.uint16 = torch.bfloat16 (for
    # torch < 2.3), np.bool = bool, np.bfloat16 = np.uint16. Nothing in ppdiffusers reads them later,
    # and they break other code in the same process: torch.compile (torch.iinfo fails on the alias,
    # e.g. in a sweep over backend=paddle,inductor) and NumPy's own testing helpers.
    if torch_uint16 is not None:
        sys.modules["torch"].uint16 = torch_uint16
    np.bool = numpy_bool
    if not had_bfloat16 and hasattr(np, "bfloat16"):
        del np.bfloat16
    paddlenlp_logger.set_level("WARNING")
    ppdiffusers.utils.logging.set_verbosity_error()
    logging.getLogger("ppdiffusers").setLevel(logging.ERROR)
    from components.paddle.compat import install_cpu_attention_fallback

    install_cpu_attention_fallback()
    return ppdiffusers


def _torch_uint16() -> object | None:
    """torch.uint16 before ppdiffusers overwrites it (None when torch is not installed)."""
    try:
        import torch
    except ImportError:
        return None
    return getattr(torch, "uint16", None)


def build_features() -> dict[str, bool]:
    """What the installed Paddle build was compiled with."""
    paddle = import_paddle()
    from paddle import inference

    trt = inference.get_trt_compile_version() if hasattr(inference, "get_trt_compile_version") else (0, 0, 0)
    return {
        "cuda": paddle.is_compiled_with_cuda(),
        "rocm": paddle.is_compiled_with_rocm(),
        "xpu": paddle.is_compiled_with_xpu(),
        "cinn": paddle.is_compiled_with_cinn(),
        "tensorrt": tuple(trt) != (0, 0, 0),
    }


def device_count(kind: str) -> int:
    """Number of visible devices of a built-in kind ("gpu" covers CUDA and ROCm, "xpu")."""
    paddle = import_paddle()
    if kind == "gpu":
        return paddle.device.cuda.device_count()
    if kind == "xpu":
        return paddle.device.xpu.device_count() if hasattr(paddle.device, "xpu") else 0
    return 0


_PROBE = """
import sys, paddle
kind = sys.argv[1]
types = paddle.device.get_all_custom_device_type() or []
if kind not in types:
    print("missing:" + ",".join(types)); sys.exit(0)
paddle.set_device(kind + ":0")
(paddle.ones([2]) + 1).numpy()
print("ok")
"""


@functools.cache
def probe_custom_device(kind: str, timeout_s: float = 120.0) -> tuple[bool, str]:
    """Try a custom device (npu, mlu, ...) in a child process; return (usable, detail). Cached per process."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, kind], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"probing custom device {kind!r} timed out after {timeout_s:.0f} s"
    out = result.stdout.strip().splitlines()
    last = out[-1] if out else ""
    if result.returncode != 0:
        return False, f"probing custom device {kind!r} crashed the probe process (exit code {result.returncode})"
    if last.startswith("missing:"):
        found = last.removeprefix("missing:") or "none"
        return False, f"no Paddle custom-device plugin for {kind!r} is installed (plugins found: {found})"
    return last == "ok", last or "the probe printed nothing"


def cpu_threads() -> int:
    """Threads for Paddle's CPU math library: OMP_NUM_THREADS when set, else the cores this process may use.

    Eager Paddle otherwise runs its CPU kernels on one thread (measured: a full SD 1.5 step 67 s against
    PyTorch's 10.7 s on 2 cores).
    """
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
