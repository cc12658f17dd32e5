"""Layering: the runtime package never needs the operator tooling in voiceauth.tools (nor matplotlib)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import voiceauth
from voiceauth.errors import VoiceAuthError

PACKAGE = Path(voiceauth.__file__).resolve().parent
TOOLS = "voiceauth.tools"
# The CLI is the tooling's entry point: it imports voiceauth.tools lazily, inside the commands that need it.
ALLOWED = set((PACKAGE / "cli").glob("*.py"))


def test_runtime_imports_do_not_load_matplotlib_or_tools() -> None:
    code = (
        "import sys\n"
        "import voiceauth, voiceauth.client, voiceauth.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' or m.startswith('voiceauth.tools')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every module an import statement of ``path`` names, ``root`` holding the top package.

    Imports inside functions and ``if TYPE_CHECKING:`` blocks count; relative imports are resolved.
    """
    parts = path.relative_to(root).with_suffix("").parts
    package = parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def names_tools(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m == TOOLS or m.startswith(TOOLS + "."))


def test_runtime_modules_never_import_tools() -> None:
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] != "tools"]
    assert PACKAGE / "scoring" / "scorer.py" in files and PACKAGE / "store" / "base.py" in files
    offenders = {str(p): names_tools(imported_modules(p, PACKAGE.parent)) for p in files if p not in ALLOWED}
    assert {path: names for path, names in offenders.items() if names} == {}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import voiceauth.tools.bench", "voiceauth.tools.bench"),
        ("from voiceauth import tools", "voiceauth.tools"),
        ("from .. import tools", "voiceauth.tools"),
        ("from ..tools.plots import plot_det", "voiceauth.tools.plots"),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from voiceauth.tools.demo import run_demo\n",
         "voiceauth.tools.demo"),
        ("def f():\n    from voiceauth.tools import samples\n", "voiceauth.tools"),
    ],
)
def test_import_walker_sees_every_form(tmp_path: Path, source: str, expected: str) -> None:
    probe = tmp_path / "voiceauth" / "store" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(source)
    assert expected in names_tools(imported_modules(probe, tmp_path))


def test_plots_without_matplotlib_say_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from voiceauth.tools.plots import plot_det, plot_score_histograms

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(VoiceAuthError, match=r"voiceauth\[tools\]"):
        plot_score_histograms([0.1, 0.9], [False, True], tmp_path / "scores.png")
    with pytest.raises(VoiceAuthError, match=r"voiceauth\[tools\]"):
        plot_det({"x": ([0.1, 0.9], [False, True])}, tmp_path / "det.png")


# The flow audio -> speech -> embedding -> scoring -> decision, the store beside it, the services
# and fraud screens composed from them, live calls above, the client on top, then its front ends.
LAYERS: dict[str, int] = {
    "errors": 0, "ids": 0, "models": 0, "memory": 0,
    "audio": 1, "speech": 2, "embedding": 3, "scoring": 4, "decision": 5, "results": 5, "store": 5,
    "services": 6, "fraud": 6, "live": 7, "client": 8,
    "cli": 9, "tools": 9, "serve": 9, "doctor": 9, "__init__": 9, "__main__": 9,
}


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    return LAYERS[part]


def test_no_layer_imports_a_layer_above_it() -> None:
    upward = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
        own = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
        for name in imported_modules(path, PACKAGE.parent):
            if name.startswith("voiceauth.") and name.split(".")[1] in LAYERS and layer_of(name) > layer_of(own):
                upward.setdefault(own, set()).add(name.split(".")[1])
    assert upward == {}


def test_no_module_is_over_500_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}
