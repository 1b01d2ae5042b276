"""The project's import structure: no circles (type-only imports included), runner/ framework-neutral and
reaching passes/ and components/ only through the registry, and one module that wraps module calls."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support.runs import REPO

PACKAGES = ("runner", "components", "passes")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in the file (function bodies and TYPE_CHECKING blocks too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, "import cycle: " + " -> ".join([*path[path.index(name) :], name])
        state[name] = 1
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])


def test_runner_imports_neither_passes_components_nor_a_framework():
    for path in sorted((REPO / "runner").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        offending = re.findall(r"^\s*(?:from|import) (passes|components|paddle|torch|ppdiffusers|diffusers)\b", source,
                               flags=re.MULTILINE)  # fmt: skip
        assert not offending, f"{path.relative_to(REPO)} imports {sorted(set(offending))}"


def test_only_the_hook_module_wraps_module_calls():
    """No __getattr__ forwarding proxies, and no assignment of forward/decode/encode outside runner/hooks.py."""
    assignment = re.compile(r"(\.(forward|decode|encode|rotary_embedding)\s*=[^=]|__setattr__\(\s*\w+,\s*\"(forward|"
                            r"decode|encode)\"|vars\(\w+\)\[)")  # fmt: skip
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "runner" / "hooks.py":
                continue
            source = path.read_text(encoding="utf-8")
            assert "def __getattr__" not in source, f"{path.relative_to(REPO)} forwards attributes with __getattr__"
            assert not assignment.search(source), f"{path.relative_to(REPO)} assigns a module method"
