"""The double-click launcher, run from a fresh copy of the repository: it builds its environment,
starts the app to the point where the main window reports it is shown, and a second run installs nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
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
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "DISPLAY", "WAYLAND_DISPLAY")}
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


FAKE_TERMINAL = """#!/bin/sh
printf '%s\\n' "$@" > "${0%/*}/opened-with.txt"
echo "in-terminal=$LORA_STUDIO_IN_TERMINAL" >> "${0%/*}/opened-with.txt"
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux double-click path")
def test_a_first_run_from_the_desktop_installs_in_a_terminal_window(tmp_path: Path):
    """No terminal attached, a desktop session, nothing installed yet: the set-up opens a terminal to
    show its steps (and start the app from there) instead of working invisibly."""
    app = tmp_path / "app"
    app.mkdir()
    for name in ("launch.py", "pyproject.toml"):
        shutil.copy2(REPO_ROOT / name, app / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    terminal = bin_dir / "xterm"
    terminal.write_text(FAKE_TERMINAL)
    terminal.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "LORA_STUDIO_IN_TERMINAL", "CI")}
    env.update(PATH=str(bin_dir), DISPLAY=":0", LORA_STUDIO_FORCE_CPU="1")
    started = subprocess.run([sys.executable, "launch.py"], cwd=app, env=env, capture_output=True, text=True,
                             timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    record = bin_dir / "opened-with.txt"
    for _ in range(100):  # the terminal is started, not waited for
        if record.exists() and "in-terminal" in record.read_text():
            break
        time.sleep(0.1)
    lines = record.read_text().splitlines()
    assert lines == ["-e", sys.executable, str(app / "launch.py"), "--detach", "in-terminal=1"]
    assert not (app / ".venv").exists()  # nothing installed invisibly

    # In a terminal (or with no desktop session) it does the set-up itself, as before.
    probe = "import launch; print(launch.visible_terminal())"
    for extra in ({"LORA_STUDIO_IN_TERMINAL": "1"}, {"DISPLAY": ""}):
        shown = subprocess.run([sys.executable, "-c", probe], cwd=app, env={**env, **extra}, capture_output=True,
                               text=True, timeout=60)
        assert shown.stdout.strip() == "None", shown.stderr


DYING_APP = """#!/bin/sh
echo 'qt.qpa.plugin: From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed to load the Qt xcb platform plugin.'
exit 134
"""
LIVING_APP = """#!/bin/sh
echo $$ > "${0%/*}/living.pid"
exec sleep 30
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX shell stand-ins for the app")
def test_a_detached_start_that_dies_at_once_says_why(tmp_path: Path):
    """After a double-click nobody sees the app's own output: the launcher watches its first seconds
    and, if it died, shows the output and what to install (Qt's missing X11 libraries here)."""
    app = tmp_path / "app"
    (app / ".venv").mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "launch.py", app / "launch.py")
    for name, body in (("dying", DYING_APP), ("living", LIVING_APP)):
        (app / name).write_text(body)
        (app / name).chmod(0o755)
    start = "import launch, pathlib, sys; sys.exit(launch.start_detached(pathlib.Path(sys.argv[1]).resolve(), []))"
    env = {k: v for k, v in os.environ.items() if k != "LORA_STUDIO_IN_TERMINAL"}
    died = subprocess.run([sys.executable, "-c", start, "dying"], cwd=app, env=env, capture_output=True, text=True,
                          timeout=60)
    assert died.returncode == 134
    assert "stopped right after starting (exit code 134)" in died.stdout and "xcb-cursor0" in died.stdout
    assert "sudo apt install libxcb-cursor0" in died.stdout
    assert "xcb-cursor0" in (app / ".venv" / "last-start.log").read_text()

    lived = subprocess.run([sys.executable, "-c", start, "living"], cwd=app, env=env, capture_output=True,
                           text=True, timeout=60)
    assert lived.returncode == 0 and "LoRA Studio is starting." in lived.stdout
    os.kill(int((app / "living.pid").read_text()), signal.SIGKILL)


def test_the_opened_terminal_waits_for_enter_only_after_a_failure(tmp_path: Path):
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy2(REPO_ROOT / "launch.py", app / "launch.py")
    probe = ("import sys, launch\n"
             "def failing(argv): sys.exit(3)\n"
             "def raising(argv): raise RuntimeError('no python3-venv')\n"
             "def fine(argv): return 0\n"
             "launch.main = {'failing': failing, 'raising': raising, 'fine': fine}[sys.argv[1]]\n"
             "print('code', launch.main_in_terminal([]))\n")
    outcomes = {}
    for case in ("failing", "raising", "fine"):
        ran = subprocess.run([sys.executable, "-c", probe, case], cwd=app, input="\n", capture_output=True,
                             text=True, timeout=60)
        outcomes[case] = (ran.stdout.rsplit("code ", 1)[-1].strip(), "Press Enter" in ran.stdout,
                          "no python3-venv" in ran.stderr)
    assert outcomes == {"failing": ("3", True, False), "raising": ("1", True, True), "fine": ("0", False, False)}


def test_desktop_entry_points_at_the_launcher_and_icon(tmp_path: Path):
    from studio.core.shortcuts import install_linux

    written = install_linux(data_home=tmp_path / "share", desktop_dir=tmp_path / "no-desktop")
    assert written == [tmp_path / "share" / "applications" / "lora-studio.desktop"]
    text = written[0].read_text()
    assert f"Exec={REPO_ROOT}/packaging/linux/lora-studio.sh" in text
    assert f"Icon={REPO_ROOT}/studio/resources/icons/lora-studio.png" in text
    assert (REPO_ROOT / "studio" / "resources" / "icons" / "lora-studio.png").is_file()
    assert os.access(written[0], os.X_OK)
