"""The training run: `run_training(config, data, on_event, should_stop) -> RunResult`.

Built on transformers' Trainer (gradient accumulation, schedulers, optimizer state, resume) with the
studio's callbacks for events. A run lives in its RunDir (config, events, checkpoints, lock:
studio.core.train.run_dir). It prepares the folder's data with the base tokenizer, trains on padding-free packed
rows, evaluates on the validation split, and hands a frozen record of the run (publish.TrainedRun)
to publish_adapter, which puts the best adapter in the library. Out of memory halves the micro batch (doubling gradient accumulation) and resumes
from the last complete checkpoint; at micro batch 1 the run fails with advice. A resumed run whose
last checkpoint is its final step only publishes; one whose adapter is already in the library (a
kill between publishing and recording it) only completes its record (studio.core.train.published).
Every outcome (finished, stopped, failed) releases the model.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError, disk_full_error, is_disk_full
from studio.core.library.store import AdapterEntry, AdapterLibrary, slugify
from studio.core.paths import DataDir
from studio.core.progress import ShouldStop, StageProgress
from studio.core.train import checkpoints, published, run_lock
from studio.core.train.config import TrainConfig
from studio.core.train.events import (
    Eval,
    Event,
    Failed,
    Finished,
    OOMRecovered,
    Preparing,
    RunStarted,
    Step,
    Stopped,
    Warning,
)
from studio.core.train.preflight import check_before_run
from studio.core.train.run_dir import RunDir, step_of
from studio.ml.base import loading as model_loading
from studio.ml.base.default_model import resolve_base
from studio.ml.base.hardware import choose_device
from studio.ml.train.callbacks import EventSink, Probe, RunTracker, StudioCallback
from studio.ml.train.publish import TrainedRun, dataset_summary, load_adapter_weights, publish_adapter

log = logging.getLogger(__name__)

# Test-only: raise torch.OutOfMemoryError once, in the training step of this (1-based) step number. An
# environment variable, not a config field, so it never lands in a saved config.json; a spawned
# training process inherits it.
OOM_TEST_ENV = "LORA_STUDIO_TEST_OOM_AT_STEP"
OOM_HINT = ("Lower seq_len (the biggest lever), the LoRA rank or the micro batch, use 4-bit quantization, "
            "turn gradient checkpointing on, or close other programs that use the GPU.")


@dataclass
class RunResult:
    status: str  # "finished" | "stopped" | "failed"
    run_id: str
    run_dir: Path
    step: int = 0
    max_steps: int = 0
    adapter_id: str | None = None
    adapter_path: Path | None = None
    checkpoint: Path | None = None  # the last complete checkpoint (resume point)
    final_loss: float | None = None
    eval_loss: float | None = None
    tokens_seen: int = 0
    tokens_per_second: float = 0.0  # training throughput over the run's steps in this process
    peak_memory_bytes: int = 0  # the device's peak (GPU memory, or RAM on a CPU run)
    duration_s: float = 0.0
    message: str = ""
    hint: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def new_run_id(name: str) -> str:
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{slugify(name)[:24]}-{secrets.token_hex(2)}"


def run_training(config: TrainConfig, data: DataDir, on_event: Callable[[Event], None] | None = None,
                 should_stop: ShouldStop | None = None) -> RunResult:
    """Train an adapter as `config` says and put it in the library.

    Raises StudioError only for an invalid config or an unknown run to resume, before anything
    starts; every later problem is a Failed event and a RunResult with status "failed".
    """
    check_before_run(config, data)  # a bad argument is refused before a run folder exists
    return _Run(config, data, on_event, should_stop or (lambda: False)).run()


class _Run:
    def __init__(self, config: TrainConfig, data: DataDir, on_event, should_stop) -> None:
        self.data, self.should_stop = data, should_stop
        self.started = time.monotonic()
        if config.resume:
            self.run_dir = RunDir.existing(data, config.resume)
        else:
            self.config = config
            self.run_dir = RunDir.create(data, new_run_id(config.display_name()), config.to_dict())
        self.run_id = self.run_dir.run_id
        self.resuming = bool(config.resume)
        run_lock.acquire(self.run_dir)  # refuses a run another live process is training
        self.recovered: AdapterEntry | None = None
        try:
            if self.resuming:  # read under the lock: a run that finished a moment ago is not trained again
                self.config = self._resumable_config()
                # killed after its adapter reached the library, before the record said so: finish the record
                self.recovered = published.published_adapter(self.run_dir, AdapterLibrary(data).list())
            self.emit = EventSink(self.run_dir.metrics, on_event)
        except BaseException:
            run_lock.release(self.run_dir)  # run() and its finally will not happen
            raise
        self.tracker = RunTracker()
        self.oom_at_step = int(os.environ.get(OOM_TEST_ENV) or 0)
        self.max_steps = 0
        self.phase = "preparing"
        self.disk_full = False  # a full disk has ended this run (its message is the one to keep)
        self.quant = self.config.quant  # what the base is actually loaded with (see _load_base)

    def _resumable_config(self) -> TrainConfig:
        if any(isinstance(e, Finished) for e in self.run_dir.events()):
            raise StudioError(f"Run {self.run_id!r} already finished; its adapter is in the library.",
                              hint="Continue training that adapter on new data instead (parent adapter).")
        stored = self.run_dir.read_config()
        if stored is None:
            raise StudioError(f"The settings of run {self.run_id!r} cannot be read.",
                              hint=f"{self.run_dir.config} is missing or not valid JSON.")
        return TrainConfig.from_dict(stored).replace(resume="")

    # ------------------------------------------------------------ the attempt loop

    def run(self) -> RunResult:
        cfg = self.config
        micro, accum = cfg.micro_batch_size, cfg.grad_accum
        attempt = 0
        try:
            if self.recovered is not None:
                return self._record_published(self.recovered)
            try:
                self._prepare()
            except StudioError as err:
                return self._fail(err.message, err.hint)
            except Exception as err:
                if is_disk_full(err):
                    return self._fail(*self._disk_full())
                log.exception("Preparing the run failed")
                return self._fail(f"Preparing the run failed: {type(err).__name__}: {err}",
                                  "Check the dataset report and the base model.")
            while True:
                attempt += 1
                outcome: tuple[str, str, str] | None = None
                try:
                    return self._attempt(micro, accum, attempt)
                except BaseException as err:  # noqa: BLE001 - sorted below; only strings outlive the except
                    if isinstance(err, KeyboardInterrupt):
                        outcome = ("interrupt", "Training was interrupted.", "")
                    elif model_loading.is_oom(err):
                        outcome = ("oom", str(err).splitlines()[0][:200] if str(err) else "out of memory", "")
                    elif isinstance(err, StudioError):
                        outcome = ("error", err.message, err.hint)
                    elif is_disk_full(err):
                        outcome = ("error", *self._disk_full())
                    else:
                        log.exception("Training failed")
                        outcome = ("error", f"Training failed: {type(err).__name__}: {err}",
                                   "See the log for details; the last checkpoint is intact.")
                model_loading.free_memory()  # the exception (and the model its frames held) is gone now
                kind, message, hint = outcome
                if kind == "oom" and self.phase == "training" and micro > 1:
                    micro, accum = micro // 2, accum * 2
                    self._record_batch(micro, accum)
                    last = checkpoints.last_complete(self.run_dir)
                    since = f"step {step_of(last)}" if last is not None else "the start"
                    self.emit(OOMRecovered(step=self.tracker.step + 1, new_micro_batch=micro, new_grad_accum=accum,
                                           message=f"Out of memory at step {self.tracker.step + 1}; retrying with "
                                                   f"micro batch {micro} and gradient accumulation {accum} (same "
                                                   f"effective batch) from {since}."))
                    continue
                if kind == "oom":
                    where = "loading the model" if self.phase != "training" else f"step {self.tracker.step + 1}"
                    return self._fail(f"Out of memory while {where} (micro batch {micro}, seq_len {cfg.seq_len}, "
                                      f"rank {cfg.rank}, quant {self.quant}).", OOM_HINT)
                if kind == "interrupt":
                    self._fail(message, "Resume the run to continue from its last checkpoint.")
                    raise KeyboardInterrupt
                return self._fail(message, hint)
        finally:
            try:
                self.emit.close()  # on a full disk its buffered last lines cannot be flushed: raises again
            except OSError:
                log.exception("Could not close the events of run %s", self.run_id)
            finally:
                run_lock.release(self.run_dir)
                model_loading.free_memory()

    def _disk_full(self) -> tuple[str, str]:
        """The message and hint for a full disk, saying what the run was doing when it struck."""
        self.disk_full = True
        removed = checkpoints.remove_incomplete(self.run_dir)  # a half-written one: space back, never trusted
        if self.phase == "finishing":
            doing = "copy the trained adapter into the library"
        elif self.phase == "training":
            doing = (f"save the run's checkpoint after step {self.tracker.step}" if removed
                     else f"record the run's progress after step {self.tracker.step}")
        else:
            doing = "prepare the run"
        full = disk_full_error(self.run_dir.path, doing)
        if self.phase in ("training", "finishing"):
            return full.message, ("Free some space, then resume the run: it goes on from its last complete "
                                  "checkpoint, which is intact.")
        return full.message, full.hint

    def _record_published(self, entry: AdapterEntry) -> RunResult:
        finished = published.finished_event(entry)
        self.emit(finished)
        metrics = entry.manifest.metrics
        log.info("Run %s had published %s before it was killed; its record is complete now", self.run_id, entry.id)
        return RunResult(status="finished", run_id=self.run_id, run_dir=self.run_dir.path,
                         step=int(metrics.get("steps") or 0),
                         max_steps=int(entry.manifest.hyperparameters.get("max_steps") or 0),
                         adapter_id=entry.id, adapter_path=entry.path,
                         checkpoint=checkpoints.last_complete(self.run_dir), final_loss=finished.final_loss,
                         eval_loss=finished.eval_loss, tokens_seen=finished.tokens_seen,
                         tokens_per_second=finished.tokens_per_second, peak_memory_bytes=finished.peak_memory,
                         duration_s=finished.duration_s,
                         message=f"Adapter {entry.manifest.name!r} was already in the library; the run's record "
                                 "is complete now.")

    def _record_batch(self, micro: int, accum: int) -> None:
        """Keep config.json in step with what runs, so a later resume starts where OOM left it."""
        self.config = self.config.replace(micro_batch_size=micro, grad_accum=accum)
        self.run_dir.write_config(self.config.to_dict())

    def _fail(self, message: str, hint: str) -> RunResult:
        last = checkpoints.last_complete(self.run_dir)
        try:
            self.emit(Failed(step=self.tracker.step, message=message, hint=hint,
                             checkpoint=str(last) if last else None))
        except OSError as err:
            if not is_disk_full(err):
                raise
            # The event is lost (the run reads as interrupted, which resumes the same way); the result says why.
            log.warning("Could not record that run %s failed, the disk is full: %s", self.run_id, message)
            if not self.disk_full:  # the failure was another one: the full disk is what the user must fix first
                message, hint = self._disk_full()
        return self._result("failed", checkpoint=last, message=message, hint=hint)

    def _result(self, status: str, **extra: Any) -> RunResult:
        tracker = self.tracker
        fields: dict[str, Any] = dict(step=tracker.step, max_steps=self.max_steps, final_loss=tracker.last_loss,
                                      tokens_per_second=round(tracker.tokens_per_second(), 2),
                                      peak_memory_bytes=tracker.peak_memory,
                                      duration_s=round(time.monotonic() - self.started, 2))
        return RunResult(status=status, run_id=self.run_id, run_dir=self.run_dir.path, **{**fields, **extra})

    # ------------------------------------------------------------ data and base (once per run)

    def _prepare(self) -> None:
        from studio.core.dataset import packed_rows, prepare_dataset, scan_folder

        cfg = self.config

        def converting(event: StageProgress) -> None:
            self.emit(Preparing(message=f"First use of the default model, converting it once: {event.message}",
                                fraction=event.fraction))

        self.base_info, self.base_ref = resolve_base(self.data, cfg.base, converting)
        self.emit(Preparing(message=f"Reading and tokenizing {cfg.data_folder}…"))
        self.device = choose_device(cfg.device)
        self.tokenizer = model_loading.load_tokenizer(self.base_info.path)
        self.parent = None
        if cfg.parent_adapter:
            self.parent = AdapterLibrary(self.data).get(cfg.parent_adapter)
            fp = self.parent.manifest.base_fingerprint
            if fp and fp != self.base_info.fingerprint:
                raise StudioError(f"Adapter {self.parent.manifest.name!r} was trained on "
                                  f"{self.parent.manifest.base_model!r}, not on {self.base_info.id!r}.",
                                  hint="Continue training it on the base it was trained on.")
        scan = scan_folder(cfg.data_folder, max_file_mb=cfg.max_file_mb)
        self.prepared = prepare_dataset(cfg.data_folder, self.tokenizer, seq_len=cfg.seq_len,
                                        val_fraction=cfg.val_fraction, seed=cfg.seed,
                                        long_samples=cfg.long_samples, scan=scan)
        self.rows = packed_rows(self.prepared.train, cfg.seq_len)
        self.eval_rows = packed_rows(self.prepared.validation, cfg.seq_len)
        self.max_steps = cfg.total_steps(len(self.rows))
        self.probes = [Probe(p) for p in cfg.probe_prompts] or _validation_probes(scan, self.prepared)
        if self.resuming:
            checkpoints.remove_incomplete(self.run_dir)
            if checkpoints.last_complete(self.run_dir) is None:
                log.info("Run %s has no complete checkpoint; it starts over.", self.run_id)

    # ------------------------------------------------------------ one attempt

    def _attempt(self, micro: int, accum: int, attempt: int) -> RunResult:
        from transformers import PrinterCallback, ProgressCallback

        from studio.core.dataset import PackedCollator
        from studio.ml.train.trainer import StudioTrainer, training_arguments

        cfg, dev = self.config, self.device
        self.phase = "loading"
        resume_from = checkpoints.last_complete(self.run_dir)
        self._restore_best(resume_from)
        model = trainer = None
        try:
            self.emit(Preparing(message=f"Loading {self.base_info.id} ({self.quant}) on {dev.name}…"))
            model = self._load_base()
            _, base_params = model_loading.count_parameters(model)
            from transformers import set_seed

            set_seed(cfg.seed)  # the new adapter's initial weights are part of the run's reproducibility
            # Checkpoints name the local folder: peft looks for <name>/config.json at every save and would
            # ask the Hugging Face Hub about a bare id. The library copy gets the portable name.
            local_base = str(self.base_info.path)
            if self.parent is not None:
                model = model_loading.attach_existing_adapter(model, self.parent.path, local_base, trainable=True)
            else:
                model = model_loading.attach_new_adapter(model, cfg, local_base)
            trainable, total = model_loading.count_parameters(model)
            self.emit(RunStarted(
                run_id=self.run_id, run_dir=str(self.run_dir.path), base_model=self.base_info.id, device=dev.kind,
                device_name=dev.name, quant=self.quant, dtype=dev.dtype, method=cfg.method, max_steps=self.max_steps,
                start_step=(step_of(resume_from) or 0) if resume_from else 0, train_rows=len(self.rows),
                train_samples=len(self.prepared.train), validation_samples=len(self.prepared.validation),
                micro_batch_size=micro, grad_accum=accum, seq_len=cfg.seq_len, trainable_params=trainable,
                total_params=total, resumed_from=str(resume_from) if resume_from else None, attempt=attempt))
            if dev.kind == "cuda":
                import torch

                torch.cuda.reset_peak_memory_stats()
            if resume_from is not None and (step_of(resume_from) or 0) >= self.max_steps:
                # Trained to its end, killed while publishing. The Trainer resumed at its last step
                # would train one step more (41 of 40): only the publishing is left to do.
                return self._publish_trained(model, resume_from)
            args = training_arguments(cfg, dev, micro=micro, accum=accum, max_steps=self.max_steps,
                                      output_dir=self.run_dir.checkpoints, has_eval=bool(self.eval_rows))
            trainer = StudioTrainer(model=model, args=args, train_dataset=self.rows, eval_dataset=self.eval_rows or None,
                                    data_collator=PackedCollator(self.tokenizer.pad_token_id, cfg.seq_len),
                                    pad_token_id=self.tokenizer.pad_token_id, step_hook=self._oom_hook)
            for unwanted in (PrinterCallback, ProgressCallback):  # they print to stdout; events replace them
                trainer.remove_callback(unwanted)
            trainer.add_callback(StudioCallback(
                emit=self.emit, tracker=self.tracker, should_stop=self.should_stop, run_dir=self.run_dir,
                micro_batch_size=micro, keep_checkpoints=cfg.keep_checkpoints, device_kind=dev.kind,
                device_name=dev.name, device_total=dev.total_memory, model_params=base_params,
                memory_every=cfg.memory_every, sample_every=cfg.sample_every, probes=self.probes,
                tokenizer=self.tokenizer, max_new_tokens=cfg.sample_max_new_tokens,
                early_stopping_patience=cfg.early_stopping_patience, slow_step_factor=cfg.slow_step_factor,
                counters=trainer.counters))
            self.phase = "training"
            try:
                trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            except BaseException as err:
                if model_loading.is_oom(err):
                    # The failed step's activations live in the traceback's frames: let them go first.
                    traceback.clear_frames(err.__traceback__)
                    self._checkpoint_after_oom(trainer)
                raise
            self.phase = "finishing"
            tokens_seen = int(trainer.state.num_input_tokens_seen)
            if self.tracker.stop_requested:
                last = checkpoints.last_complete(self.run_dir)
                self.emit(Stopped(step=self.tracker.step, checkpoint=str(last) if last else None))
                return self._result("stopped", checkpoint=last, tokens_seen=tokens_seen,
                                    message=f"Stopped at step {self.tracker.step} of {self.max_steps}.")
            return self._publish(trainer.model, tokens_seen)
        finally:
            if trainer is not None:
                trainer.callback_handler.callbacks.clear()
            del trainer, model
            model_loading.free_memory()

    def _publish(self, model, tokens_seen: int) -> RunResult:
        self.phase = "finishing"
        entry, finished = publish_adapter(model=model, tokenizer=self.tokenizer, run=self._trained_run(tokens_seen))
        self.emit(finished)
        return self._result("finished", adapter_id=entry.id, adapter_path=entry.path,
                            checkpoint=checkpoints.last_complete(self.run_dir), eval_loss=finished.eval_loss,
                            tokens_seen=tokens_seen, tokens_per_second=finished.tokens_per_second,
                            peak_memory_bytes=finished.peak_memory,
                            message=f"Adapter {entry.manifest.name!r} is in the library.")

    def _publish_trained(self, model, final: Path) -> RunResult:
        """Publish a run whose last checkpoint is its final step, from that checkpoint, without training."""
        load_adapter_weights(model, final)
        step = step_of(final) or 0
        self.tracker.step = step
        for event in self.run_dir.events():  # what the killed process knew of its last steps
            if isinstance(event, Step) and event.step <= step:
                self.tracker.last_loss = event.loss
            elif isinstance(event, Eval) and event.step <= step:
                self.tracker.last_eval = event.eval_loss
        state = checkpoints.trainer_state(final)
        return self._publish(model, int(state.get("num_input_tokens_seen") or 0))

    def _load_base(self):
        """The base for training; a quantization this machine cannot do falls back to full precision."""
        load = model_loading.load_base_for_training
        kwargs = dict(gradient_checkpointing=self.config.gradient_checkpointing,
                      pad_token_id=self.tokenizer.pad_token_id)
        try:
            return load(self.base_info.path, self.quant, self.device, **kwargs)
        except Exception as err:
            if self.quant == "none" or model_loading.is_oom(err):
                raise
            self.emit(Warning(step=0, message=(
                f"{self.quant} quantization does not work on this {self.device.kind} ({type(err).__name__}: "
                f"{str(err)[:160]}); training with unquantized weights instead, which needs more memory.")))
            self.quant = "none"
        return load(self.base_info.path, self.quant, self.device, **kwargs)

    def _checkpoint_after_oom(self, trainer) -> None:
        """Keep the steps done since the last checkpoint: the weights and optimizer are those of the last
        completed step (the failed step's partial gradients are dropped), so that step is saved before
        the retry or the failure."""
        step = trainer.state.global_step
        last = checkpoints.last_complete(self.run_dir)
        if step == 0 or (last is not None and step_of(last) == step):
            return
        trainer.model.zero_grad(set_to_none=True)
        model_loading.free_memory()
        try:
            trainer.save_checkpoint_now()
            log.info("Run %s: checkpointed step %d after running out of memory", self.run_id, step)
        except Exception as err:  # noqa: BLE001 - out of memory again while saving: the last checkpoint stands
            log.warning("Could not checkpoint step %d after running out of memory: %s", step, err)
            checkpoints.remove_incomplete(self.run_dir)

    def _trained_run(self, tokens_seen: int) -> TrainedRun:
        """What publishing needs, frozen: publish never reaches into this object."""
        t = self.tracker
        return TrainedRun(
            data=self.data, run=self.run_dir, config=self.config, base=self.base_info, base_ref=self.base_ref,
            device=self.device, quant=self.quant, parent_id=self.parent.id if self.parent is not None else None,
            max_steps=self.max_steps, dataset=dataset_summary(self.config, self.prepared.report, len(self.rows),
                                                              len(self.eval_rows)),
            step=t.step, best_step=t.best_step, best_eval=t.best_eval, last_eval=t.last_eval, last_loss=t.last_loss,
            early_stopped=t.early_stopped, peak_memory=t.peak_memory, tokens_per_second=t.tokens_per_second(),
            tokens_seen=tokens_seen, duration_s=time.monotonic() - self.started)

    def _oom_hook(self, step: int) -> None:
        """Test-only: raise OOM once at the step OOM_TEST_ENV names."""
        if self.oom_at_step and step == self.oom_at_step:
            import torch

            self.oom_at_step = 0  # once
            raise torch.OutOfMemoryError(f"CUDA out of memory. (injected for testing at step {step})")

    def _restore_best(self, checkpoint: Path | None) -> None:
        """After a resume or an OOM restart, the best eval so far is the one the checkpoint recorded."""
        marker = checkpoints.read_marker(checkpoint) if checkpoint else None
        if not marker:
            return
        best_step = marker.get("best_step")
        if checkpoints.complete_at(self.run_dir, best_step) is not None:
            self.tracker.best_step, self.tracker.best_eval = best_step, marker.get("best_eval")
        self.tracker.step = step_of(checkpoint) or 0


def _validation_probes(scan, prepared, limit: int = 2) -> list[Probe]:
    """The first user questions of the validation split (chat samples only)."""
    by_source = {s.source: s for s in scan.samples}
    probes: list[Probe] = []
    for sample in prepared.validation:
        original = by_source.get(sample.source)
        if original is None or original.kind != "chat":
            continue
        users = [m.content for m in original.messages if m.role == "user"]
        if users and users[0] not in (p.prompt for p in probes):
            probes.append(Probe(users[0]))
        if len(probes) >= limit:
            break
    return probes
