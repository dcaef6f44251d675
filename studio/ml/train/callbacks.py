"""Trainer callbacks that turn transformers' training loop into the studio's typed events.

`EventSink` appends each event to the run's metrics file (one line, flushed) and hands it to
the caller's `on_event`. `StudioCallback` hooks on_step_end / on_log / on_evaluate / on_save:
Step (loss, lr, grad norm, tokens/s, MFU, ETA), Memory, Sample (greedy answers to probe prompts),
Eval (tracking the best eval loss, saving a checkpoint at each new best, early stopping),
Checkpoint (marked complete, old ones pruned), slow-step Warnings, and the cooperative stop.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from studio.core.train import checkpoints
from studio.core.train.events import (
    Checkpoint,
    Eval,
    Event,
    Memory,
    Sample,
    Step,
    Warning,
    event_to_json,
    open_for_append,
)
from studio.core.train.run_dir import RunDir

log = logging.getLogger(__name__)

# Dense bf16 peak TFLOPs by GPU name (substring match, most specific first).
PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0),
    ("A10", 125.0), ("A6000", 155.0), ("A40", 150.0), ("RTX 6000 Ada", 364.0), ("4090", 165.0),
    ("4080", 97.0), ("4070", 58.0), ("3090", 71.0), ("3080", 59.0), ("3070", 41.0), ("V100", 125.0),
    ("T4", 65.0),
)
MIN_STEPS_FOR_SLOW_CHECK = 10
SLOW_WARNING_GAP = 20  # steps between two slow-step warnings
EARLY_STOP_MIN_DELTA = 1e-4  # an eval loss must drop by this much to count as an improvement


def peak_flops(device_kind: str, device_name: str) -> float | None:
    """The device's dense bf16 peak FLOP/s, or None on a CPU or an unknown GPU."""
    if device_kind != "cuda":
        return None
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


class EventSink:
    """Append events to the run's metrics file and forward them to the caller's `on_event`."""

    def __init__(self, path: Path, on_event: Callable[[Event], None] | None) -> None:
        self.path = path
        self.on_event = on_event
        self.events: list[Event] = []
        self._handle = open_for_append(path)  # kept open for the whole run

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._handle.write(event_to_json(event) + "\n")
        self._handle.flush()
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a broken listener must not kill the run
                log.exception("on_event raised for %s", type(event).__name__)

    def close(self) -> None:
        self._handle.close()


@dataclass
class Probe:
    prompt: str  # what the user sees (and the chat turn asked)


@dataclass
class RunTracker:
    """What the callback learns during a run that outlives one Trainer (OOM restarts, the finish)."""

    best_eval: float | None = None
    best_step: int | None = None
    last_eval: float | None = None
    last_loss: float | None = None
    evals_without_improvement: int = 0
    step: int = 0
    last_checkpoint: Path | None = None
    stop_requested: bool = False
    early_stopped: bool = False
    peak_memory: int = 0
    step_times: list[float] = field(default_factory=list)
    tokens_trained: int = 0  # over every attempt of this run, in this process
    train_seconds: float = 0.0

    def tokens_per_second(self) -> float:
        return self.tokens_trained / self.train_seconds if self.train_seconds > 0 else 0.0


class StudioCallback(TrainerCallback):
    def __init__(self, *, emit: Callable[[Event], None], tracker: RunTracker, should_stop: Callable[[], bool],
                 run_dir: RunDir, micro_batch_size: int, keep_checkpoints: int, device_kind: str, device_name: str,
                 device_total: int, model_params: int, memory_every: int, sample_every: int, probes: list[Probe],
                 tokenizer, max_new_tokens: int, early_stopping_patience: int, slow_step_factor: float,
                 counters: Callable[[], tuple[int, int]]) -> None:
        self.emit, self.tracker, self.should_stop = emit, tracker, should_stop
        self.run_dir, self.micro_batch_size, self.keep = run_dir, micro_batch_size, keep_checkpoints
        self.device_kind, self.device_total = device_kind, device_total
        self.peak = peak_flops(device_kind, device_name)
        self.model_params = model_params
        self.memory_every, self.sample_every, self.probes = memory_every, sample_every, probes
        self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens
        self.patience, self.slow_factor = early_stopping_patience, slow_step_factor
        self.counters = counters  # () -> (tokens, samples) counted by the trainer so far, this session
        self._mark = time.perf_counter()
        self._session_start = self._mark
        self._session_first_step = 0
        self._last_counts = (0, 0)
        self._step_info: dict[int, tuple[float, int, int]] = {}
        self._last_slow_warning = -SLOW_WARNING_GAP

    # ------------------------------------------------------------ hooks

    def on_train_begin(self, args, state, control, **kwargs):
        self._session_start = self._mark = time.perf_counter()
        self._session_first_step = state.global_step
        self.tracker.step = state.global_step
        return control

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        seconds = max(now - self._mark, 1e-9)
        tokens, samples = self.counters()
        d_tokens, d_samples = tokens - self._last_counts[0], samples - self._last_counts[1]
        self._last_counts = (tokens, samples)
        self.tracker.tokens_trained += d_tokens
        self.tracker.train_seconds += seconds
        self.tracker.step = step = state.global_step
        self._step_info[step] = (seconds, d_tokens, d_samples)
        self._check_slow(step, seconds)
        self.tracker.step_times.append(seconds)
        if self.memory_every and (step % self.memory_every == 0 or step == 1):
            self._memory(step)
        if self.should_stop() and step < state.max_steps:
            self.tracker.stop_requested = True
            control.should_training_stop = True
            control.should_save = True
        if self.sample_every and self.probes and step % self.sample_every == 0:
            self._samples(step, kwargs.get("model"))
        self._mark = time.perf_counter()
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs or "eval_loss" in logs:
            return control
        step = state.global_step
        seconds, d_tokens, d_samples = self._step_info.pop(step, (0.0, 0, 0))
        self.tracker.last_loss = float(logs["loss"])
        done = max(1, step - self._session_first_step)
        per_step = (time.perf_counter() - self._session_start) / done
        tps = d_tokens / seconds if seconds else 0.0
        grad = logs.get("grad_norm")
        self.emit(Step(
            step=step, max_steps=state.max_steps, epoch=round(float(state.epoch or 0.0), 4),
            loss=float(logs["loss"]), learning_rate=float(logs.get("learning_rate", 0.0)),
            grad_norm=None if grad is None else float(grad), tokens_per_second=round(tps, 2),
            samples_per_second=round(d_samples / seconds, 3) if seconds else 0.0,
            mfu=round(6 * self.model_params * tps / self.peak, 5) if self.peak else None,
            eta_seconds=round(per_step * max(0, state.max_steps - step), 1),
            micro_batch_size=self.micro_batch_size, tokens_seen=int(state.num_input_tokens_seen),
            step_seconds=round(seconds, 4)))
        self._mark = time.perf_counter()
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return control
        t = self.tracker
        t.last_eval = loss = float(loss)
        improved = t.best_eval is None or loss < t.best_eval - EARLY_STOP_MIN_DELTA
        is_best = t.best_eval is None or loss < t.best_eval
        t.evals_without_improvement = 0 if improved else t.evals_without_improvement + 1
        if is_best:
            t.best_eval, t.best_step = loss, state.global_step
            control.should_save = True  # the best adapter always has a checkpoint
        self.emit(Eval(step=state.global_step, eval_loss=loss, is_best=is_best))
        if self.patience and t.evals_without_improvement >= self.patience and state.global_step < state.max_steps:
            t.early_stopped = True
            control.should_training_stop = True
            self.emit(Warning(step=state.global_step, message=(
                f"Early stopping: the eval loss has not improved for {self.patience} evaluations; "
                f"the adapter from step {t.best_step} (eval loss {t.best_eval:.4f}) is kept.")))
        self._mark = time.perf_counter()
        return control

    def on_save(self, args, state, control, **kwargs):
        folder = self.run_dir.checkpoint(state.global_step)
        t = self.tracker
        is_best = t.best_step == state.global_step
        checkpoints.mark_complete(folder, {"eval_loss": t.last_eval if is_best else None,
                                           "best_step": t.best_step, "best_eval": t.best_eval})
        t.last_checkpoint = folder
        protect = {self.run_dir.checkpoint(t.best_step)} if t.best_step else set()
        checkpoints.prune(self.run_dir, self.keep, protect)
        self.emit(Checkpoint(step=state.global_step, path=str(folder), is_best=is_best))
        self._mark = time.perf_counter()
        return control

    # ------------------------------------------------------------ helpers

    def _memory(self, step: int) -> None:
        from studio.ml.base.hardware import memory_snapshot

        snap = memory_snapshot(self.device_kind if self.device_kind in ("cuda", "mps") else "cpu")
        self.tracker.peak_memory = max(self.tracker.peak_memory, snap.peak_bytes)
        self.emit(Memory(step=step, allocated=snap.allocated_bytes, reserved=snap.reserved_bytes,
                         peak=snap.peak_bytes, rss=snap.rss_bytes, total=self.device_total))

    def _check_slow(self, step: int, seconds: float) -> None:
        times = self.tracker.step_times
        if len(times) < MIN_STEPS_FOR_SLOW_CHECK or step - self._last_slow_warning < SLOW_WARNING_GAP:
            return
        median = statistics.median(times[-50:])
        if seconds <= self.slow_factor * median:
            return
        self._last_slow_warning = step
        if self.device_kind == "cuda":
            advice = ("the GPU may be spilling into system memory (shared GPU memory) or be busy with another "
                      "program; lower seq_len or the micro batch, or close other GPU programs")
        else:
            advice = "the machine may be swapping or busy with other programs; close them or lower seq_len"
        self.emit(Warning(step=step, message=(
            f"Step {step} took {seconds:.1f} s, {seconds / median:.1f}x the median of {median:.2f} s: {advice}.")))

    def _samples(self, step: int, model) -> None:
        if model is None:
            return
        from studio.ml.chat.generation import stop_ids
        from studio.ml.chat.smoke import greedy_chat

        stops = stop_ids(self.tokenizer, generation_config=getattr(model, "generation_config", None))
        for probe in self.probes:
            try:
                answer = greedy_chat(model, self.tokenizer, probe.prompt, max_new_tokens=self.max_new_tokens,
                                     stop_ids=stops, require_template=False)
            except Exception as err:  # a sample is a nicety; never fail a run over it
                log.warning("Sample generation failed at step %d: %s", step, err)
                return
            self.emit(Sample(step=step, prompt=probe.prompt, completion=answer.text))
