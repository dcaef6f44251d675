"""What is checked about a training run before its run folder exists, so a bad argument leaves no junk run.

`check_before_run(config, data)` refuses, with a StudioError naming the setting: a data folder that
is missing, a base model that cannot be found, a seq_len beyond the base's positions, explicit
targets the base has no Linear layer for, and a --continue adapter not in the library. It reads
config.json and safetensors headers only; the default base before its first conversion is checked
against its known shape (studio.core.basemodels.DEFAULT_BASE_SHAPE, DEFAULT_BASE_LINEAR). The loaded
model remains the final word on targets (studio.ml.base.loading.resolve_targets); this is the same
rule on the headers, early.
"""

from __future__ import annotations

from pathlib import Path

from studio.core.basemodels import (
    DEFAULT_BASE_ID,
    DEFAULT_BASE_LINEAR,
    DEFAULT_BASE_SHAPE,
    read_config,
    resolve_base_model,
    tensor_infos,
)
from studio.core.checks import check_fits_positions
from studio.core.errors import StudioError
from studio.core.paths import DataDir
from studio.core.train.config import TrainConfig


def check_before_run(config: TrainConfig, data: DataDir) -> None:
    """Raise StudioError for a setting that would make the run fail at once; resumed runs are not checked."""
    if config.resume:
        return
    folder = Path(config.data_folder).expanduser()
    if not folder.is_dir():
        raise StudioError(f"data_folder: {folder} does not exist or is not a folder.",
                          hint="Choose the folder that holds your training files.")
    default = config.base in ("", DEFAULT_BASE_ID)
    try:
        base = resolve_base_model(data, config.base)
    except StudioError:
        if not default:
            raise
        base = None  # the default base is converted on its first run: check against its known shape
    label = repr(config.base or (base.id if base is not None else DEFAULT_BASE_ID))
    check_fits_positions("seq_len", config.seq_len, read_config(base.path) if base else DEFAULT_BASE_SHAPE, label)
    if not isinstance(config.targets, str):
        _check_targets(config.targets, linear_names(base.path) if base else set(DEFAULT_BASE_LINEAR), label)
    if config.parent_adapter:
        from studio.core.library.store import AdapterLibrary

        AdapterLibrary(data).get(config.parent_adapter)  # raises "No adapter called ..." with a hint


def linear_names(base_path: Path) -> set[str]:
    """The names of the base's Linear layers (the last part of each 2-D weight's name), from its headers."""
    return {name.removesuffix(".weight").rsplit(".", 1)[-1] for name, info in tensor_infos(base_path).items()
            if name.endswith(".weight") and len(info.shape) == 2 and "embed" not in name and "lm_head" not in name}


def _check_targets(targets: tuple[str, ...], linear: set[str], label: str) -> None:
    missing = sorted(set(targets) - linear)
    if missing:
        raise StudioError(f"targets: base model {label} has no linear layers called {', '.join(missing)}.",
                          hint=f"Pick from: {', '.join(sorted(linear))}.")
