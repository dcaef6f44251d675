"""The typed events a training run reports, and their JSON form in runs/<run-id>/metrics.jsonl.

One frozen dataclass per kind (Preparing, RunStarted, Step, Eval, Memory, Sample, Checkpoint, Warning,
OOMRecovered, Stopped, Finished, Failed). `to_dict()` gives a JSON-able dict with a "type" key;
`event_from_dict()` and `read_events()` turn metrics.jsonl lines back into the same objects;
`describe_event()` is the one line a person reads (the CLI's output, the dashboard's log).
Plain data, no torch or Qt: it only describes what happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TextIO

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Event:
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Preparing(_Event):
    """Work before the first step that can take a while: the default model's first conversion, loading."""

    kind: ClassVar[str] = "preparing"
    message: str
    fraction: float | None = None  # how far this stage is, 0..1; None when unknown


@dataclass(frozen=True)
class RunStarted(_Event):
    """A run (or a resumed / OOM-restarted attempt of it) begins."""

    kind: ClassVar[str] = "run_started"
    run_id: str
    run_dir: str
    base_model: str
    device: str  # "cuda" | "cpu" | "mps"
    device_name: str
    quant: str  # "4bit" | "8bit" | "none"
    dtype: str  # compute dtype: "bf16" | "fp16" | "fp32"
    method: str
    max_steps: int
    start_step: int  # > 0 when resuming from a checkpoint
    train_rows: int  # packed rows of up to seq_len tokens
    train_samples: int
    validation_samples: int
    micro_batch_size: int
    grad_accum: int
    seq_len: int
    trainable_params: int
    total_params: int
    resumed_from: str | None = None  # checkpoint folder
    attempt: int = 1


@dataclass(frozen=True)
class Step(_Event):
    """One optimizer step finished."""

    kind: ClassVar[str] = "step"
    step: int
    max_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float | None
    tokens_per_second: float
    samples_per_second: float
    mfu: float | None  # model FLOPs utilisation, 0..1; None on a CPU or an unknown GPU
    eta_seconds: float
    micro_batch_size: int
    tokens_seen: int = 0
    step_seconds: float = 0.0


@dataclass(frozen=True)
class Eval(_Event):
    kind: ClassVar[str] = "eval"
    step: int
    eval_loss: float
    is_best: bool = False


@dataclass(frozen=True)
class Memory(_Event):
    """Bytes: CUDA allocated/reserved/peak (process RSS on a CPU), RSS, and the device's total."""

    kind: ClassVar[str] = "memory"
    step: int
    allocated: int
    reserved: int
    peak: int
    rss: int
    total: int


@dataclass(frozen=True)
class Sample(_Event):
    """A greedy answer to a probe prompt, generated during training."""

    kind: ClassVar[str] = "sample"
    step: int
    prompt: str
    completion: str


@dataclass(frozen=True)
class Checkpoint(_Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str
    is_best: bool = False


@dataclass(frozen=True)
class Warning(_Event):  # noqa: A001 - the event kind is called Warning on purpose
    kind: ClassVar[str] = "warning"
    step: int
    message: str


@dataclass(frozen=True)
class OOMRecovered(_Event):
    """Out of memory: the micro batch was halved (gradient accumulation doubled) and the run goes on."""

    kind: ClassVar[str] = "oom_recovered"
    step: int
    new_micro_batch: int
    new_grad_accum: int
    message: str


@dataclass(frozen=True)
class Stopped(_Event):
    """The user stopped the run; `checkpoint` resumes it."""

    kind: ClassVar[str] = "stopped"
    step: int
    checkpoint: str | None


@dataclass(frozen=True)
class Finished(_Event):
    kind: ClassVar[str] = "finished"
    adapter_id: str
    path: str
    final_loss: float | None
    eval_loss: float | None  # of the kept (best) adapter
    tokens_seen: int
    tokens_per_second: float
    peak_memory: int
    duration_s: float


@dataclass(frozen=True)
class Failed(_Event):
    kind: ClassVar[str] = "failed"
    step: int
    message: str
    hint: str
    checkpoint: str | None  # the last complete checkpoint, intact, when there is one


TrainWarning = Warning  # for callers that would rather not shadow the builtin name

Event = (Preparing | RunStarted | Step | Eval | Memory | Sample | Checkpoint | Warning | OOMRecovered | Stopped | Finished
         | Failed)
EVENT_TYPES: dict[str, type] = {cls.kind: cls for cls in (Preparing, RunStarted, Step, Eval, Memory, Sample, Checkpoint,
                                                           Warning, OOMRecovered, Stopped, Finished, Failed)}
TERMINAL_TYPES = (Stopped, Finished, Failed)


def event_from_dict(data: dict[str, Any]) -> Event:
    """The event a `to_dict()` result (or a metrics.jsonl line) describes. Unknown keys are ignored."""
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def event_to_json(event: Event) -> str:
    """One line of metrics.jsonl (NaN/inf written as null, so every line is strict JSON)."""
    return json.dumps({k: _finite(v) for k, v in event.to_dict().items()}, ensure_ascii=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def open_for_append(path: Path) -> TextIO:
    """metrics.jsonl opened to append events. A line a kill tore is ended first, so the next event
    starts a line of its own instead of being lost with the torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as existing:
        if existing.seek(0, os.SEEK_END) > 0:
            existing.seek(-1, os.SEEK_END)
            torn = existing.read(1) != b"\n"
    handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - the caller closes it
    if torn:
        handle.write("\n")
        handle.flush()
    return handle


def append_event(path: Path, event: Event) -> None:
    """Append one event to a metrics.jsonl and flush it to disk."""
    with open_for_append(path) as handle:
        handle.write(event_to_json(event) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_events(path: Path | str) -> list[Event]:
    """Every event in a metrics.jsonl; a torn line (a killed process, a full disk) is skipped."""
    events: list[Event] = []
    path = Path(path)
    if not path.exists():
        return events
    # Lines are decoded one by one: a line torn inside a multi-byte character spoils only itself.
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            events.append(event_from_dict(json.loads(raw.decode("utf-8"))))
        except (ValueError, TypeError) as err:  # UnicodeDecodeError is a ValueError
            log.warning("%s:%d is not a readable event (%s); skipped", path, number, err)
    return events


def describe_event(event: Event) -> str | None:
    """One human line for an event, as the CLI prints it and the dashboard logs it (None: not worth a line)."""
    if isinstance(event, Preparing):
        return event.message + (f" ({event.fraction:.0%})" if event.fraction is not None else "")
    if isinstance(event, RunStarted):
        resumed = f", resuming at step {event.start_step}" if event.start_step else ""
        return (f"Run {event.run_id}: {event.base_model} on {event.device} ({event.quant}, {event.dtype}), "
                f"{event.max_steps} steps, {event.train_samples} samples in {event.train_rows} rows{resumed}")
    if isinstance(event, Step):
        eta = f"{int(event.eta_seconds // 60)}m{int(event.eta_seconds % 60):02d}s"
        return (f"step {event.step}/{event.max_steps}  loss {event.loss:.4f}  lr {event.learning_rate:.2e}  "
                f"{event.tokens_per_second:.0f} tok/s  eta {eta}")
    if isinstance(event, Eval):
        return f"eval at step {event.step}: loss {event.eval_loss:.4f}{' (best)' if event.is_best else ''}"
    if isinstance(event, Sample):
        return f"sample at step {event.step}: {event.prompt!r} -> {event.completion!r}"
    if isinstance(event, Memory):
        return None  # charted, not logged
    if isinstance(event, Checkpoint):
        return f"checkpoint saved at step {event.step}{' (best)' if event.is_best else ''}"
    if isinstance(event, Warning | OOMRecovered):
        return f"warning: {event.message}"
    if isinstance(event, Stopped):
        return f"stopped at step {event.step}; checkpoint {event.checkpoint}"
    if isinstance(event, Finished):
        return (f"finished: adapter {event.adapter_id} in {event.duration_s:.0f} s "
                f"(final loss {_loss(event.final_loss)}, eval loss {_loss(event.eval_loss)})")
    if isinstance(event, Failed):
        return f"failed at step {event.step}: {event.message} {event.hint}".rstrip()
    return None


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
