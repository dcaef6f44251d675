#!/usr/bin/env sh
# LoRA Studio launcher for Linux. Double-click (or run) it: the first run builds .venv in the app
# folder and installs everything, showing each step; later runs start the app at once.
APP_DIR="$(cd "$(dirname "$0")/../.." && pwd)"
for candidate in python3.13 python3.12 python3.11 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        PYTHON="$candidate"
        break
    fi
done
if [ -z "$PYTHON" ]; then
    echo "LoRA Studio needs Python 3.10 or newer. Install it (e.g. 'sudo apt install python3 python3-venv'), then run this again." >&2
    exit 1
fi
cd "$APP_DIR" && exec "$PYTHON" launch.py "$@"
