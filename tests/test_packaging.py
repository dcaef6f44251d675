"""A wheel of the studio carries what the app reads at run time (not only the editable checkout)."""

from __future__ import annotations

from pathlib import Path

import pytest

import studio
from studio.core.paths import RESOURCES_DIR

ROOT = Path(__file__).resolve().parents[1]


def test_resources_live_in_the_package_and_package_data_names_them():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package = Path(studio.__file__).resolve().parent
    assert RESOURCES_DIR.is_relative_to(package)
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["studio"]
    files = [path.relative_to(package) for path in RESOURCES_DIR.rglob("*") if path.is_file()]
    assert {"general_text.txt", "icons/lora-studio.png", "sample_dataset/island_facts.jsonl"} <= {
        path.relative_to("resources").as_posix() for path in files}
    shipped = {path.relative_to(package) for pattern in patterns for path in package.glob(pattern)}  # as setuptools
    unshipped = [str(path) for path in files if path not in shipped]
    assert not unshipped, f"not in package-data: {unshipped}"
