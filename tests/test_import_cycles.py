"""Layering: voiceauth's modules import each other without a cycle, and only the entry points import the facade.

The facade (voiceauth.client.VoiceAuth) composes the parts below it (voiceauth.services.core, the
watchlist, the live-call pool, bulk enrolment); they are handed ``va.services``, never the facade.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Set
from pathlib import Path

import pytest

import voiceauth

PACKAGE = Path(voiceauth.__file__).resolve().parent
FACADE = "voiceauth.client"
# entry points above the facade: the package's public names, the command line and the operator tools
MAY_IMPORT_FACADE = {"voiceauth", FACADE}
FRONT_ENDS = ("voiceauth.cli", "voiceauth.tools.", "voiceauth.serve.")
KNOWN_CYCLES: set[frozenset[str]] = set()  # none: a cycle to tolerate is listed here with the reason


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package: Path) -> dict[str, Path]:
    """Every module of ``package`` (a directory of .py files) by dotted name."""
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def _known(name: str, modules: Set[str]) -> str | None:
    """The module ``name`` names (its longest dotted prefix that is a module of the package), if any."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def imports_of(path: Path, name: str, modules: Set[str]) -> set[str]:
    """The package's modules that ``path`` (module ``name``) imports anywhere: at the top, inside
    functions, under ``if TYPE_CHECKING:``. ``from pkg import mod`` names ``pkg.mod`` (not ``pkg``)
    when ``mod`` is a module; relative imports are resolved."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    named: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            named.update(_known(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                named.add(sub if sub in modules else _known(module, modules))
    return {m for m in named if m is not None and m != name}


def import_graph(package: Path) -> dict[str, set[str]]:
    modules = package_modules(package)
    return {name: imports_of(path, name, modules.keys()) for name, path in modules.items()}


def cycles(graph: Mapping[str, Set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


# -- the package --------------------------------------------------------------------------------------------------

def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    expected = {"voiceauth.live.call", "voiceauth.fraud.watchlist", "voiceauth.services.bulk",
                "voiceauth.services.core"}
    assert expected <= graph.keys()
    assert "voiceauth.services.core" in graph["voiceauth.live.state"]  # the walker sees TYPE_CHECKING imports
    found = {c for c in cycles(graph) if c not in KNOWN_CYCLES}
    assert found == set(), [sorted(c) for c in found]


def test_only_the_entry_points_import_the_facade() -> None:
    graph = import_graph(PACKAGE)
    assert FACADE in graph["voiceauth.cli.options"]  # the walker sees imports inside functions
    importers = {m for m, deps in graph.items() if FACADE in deps}
    below = {m for m in importers if m not in MAY_IMPORT_FACADE and not m.startswith(FRONT_ENDS)}
    assert below == set()


# -- the walker and the cycle finder can fail ---------------------------------------------------------------------

def test_cycle_finder_finds_cycles_and_only_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    found = cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}})
    assert sorted(sorted(c) for c in found) == [["a", "b"], ["c", "d"]]


@pytest.mark.parametrize(
    "source",
    [
        "from voiceauth.client import VoiceAuth",
        "import voiceauth.client",
        "from voiceauth import client",
        "from .. import client",
        "from ..client import VoiceAuth",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from voiceauth.client import VoiceAuth\n",
        "def f():\n    from voiceauth.client import VoiceAuth\n",
    ],
)
def test_walker_sees_every_form_of_import(tmp_path: Path, source: str) -> None:
    root = tmp_path / "voiceauth"
    (root / "store").mkdir(parents=True)
    for name in ("__init__.py", "client.py", "errors.py", "store/__init__.py"):
        (root / name).write_text("")
    (root / "store" / "probe.py").write_text(source + "\nfrom voiceauth import errors\n")
    graph = import_graph(root)
    assert graph["voiceauth.store.probe"] == {FACADE, "voiceauth.errors"}  # `from voiceauth import errors`: errors
    (root / "client.py").write_text("from voiceauth.store import probe\n")
    assert cycles(import_graph(root)) == [frozenset({FACADE, "voiceauth.store.probe"})]
