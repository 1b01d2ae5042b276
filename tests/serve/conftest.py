"""The serve tests' pipeline: tiny SD 1.5 on the PyTorch engine, loaded once for the session (every in-process
server of these tests serves it, one at a time), run with one intra-op thread."""

from __future__ import annotations

import pytest

from tests.support.servers import TINY_LOAD


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """One thread for the whole package: on a small shared machine, OpenMP's two spinning threads made a tiny
    request 10x slower; and every image these tests compare for equality (== 0) must come from the same
    reductions, which a different thread count changes (measured: 1 level). CLI subprocesses get
    OMP_NUM_THREADS=1 for the same reason (see `one_thread_env`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread_env(monkeypatch):
    """CLI subprocesses (which copy os.environ) run with one thread, as the in-process pipeline does."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_pipeline():
    import runner

    return runner.load(TINY_LOAD)
