"""How fast does the main window appear? Target: visible within 2 s of a warm start.

Starts `python -m studio` several times offscreen with LORA_STUDIO_EXIT_AFTER_SHOWN=1 (the window
reports when it is shown, then quits) and prints the time from process start to shown, and
whether torch had been imported by then (it must not be).

    python benchmarks/startup_time.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_S = 2.0


def one_start(home: str) -> tuple[float, bool, float]:
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"),
               LORA_STUDIO_HOME=home, LORA_STUDIO_EXIT_AFTER_SHOWN="1", LORA_STUDIO_LAUNCH_T0=repr(time.time()))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "studio"], capture_output=True, text=True, env=env, timeout=120)
    wall = time.perf_counter() - started
    match = re.search(r"LORA_STUDIO_WINDOW_SHOWN after ([\d.]+) s; torch imported: (\w+)", result.stdout)
    if not match:
        raise SystemExit(f"the window never reported itself shown:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1)), match.group(2) == "True", wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        one_start(home)  # the cold start fills the OS file cache; the target is for warm starts
        runs = [one_start(home) for _ in range(args.runs)]
    shown = [r[0] for r in runs]
    median = statistics.median(shown)
    print(f"window shown after (s): {', '.join(f'{s:.2f}' for s in shown)}")
    print(f"median {median:.2f} s (target {TARGET_S:.1f} s): {'OK' if median <= TARGET_S else 'TOO SLOW'}")
    print(f"torch imported before the window showed: {any(r[1] for r in runs)}")
    print(f"process wall time incl. quit (median): {statistics.median(r[2] for r in runs):.2f} s")


if __name__ == "__main__":
    main()
