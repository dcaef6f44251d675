"""How many CPU threads torch may use in this process: each studio process takes a share of the cores.

The app (with its chat engine), a training child and a CLI command each start torch, and torch
takes every core by default. Two such processes on the same cores oversubscribe them, and torch's
OpenMP workers then wait on each other: on a 2-core machine one training step under a chat
generation took 177 s instead of 4.5 s with one thread each (benchmarks/thread_share.py measures it).

The share is, in order: `LORA_STUDIO_TORCH_THREADS` as the process was started with it (the user's
override), else the app's setting (the settings dialog; 0 or "auto" means automatic), else half the
cores this process may run on, at least one: the two heavy processes that run at once (the app
chatting, a training run) then fit side by side and the window's own thread still gets time.

`apply_thread_share` applies it: `torch.set_num_threads` when torch is already imported, and the
environment (OMP_NUM_THREADS and MKL_NUM_THREADS, read by torch when it starts, and
LORA_STUDIO_TORCH_THREADS, read by the training children this process spawns) in any case, so the
GUI and the CLI can call it before torch is imported without importing it.
"""

from __future__ import annotations

import logging
import os
import sys

from studio.core.errors import StudioError

log = logging.getLogger(__name__)

THREADS_ENV = "LORA_STUDIO_TORCH_THREADS"
TORCH_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# What the user started this process with (a spawned training child inherits its parent's share).
LAUNCH_OVERRIDE = os.environ.get(THREADS_ENV, "")


def parse_threads(value: object) -> int | None:
    """A thread count from a setting or the environment: None for automatic ("", "auto", 0, None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        count = int(str(value).strip())
    except ValueError:
        count = -1
    if count < 0:
        raise StudioError(f"{value!r} is not a number of CPU threads.",
                          hint=f"Use a whole number (1, 2, ...) or auto, e.g. {THREADS_ENV}=2.")
    return count or None


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def thread_share(setting: object = None, *, override: str = LAUNCH_OVERRIDE, cores: int | None = None) -> int:
    """The number of torch threads for this process: the override, else the setting, else half the cores."""
    chosen = parse_threads(override) or parse_threads(setting)
    if chosen:
        return chosen
    return max(1, (cores or available_cores()) // 2)


def apply_thread_share(setting: object = None) -> int:
    """Give this process its share (see the module docstring) and return it."""
    count = thread_share(setting)
    for name in (THREADS_ENV, *TORCH_ENVS):
        os.environ[name] = str(count)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)
    log.info("torch CPU threads for this process: %d", count)
    return count
