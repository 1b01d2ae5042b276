"""mode=serve: the HTTP service (FastAPI), in this process or as Ray Serve replicas (serve.engine=ray).

Everything that can be checked is checked before the port opens (the run config, the backend's capabilities,
the serve settings), so a bad config is one `error:` line and exit code 2, as for the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.schema import parse_ray, parse_serve


def run_serve(cfg: Mapping[str, Any], output_dir: Path) -> None:
    from runner.api import Pipeline
    from runner.app import build_pipeline
    from runner.plan import plan_run

    settings = parse_serve(cfg["serve"])
    ray_settings = parse_ray(cfg["ray"])
    # Replicas run elsewhere (a CPU head node may deploy GPU replicas): there, only what this machine can check;
    # each replica checks its own capabilities when it loads.
    plan = plan_run(cfg, check_capabilities=settings.engine == "local")
    if settings.engine == "ray":
        from runner.serve.ray_deploy import serve_ray

        serve_ray(cfg, settings, ray_settings)
        return
    from runner.serve.local import serve_local
    from runner.serve.service import Service

    serve_local(Service(settings, lambda: Pipeline(cfg, build_pipeline(plan))), settings)
