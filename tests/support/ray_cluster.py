"""A local Ray started by the test process, for tests whose runner processes join it (ray.address=...)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator

import pytest


def bounded(action, timeout_s: float) -> None:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    thread.join(timeout_s)


@pytest.fixture
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local Ray (2 CPUs) started by this process; its GCS address. Shut down afterwards (bounded)."""
    import ray  # no importorskip: Ray is installed by `make setup`, so a missing Ray is a failure

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # A short folder of our own: Ray's session files and sockets (a unix socket path is at most 107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    context = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, namespace="runner-tests")
    try:
        yield context.address_info["gcs_address"]
    finally:
        bounded(ray.shutdown, 60)
        shutil.rmtree(temp_dir, ignore_errors=True)
