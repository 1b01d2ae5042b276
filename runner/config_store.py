"""The schemas' defaults where Hydra's composition finds them, so each default is written once.

Each schema's defaults go into Hydra's ConfigStore under the group `schema` (schema/run, schema/model,
schema/backend/<backend>, schema/mode/<mode>, schema/passes/<pass>, ...). conf/config.yaml lists them before
the YAML options they underlie (and each conf/passes file lists its own), so the composed config shows every
default and plain overrides of keys no YAML file sets keep working (`backend.workspace_mb=8192`, no `+`).

The nodes are plain data on purpose, not typed structured configs: Hydra would then check types while
composing and answer bad input with its own traceback and exit code 1, whereas plan_run checks them (runner/
typed.py) and answers with one `error:` line and exit code 2, before any weights load.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

import runner.registry as registry
from runner.schema import MODES, MemorySettings, ModelConfig, RaySettings, RunParams, SchedulerSpec, ServeSettings
from runner.typed import schema_defaults

GROUP = "schema"


def register_schema_defaults() -> None:
    """Store every schema's defaults (idempotent; call before composing a config)."""
    store = ConfigStore.instance()
    schemas = (
        ("run", RunParams),
        ("model", ModelConfig),
        ("scheduler", SchedulerSpec),
        ("serve", ServeSettings),
        ("ray", RaySettings),
        ("memory", MemorySettings),
    )
    for name, schema in schemas:
        store.store(group=GROUP, name=name, node=schema_defaults(schema))
    for name, schema in MODES.items():
        store.store(group=f"{GROUP}/mode", name=name, node=schema_defaults(schema))
    store_ray_launcher(store)
    # Backends and passes declare their options on the registered class (importing it imports no engine).
    for kind, group in (("backend", "backend"), ("pass", "passes")):
        for name in registry.names(kind):
            node = schema_defaults(registry.resolve(kind, name).options_schema)
            store.store(group=f"{GROUP}/{group}", name=name, node=node)


def store_ray_launcher(store: ConfigStore) -> None:
    """`hydra/launcher=ray` (the hydra-ray-launcher plugin of the ray extra) with the runner's defaults: each job
    asks for one GPU when the Ray cluster has GPUs (runner.callbacks.gpus_per_job, which connects with `init`)
    and none otherwise, and a local Ray starts without its dashboard. Stored over the plugin's own entry, which
    is imported first so that Hydra's plugin scan, later, does not store it again. Without the plugin, nothing
    is stored (Hydra then names the missing launcher)."""
    try:
        import hydra_plugins.hydra_ray_launcher._config  # noqa: F401 - registers the plugin's entry now
    except ImportError:
        return
    store.store(group="hydra/launcher", name="ray", node=ray_launcher_node(), provider="diffusion-runner")


def ray_launcher_node() -> dict:
    return {
        "_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
        "ray": {
            # address: null starts a local Ray; ray://HOST:10001 or auto joins a cluster.
            # object_store_memory null: Ray's default. (The plugin would otherwise set 75 MB, which a cluster refuses
            # from a client that joins it.)
            "init": {"address": None, "include_dashboard": False, "object_store_memory": None},
            "remote": {"num_cpus": 1, "num_gpus": "${runner_gpus_per_job:${..init}}"},
        },
    }
