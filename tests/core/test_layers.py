"""The house rules of DESIGN.md, checked: core/ml never need Qt, core never imports torch eagerly."""

from __future__ import annotations

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


def test_core_and_ml_import_without_qt():
    modules = ["studio.core", "studio.ml", *_modules("studio.core"), *_modules("studio.ml")]
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


def test_core_import_does_not_import_torch():
    modules = ["studio.core", *_modules("studio.core"), "studio.cli.main"]
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
