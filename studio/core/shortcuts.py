"""Desktop / start-menu entries for LoRA Studio on Linux, Windows and macOS.

Writes the platform's shortcut pointing at the double-click launcher in packaging/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from studio.core import atomic
from studio.core.errors import StudioError
from studio.core.paths import REPO_ROOT, RESOURCES_DIR

LINUX_TEMPLATE = REPO_ROOT / "packaging" / "linux" / "lora-studio.desktop"


def linux_desktop_entry(app_dir: Path = REPO_ROOT) -> str:
    return LINUX_TEMPLATE.read_text(encoding="utf-8").replace("@APP_DIR@", str(app_dir))


def install_linux(data_home: Path | None = None, desktop_dir: Path | None = None) -> list[Path]:
    """Start-menu entry in $XDG_DATA_HOME/applications (and a desktop icon when a Desktop exists)."""
    data_home = data_home or Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    entry = linux_desktop_entry()
    written = [data_home / "applications" / "lora-studio.desktop"]
    desktop_dir = desktop_dir or Path.home() / "Desktop"
    if desktop_dir.is_dir():
        written.append(desktop_dir / "lora-studio.desktop")
    for path in written:
        atomic.write_text(path, entry)
        path.chmod(0o755)  # desktop environments only launch entries marked executable
    return written


# The PowerShell that makes one .lnk. It is a constant: the paths reach it as environment variables,
# never spliced into the command, so a path with an apostrophe or a `$` is only ever a string.
WINDOWS_SHORTCUT_SCRIPT = (
    "$s=(New-Object -ComObject WScript.Shell).CreateShortcut($env:LORA_STUDIO_LINK);"
    "$s.TargetPath=$env:LORA_STUDIO_TARGET;$s.WorkingDirectory=$env:LORA_STUDIO_WORKDIR;"
    "$s.IconLocation=$env:LORA_STUDIO_ICON;$s.WindowStyle=7;$s.Save()"
)


def windows_shortcut_command(link: Path, target: Path, workdir: Path, icon: Path) -> tuple[list[str], dict[str, str]]:
    """The argument list and the extra environment that make `link` with PowerShell's WScript.Shell."""
    argv = ["powershell", "-NoProfile", "-NonInteractive", "-Command", WINDOWS_SHORTCUT_SCRIPT]
    env = {"LORA_STUDIO_LINK": str(link), "LORA_STUDIO_TARGET": str(target), "LORA_STUDIO_WORKDIR": str(workdir),
           "LORA_STUDIO_ICON": str(icon)}
    return argv, env


def install_windows() -> list[Path]:
    """A Start-menu and a desktop shortcut (.lnk) made by PowerShell's WScript.Shell."""
    target = REPO_ROOT / "packaging" / "windows" / "LoRA-Studio.bat"
    icon = RESOURCES_DIR / "icons" / "lora-studio.ico"
    start_menu = Path(os.environ["APPDATA"]) / "Microsoft" / "Windows" / "Start Menu" / "Programs"
    links = [start_menu / "LoRA Studio.lnk", Path.home() / "Desktop" / "LoRA Studio.lnk"]
    for link in links:
        argv, env = windows_shortcut_command(link, target, REPO_ROOT, icon)
        result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env})
        if result.returncode != 0:
            raise StudioError(f"Could not create {link}: {result.stderr.strip()}")
    return links


def install_macos() -> list[Path]:
    """A Desktop link to the .command launcher (Finder runs it on double-click)."""
    link = Path.home() / "Desktop" / "LoRA Studio.command"
    if link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(REPO_ROOT / "packaging" / "macos" / "LoRA-Studio.command")
    return [link]


def install_shortcut() -> list[Path]:
    if sys.platform.startswith("win"):
        return install_windows()
    if sys.platform == "darwin":
        return install_macos()
    return install_linux()
