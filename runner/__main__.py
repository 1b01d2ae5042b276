"""Command line: `python -m runner model=sdxl backend=paddle precision=fp32 prompt="..." [-m for sweeps]`.

Errors the user can fix print one line (`error: ...`) and exit with the error's code (2 for bad
config or missing capabilities). In a multirun sweep an invalid job is reported and skipped, the
others run, and the sweep exits non-zero at the end.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner.api import run_job
from runner.callbacks import FAILED_EXIT_CODES, record_failure, register_resolvers
from runner.conf_index import CONF_DIR
from runner.config_store import register_schema_defaults
from runner.errors import RunnerError
from runner.schema import parse_mode

_STARTED = time.time()
log = logging.getLogger(__name__)


def _only_hydra_bookkeeping(folder: Path, job_name: str) -> bool:
    """True when `folder` holds nothing but what Hydra wrote for this job (.hydra/ and the job log)."""
    allowed = {".hydra", f"{job_name}.log"}
    entries = list(folder.iterdir())
    if any(entry.name not in allowed for entry in entries):
        return False
    files = [p for entry in entries for p in ([entry] if entry.is_file() else entry.rglob("*"))]
    return all(p.stat().st_mtime >= _STARTED - 1 for p in files if p.is_file())


# An absolute config_path: the checkout's conf/ or, installed, the package's runner/conf/ (conf_index.py).
@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def _hydra_entry(cfg: DictConfig) -> dict | None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        mode = parse_mode(cfg.mode).name
        if mode == "bench":
            from runner.bench import run_bench

            return run_bench(cfg, output_dir)
        if mode == "batch":
            from runner.batch import run_batch

            return run_batch(cfg)
        if mode == "serve":
            from runner.serve import run_serve

            return run_serve(cfg, output_dir)
        return run_job(cfg, output_dir)
    except RunnerError as err:
        print(f"error: {err.one_line()}", file=sys.stderr, flush=True)
        if output_dir.is_dir() and _only_hydra_bookkeeping(output_dir, hydra_cfg.job.name):
            shutil.rmtree(output_dir, ignore_errors=True)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # A file, not a variable of this process: on hydra/launcher=ray the job runs in another process,
            # perhaps on another node; the sweep summary (this process) reads it back.
            record_failure(Path(hydra_cfg.sweep.dir), hydra_cfg.job.num, list(hydra_cfg.overrides.task), err)
            return None
        sys.exit(err.exit_code)
    except Exception as err:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        # In a sweep any failing job is reported and the others go on (Hydra's sweeper would otherwise stop at
        # the first exception and no summary would be written): its traceback, then its failure record.
        log.exception("job %s failed", hydra_cfg.job.num)
        failure = RunnerError(f"{type(err).__name__}: {err}")
        record_failure(Path(hydra_cfg.sweep.dir), hydra_cfg.job.num, list(hydra_cfg.overrides.task), failure)
        return None


def main() -> None:
    if sys.argv[1:] == ["passes.list"]:
        from runner.pass_manager import pass_table

        print(pass_table())
        return
    register_schema_defaults()
    register_resolvers()
    _hydra_entry()
    if FAILED_EXIT_CODES:
        print(f"error: {len(FAILED_EXIT_CODES)} job(s) of the sweep failed (see above)", file=sys.stderr)
        sys.exit(max(FAILED_EXIT_CODES))


if __name__ == "__main__":
    main()
