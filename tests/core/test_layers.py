"""The house rules of DESIGN.md, checked: the layers (import-linter contracts in pyproject.toml),
core, ml and the CLI never need Qt, core and the CLI never import torch eagerly, the GUI imports ml
only inside functions."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import studio

ROOT = Path(studio.__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    """Every module of a package, its feature sub-packages included."""
    path = ROOT / package.replace(".", "/")
    found = []
    for file in sorted(path.rglob("*.py")):
        parts = file.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        elif parts[-1].startswith("_"):
            continue
        found.append(".".join(parts))
    return found


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_core_ml_and_cli_import_without_qt():
    modules = ["studio.core", "studio.ml", "studio.cli", *_modules("studio.core"), *_modules("studio.ml"),
               *_modules("studio.cli")]
    # A meta-path hook that makes every Qt binding unimportable, as on a headless server.
    code = (
        "import sys, importlib\n"
        "class NoQt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('PySide6', 'PyQt5', 'PyQt6', 'pyqtgraph', 'shiboken6'):\n"
        "            raise ImportError('Qt is blocked in this test')\n"
        "sys.meta_path.insert(0, NoQt())\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_core_and_cli_import_does_not_import_torch():
    modules = ["studio.core", *_modules("studio.core"), "studio.cli", *_modules("studio.cli")]
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'PySide6') if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
        "assert not heavy, heavy\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_linter_contracts_are_kept():
    """gui | cli -> ml -> core, and no Qt below gui: the contracts in pyproject.toml, checked by import-linter."""
    script = Path(sys.executable).parent / ("lint-imports.exe" if os.name == "nt" else "lint-imports")
    assert script.exists(), f"{script} is missing: install the test extras (pip install -e .[test])"
    # This tree first on the path, so the contracts judge this checkout and not an installed copy.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([str(script), "--no-cache"], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


# What the window must not pay for at start-up: loaded only when a worker needs it.
GUI_LAZY = ("studio.ml", "torch", "transformers", "peft", "bitsandbytes", "trl")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _eager_imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import that runs when `module` is imported: at module or
    class level, in if/try blocks too, but not inside functions nor under `if TYPE_CHECKING:`."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []

    def visit(nodes) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join([*package[:len(package) - node.level + 1], *([node.module] if node.module else [])]) \
                    if node.level else node.module or ""
                found.append((node.lineno, base))
                found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
            visit(ast.iter_child_nodes(node))

    visit(ast.parse(source).body)
    return found


def _is_lazy_only(name: str) -> bool:
    return any(name == heavy or name.startswith(heavy + ".") for heavy in GUI_LAZY)


def test_the_eager_import_finder():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import torch\n"
        "if TYPE_CHECKING:\n"
        "    from studio.ml.chat.engine import ChatEngine\n"
        "try:\n"
        "    from ..ml import blend\n"
        "except ImportError:\n"
        "    pass\n"
        "class Panel:\n"
        "    import peft\n"
        "    def load(self):\n"
        "        import transformers\n"
        "        from studio.ml.base import loading\n"
    )
    found = [(line, name) for line, name in _eager_imports(source, "studio.gui.panel") if _is_lazy_only(name)]
    assert found == [(2, "torch"), (6, "studio.ml"), (6, "studio.ml.blend"), (10, "peft")]
    # In a package's __init__, `from . import x` is relative to the package itself.
    assert (1, "studio.gui.train.ml") in _eager_imports("from . import ml\n", "studio.gui.train", is_package=True)


def test_gui_imports_ml_only_inside_functions():
    """The window opens fast: studio.gui loads studio.ml and torch only inside the functions that need them."""
    offenders = []
    for file in sorted((ROOT / "studio" / "gui").rglob("*.py")):
        parts = file.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        for line, name in _eager_imports(file.read_text(encoding="utf-8"), module, is_package):
            if _is_lazy_only(name):
                offenders.append(f"{file.relative_to(ROOT)}:{line} imports {name}")
    assert not offenders, "imported at module or class level (move into the function that needs it):\n" + \
        "\n".join(offenders)
