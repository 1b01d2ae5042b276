"""Load generator for the service: images/s, p50/p99 latency and the mean merged batch at several concurrency
levels, over loopback only.

    python -m runner.serve.loadgen --url http://127.0.0.1:8000 --concurrency 1,4,8,16 --requests 32
    python -m runner.serve.loadgen --spawn "model=tiny_sd15 backend=torch steps=2 serve.max_batch=8"

`--spawn` starts `python -m runner mode=serve ... serve.port=0` itself, waits for /healthz, measures and stops
it with SIGTERM. Every level sends a bounded number of requests (`--requests`) and stops early at
`--max-seconds`; the mean batch comes from the service's own `runner_batch_size` histogram (images per denoise
batch), read from /metrics before and after each level. One warm-up request runs first, untimed.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

READY_TIMEOUT_S = 600.0


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    ok: int
    errors: int
    images_per_s: float
    p50_s: float
    p99_s: float
    mean_batch: float | None
    seconds: float


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"error: --url {url!r}: the load generator only targets loopback (127.0.0.1, ::1, localhost)")


def batch_histogram(text: str) -> tuple[float, float]:
    """(sum, count) of runner_batch_size in a Prometheus exposition."""
    values = {}
    for name in ("sum", "count"):
        match = re.search(rf"^runner_batch_size_{name} ([0-9.e+]+)$", text, re.MULTILINE)
        values[name] = float(match.group(1)) if match else 0.0
    return values["sum"], values["count"]


async def run_level(client: httpx.AsyncClient, body: dict, concurrency: int, total: int, max_s: float) -> LevelResult:
    before = batch_histogram((await client.get("/metrics")).text)
    latencies: list[float] = []
    errors = 0
    sent = 0
    started = time.perf_counter()
    stop_at = started + max_s

    async def worker(index: int) -> None:
        nonlocal sent, errors
        while sent < total and time.perf_counter() < stop_at:
            sent += 1
            t0 = time.perf_counter()
            answer = await client.post("/v1/images/generations", json={**body, "seed": sent})
            if answer.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    after = batch_histogram((await client.get("/metrics")).text)
    batches = after[1] - before[1]
    images = len(latencies) * body.get("n", 1)
    return LevelResult(
        concurrency=concurrency,
        requests=sent,
        ok=len(latencies),
        errors=errors,
        images_per_s=round(images / elapsed, 3),
        p50_s=round(float(np.percentile(latencies, 50)), 3) if latencies else float("nan"),
        p99_s=round(float(np.percentile(latencies, 99)), 3) if latencies else float("nan"),
        mean_batch=round((after[0] - before[0]) / batches, 2) if batches else None,
        seconds=round(elapsed, 1),
    )


async def measure(url: str, body: dict, levels: Sequence[int], total: int, max_s: float) -> list[LevelResult]:
    limits = httpx.Limits(max_connections=max(levels) + 2)
    async with httpx.AsyncClient(base_url=url, timeout=max_s + 60, limits=limits) as client:
        warm = await client.post("/v1/images/generations", json={**body, "seed": 0})
        if warm.status_code != 200:
            raise SystemExit(f"error: the warm-up request failed: {warm.status_code} {warm.text[:300]}")
        return [await run_level(client, body, level, total, max_s) for level in levels]


def table(results: Sequence[LevelResult]) -> str:
    base = results[0]
    rows = [
        "| concurrency | requests (ok/err) | images/s | x conc. 1 | p50 s | p99 s | p99 / lone p50 | mean batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.concurrency} | {r.ok}/{r.errors} | {r.images_per_s:.2f} | {r.images_per_s / base.images_per_s:.2f} "
            f"| {r.p50_s:.3f} | {r.p99_s:.3f} | {r.p99_s / base.p50_s:.2f} | {r.mean_batch if r.mean_batch else '-'} |"
        )
    return "\n".join(rows)


def wait_ready(url: str, process: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"error: the server exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: {url} was not ready within {READY_TIMEOUT_S:.0f} s")


def spawn(overrides: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "runner", "mode=serve", *shlex.split(overrides), "serve.port=0", "quiet=true"]
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = re.search(r"serving on (http://\S+)", log_path.read_text(encoding="utf-8"))
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            raise SystemExit(f"error: the server exited with code {process.returncode}; see {log_path}")
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"error: the server did not announce its address within 120 s; see {log_path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running service on loopback, e.g. http://127.0.0.1:8000")
    target.add_argument("--spawn", help="overrides of a `mode=serve` server to start and stop")
    parser.add_argument("--concurrency", default="1,4,8,16", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=32, help="requests per level (bounded)")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop a level after this long")
    parser.add_argument("--body", default="{}", help='JSON merged into each request, e.g. \'{"size": "512x512"}\'')
    parser.add_argument("--prompt", default="a photo of a red fox in the snow")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.concurrency.split(",")]
    body = {"prompt": args.prompt, **json.loads(args.body)}
    process = None
    url = args.url
    try:
        if args.spawn is not None:
            process, url = spawn(args.spawn, Path(os.environ.get("LOADGEN_LOG", "loadgen-server.log")))
        check_loopback(url)
        wait_ready(url, process)
        results = asyncio.run(measure(url, body, levels, args.requests, args.max_seconds))
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
