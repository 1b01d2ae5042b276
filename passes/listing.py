"""`python -m runner passes.list`: every registered pass, its engines, what it requires and changes."""

from __future__ import annotations

from runner import registry
from runner.tables import markdown


def pass_table() -> str:
    rows = []
    for name in registry.names("pass"):
        cls = registry.resolve("pass", name)
        order = "; ".join(
            part for part in (
                f"after {', '.join(cls.after)}" if cls.after else "",
                f"before {', '.join(cls.before)}" if cls.before else "",
            ) if part
        )  # fmt: skip
        rows.append([name, ", ".join(cls.engines), ", ".join(cls.defaults) or "none", cls.requires, cls.changes,
                     order or "-"])  # fmt: skip
    headers = ["pass", "engines", "in `default` for", "requires", "changes", "order"]
    return (
        markdown(headers, rows)
        + "\n\nSelect with passes=none|default|all or passes=[name,name,...]; verify=true checks them."
    )
