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
from runner.schema import MODES, ModelConfig, RaySettings, RunParams, SchedulerSpec, ServeSettings
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
    )
    for name, schema in schemas:
        store.store(group=GROUP, name=name, node=schema_defaults(schema))
    for name, schema in MODES.items():
        store.store(group=f"{GROUP}/mode", name=name, node=schema_defaults(schema))
    # Backends and passes declare their options on the registered class (importing it imports no engine).
    for kind, group in (("backend", "backend"), ("pass", "passes")):
        for name in registry.names(kind):
            node = schema_defaults(registry.resolve(kind, name).options_schema)
            store.store(group=f"{GROUP}/{group}", name=name, node=node)
