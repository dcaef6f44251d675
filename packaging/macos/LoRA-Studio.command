#!/bin/sh
# LoRA Studio launcher for macOS: double-click it in Finder. The first run builds .venv in the app
# folder and installs everything, showing each step; later runs start the app at once.
APP_DIR="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON=python3
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "LoRA Studio needs Python 3.10 or newer: install it from https://www.python.org/downloads/ and try again."
    read -r _
    exit 1
fi
cd "$APP_DIR" && exec "$PYTHON" launch.py "$@"
