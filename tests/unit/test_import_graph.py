"""The package's import graph: no cycles, and the domain packages never reach into `stages/`.

Read from the source with `ast` (imports under `if TYPE_CHECKING:` included: a type-only cycle
still means two modules know each other). Run alone to see the graph's problems:
`.venv/bin/pytest tests/unit/test_import_graph.py -q`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import aiogate

PACKAGE = Path(aiogate.__file__).parent
#: Packages that hold the gateway's domain logic; stages are built from them, not vice versa.
DOMAIN_PACKAGES = ("auth", "ratelimit", "upstream", "discovery", "config")


def _module_name(path: Path) -> str:
    parts = ["aiogate", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if candidate in known:  # `from . import log`: the submodule itself
                    yield candidate
                elif base in known:
                    yield base


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: {target for target in _imports(name, path, known) if target != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    graph = _graph()
    assert "aiogate.server" in graph
    assert "aiogate.runtime" in graph["aiogate.server"]


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_domain_packages_do_not_import_stages() -> None:
    offenders = sorted(
        (name, target)
        for name, targets in _graph().items()
        if name.split(".")[1:2] and name.split(".")[1] in DOMAIN_PACKAGES
        for target in targets
        if target == "aiogate.stages" or target.startswith("aiogate.stages.")
    )
    assert offenders == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: aiohttp modules that are internal as a whole (not part of its documented API).
_PRIVATE_AIOHTTP_MODULES = ("aiohttp.helpers", "aiohttp._http_parser", "aiohttp._websocket")


def _private_aiohttp_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiohttp"):
            module = node.module or ""
            for alias in node.names:
                if module in _PRIVATE_AIOHTTP_MODULES or alias.name.startswith("_"):
                    found.append(f"{module}.{alias.name}")
    return found


def test_private_aiohttp_names_are_imported_only_by_the_compat_module() -> None:
    offenders = {
        name: found
        for name, path in _modules().items()
        if name != "aiogate.aiohttp_compat" and (found := _private_aiohttp_imports(path))
    }
    assert offenders == {}
    assert _private_aiohttp_imports(PACKAGE / "aiohttp_compat.py")  # the rule can see them
