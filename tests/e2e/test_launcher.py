"""The double-click launcher, run from a fresh copy of the repository: it builds its environment,
starts the app to the point where the main window reports it is shown, and a second run installs nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studio.core.paths import REPO_ROOT

pytestmark = pytest.mark.slow


def _fresh_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.mark.skipif(sys.platform.startswith("win"), reason="the Linux launcher")
def test_linux_launcher_installs_once_then_starts(tmp_path: Path):
    app = _fresh_copy(tmp_path / "LoRA Studio")  # a space in the path, as in real installs
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # The launcher must build its own venv, not reuse ours: start from the system PATH.
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env.update(QT_QPA_PLATFORM="offscreen", LORA_STUDIO_HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               LORA_STUDIO_EXIT_AFTER_SHOWN="1", LORA_STUDIO_FORCE_CPU="1", LORA_STUDIO_NO_UV="1")
    launcher = app / "packaging" / "linux" / "lora-studio.sh"

    first = subprocess.run([str(launcher)], capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Installing PyTorch for the CPU" in first.stdout
    assert "LORA_STUDIO_WINDOW_SHOWN" in first.stdout and "torch imported: False" in first.stdout
    assert (app / ".venv").is_dir()

    second = subprocess.run([str(launcher)], capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Installing" not in second.stdout
    assert "LORA_STUDIO_WINDOW_SHOWN" in second.stdout


def test_desktop_entry_points_at_the_launcher_and_icon(tmp_path: Path):
    from studio.core.shortcuts import install_linux

    written = install_linux(data_home=tmp_path / "share", desktop_dir=tmp_path / "no-desktop")
    assert written == [tmp_path / "share" / "applications" / "lora-studio.desktop"]
    text = written[0].read_text()
    assert f"Exec={REPO_ROOT}/packaging/linux/lora-studio.sh" in text
    assert f"Icon={REPO_ROOT}/studio/resources/icons/lora-studio.png" in text
    assert (REPO_ROOT / "studio" / "resources" / "icons" / "lora-studio.png").is_file()
    assert os.access(written[0], os.X_OK)
