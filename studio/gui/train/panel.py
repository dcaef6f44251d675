"""The Train panel: the live training dashboard and the run browser.

`start_run(config)` runs studio.ml.train.run.run_training in a child process supervised by a worker
thread (studio.ml.train.child_process); its typed events come back through queued signals to
`on_event`, which appends to the charts (redrawn by their own ~10 Hz timer), the progress bar, the
sample generations and the log. Stop and Pause both ask the engine to stop at the next step
boundary, which leaves a complete checkpoint; Resume starts a new job with
`TrainConfig(resume=run_id)`. A failed run shows its reason and hint and leaves the panel usable.
A run's start and its end (with the adapter it published) are announced on the app's ChangeNotifier.
studio.ml is imported only inside the worker job, so the window opens without torch.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from studio.core.changes import Changes
from studio.core.errors import StudioError
from studio.core.paths import DataDir
from studio.core.train import events as ev
from studio.core.train.config import TrainConfig
from studio.core.train.run_dir import RunDir
from studio.gui.changes import ChangeNotifier
from studio.gui.error_dialog import show_error
from studio.gui.train.charts import TrainingCharts
from studio.gui.train.run_browser import InterruptedRunBanner, RunBrowser
from studio.gui.train.sample_answers import SampleAnswers
from studio.gui.workers import start_job

log = logging.getLogger(__name__)

SHUTDOWN_WAIT_S = 60.0  # how long closing the window waits for the run to reach a step boundary
LOG_LINES = 5000


def train_job(config: TrainConfig, data: DataDir, should_stop, done: threading.Event, emit):
    """Worker thread: supervises one run in a child process (studio.ml.train.child_process), so the run
    never holds this interpreter's GIL and a crash of the run leaves the app up. `done` is set however
    it ends (shutdown waits on it)."""
    try:
        from studio.ml.train.child_process import run_training_in_child

        return run_training_in_child(config, data, on_event=emit, should_stop=should_stop)
    finally:
        done.set()


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class TrainPanel(QWidget):
    compare_requested = Signal(str)
    run_finished = Signal(object)  # studio.ml.train.run.RunResult, after its end was announced

    def __init__(self, data: DataDir, changes: ChangeNotifier, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data, self.changes = data, changes
        self.run_id: str | None = None
        self.last_result = None
        self.error_box: QMessageBox | None = None
        self.wizard = None
        self.events_seen = 0
        self._running = False
        self._closing = False
        self._stop_flag = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._stop_mode = ""  # "stop" | "pause" once asked
        self._max_steps = 0
        self._step_log_every = 1

        self.title = QLabel("No training run yet. Start one from a folder of your files.")
        self.title.setStyleSheet("font-size: 15px; font-weight: bold;")
        self.title.setWordWrap(True)
        self.new_button = QPushButton("New run…")
        self.new_button.clicked.connect(lambda: self.start_wizard())
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip("Stop at the next step with a checkpoint; Resume continues from it.")
        self.pause_button.clicked.connect(self.pause)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("End the run at the next step (it keeps its checkpoint).")
        self.stop_button.clicked.connect(self.stop)
        self.resume_button = QPushButton("Resume")
        self.resume_button.clicked.connect(lambda: self.last_result and self.resume(self.last_result.run_id))
        self.compare_button = QPushButton("Compare with base")
        self.compare_button.clicked.connect(self._compare)
        header = QHBoxLayout()
        header.addWidget(self.title, 1)
        for button in (self.new_button, self.pause_button, self.stop_button, self.resume_button,
                       self.compare_button):
            header.addWidget(button)
        self.progress = QProgressBar(minimum=0, maximum=1, value=0, textVisible=True)
        self.progress.setFormat("idle")

        self.charts = TrainingCharts()
        self.samples = SampleAnswers()
        self.log_view = QPlainTextEdit(readOnly=True)
        self.log_view.setMaximumBlockCount(LOG_LINES)
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        side = QSplitter(Qt.Orientation.Vertical)
        for title, widget in (("Sample answers during training", self.samples), ("Log", self.log_view)):
            box = QWidget()
            box_layout = QVBoxLayout(box)
            box_layout.setContentsMargins(0, 0, 0, 0)
            box_layout.addWidget(QLabel(f"<b>{title}</b>"))
            box_layout.addWidget(widget, 1)
            side.addWidget(box)
        body = QSplitter(Qt.Orientation.Horizontal)
        body.addWidget(self.charts)
        body.addWidget(side)
        body.setStretchFactor(0, 3)
        body.setStretchFactor(1, 2)
        body.setSizes([600, 400])  # the side needs room to read the answers and the log

        dashboard = QWidget()
        dash_layout = QVBoxLayout(dashboard)
        dash_layout.addLayout(header)
        dash_layout.addWidget(self.progress)
        dash_layout.addWidget(body, 1)

        self.banner = InterruptedRunBanner()
        self.banner.resume_requested.connect(self.resume)
        self.browser = RunBrowser(data, changes)
        self.browser.resume_requested.connect(self.resume)
        self.browser.loaded.connect(self._update_banner)
        self.tabs = QTabWidget()
        self.tabs.addTab(dashboard, "Dashboard")
        self.tabs.addTab(self.browser, "Runs")
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(self.tabs, 1)
        self._update_buttons()
        self.browser.refresh()

    # ------------------------------------------------------------ panel contract

    def busy(self) -> bool:
        return self._running

    def shutdown(self, timeout_s: float = SHUTDOWN_WAIT_S) -> None:
        """Ask the run to stop at the next step and wait (up to `timeout_s`) for it to leave its checkpoint."""
        self._closing = True
        self._stop_flag.set()
        self.charts.stop()
        if self.wizard is not None:
            self.wizard.reject()
        if not self._done.wait(timeout_s):
            log.warning("The training run did not stop within %.0f s; the app closes anyway.", timeout_s)

    # ------------------------------------------------------------ starting

    def start_wizard(self, folder: Path | None = None, *, parent_adapter: str = ""):
        """Open the train-from-folder wizard; accepting it starts the run. Returns the wizard."""
        from studio.gui.train.wizard import TrainWizard

        if self.wizard is not None:
            self.wizard.raise_()
            return self.wizard
        wizard = TrainWizard(self.data, self, folder=folder, parent_adapter=parent_adapter)
        wizard.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        wizard.accepted.connect(lambda: self._start_from(wizard))
        wizard.finished.connect(lambda _code: setattr(self, "wizard", None))
        self.wizard = wizard
        wizard.show()
        return wizard

    def _start_from(self, wizard) -> None:
        try:
            config = wizard.config()
        except StudioError as err:  # a setting no widget range could rule out
            self.error_box = show_error(self, err, title="Training could not start")
            return
        self.start_run(config)

    def continue_training(self, adapter_id: str):
        """The wizard, set to train `adapter_id` further on new data (its rank and targets are kept)."""
        return self.start_wizard(parent_adapter=adapter_id)

    def start_run(self, config: TrainConfig) -> None:
        if self._running:
            self.error_box = show_error(self, StudioError("A training run is already in progress.",
                                                          hint="Stop or pause it first."))
            return
        self._stop_flag.clear()
        self._done.clear()
        self._stop_mode = ""
        self._running = True
        self.banner.show_runs([])
        self.tabs.setCurrentIndex(0)
        self._reset_dashboard()
        if config.resume:
            self.run_id = config.resume
            self._replay(RunDir.of(self.data, config.resume))
            self.title.setText(f"Resuming {config.resume}…")
        else:
            self.run_id = None
            self.title.setText(f"Preparing {config.display_name()}: reading the data and loading the model…")
        self.browser.active_run = self.run_id
        self._update_buttons()
        start_job(lambda emit: train_job(config, self.data, self._stop_flag.is_set, self._done, emit),
                  on_done=self._run_done, on_error=self._run_error, on_event=self.on_event, parent=self)

    def resume(self, run_id: str) -> None:
        """Continue a stopped, paused, failed or interrupted run from its last complete checkpoint."""
        self.start_run(TrainConfig(resume=run_id))

    def stop(self) -> None:
        if self._running:
            self._stop_mode = "stop"
            self._stop_flag.set()
            self._log("Stop requested: the run ends at the next step and keeps its checkpoint.")
            self._update_buttons()

    def pause(self) -> None:
        if self._running:
            self._stop_mode = "pause"
            self._stop_flag.set()
            self._log("Pause requested: a checkpoint is saved at the next step; Resume continues from it.")
            self._update_buttons()

    # ------------------------------------------------------------ events

    def on_event(self, event: ev.Event) -> None:
        self.events_seen += 1
        self._apply(event, live=True)

    def _apply(self, event: ev.Event, live: bool) -> None:
        """Chart the event, and log its line (the CLI's) when live; a replay only redraws the charts."""
        charts = self.charts
        if isinstance(event, ev.Step):
            charts.add_step(event.step, event.loss, event.learning_rate, event.tokens_per_second)
            self._max_steps = event.max_steps or self._max_steps
            if live:
                self._progress(event)
            if not (event.step == 1 or event.step % self._step_log_every == 0 or event.step == event.max_steps):
                return  # about 50 step lines a run
        elif isinstance(event, ev.Memory):
            charts.add_memory(event.step, event.allocated, event.peak, event.total, event.reserved)
        elif isinstance(event, ev.Eval):
            charts.add_eval(event.step, event.eval_loss)
        elif isinstance(event, ev.Sample):
            self.samples.add_sample(event, scroll=live)
            return  # the table shows it
        elif isinstance(event, ev.RunStarted):
            self._started(event, live)
        elif isinstance(event, ev.Preparing) and live:
            self._preparing(event)
        line = ev.describe_event(event)
        if line is not None:
            self._log(line, live)

    def _preparing(self, event: ev.Preparing) -> None:
        """Before the first step: a busy bar (or the stage's share when known) and the message."""
        if event.fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 100)
            self.progress.setValue(int(100 * event.fraction))
        self.progress.setFormat(event.message)
        self.title.setText(event.message)

    def _started(self, event: ev.RunStarted, live: bool) -> None:
        self._max_steps = event.max_steps
        self._step_log_every = max(1, event.max_steps // 50)
        if not live:
            return
        self.run_id = self.browser.active_run = event.run_id
        self.changes.announce(Changes(runs_started={event.run_id}))
        if event.start_step:
            self.charts.keep_before(event.start_step + 1)  # steps after the checkpoint are done again
        share = 100 * event.trainable_params / max(1, event.total_params)
        self.title.setText(f"Training on {event.device_name} ({event.quant}, {event.dtype}), "
                           f"{event.trainable_params:,} trainable parameters ({share:.2f} %)")
        self.progress.setRange(0, max(1, event.max_steps))
        self.progress.setValue(event.start_step)
        self.progress.setFormat(f"step {event.start_step} / {event.max_steps}")
        where = f" from step {event.start_step}" if event.start_step else ""
        self._log(f"run {event.run_id} started{where}: {event.train_samples} train / {event.validation_samples} "
                  f"validation samples, {event.train_rows} packed rows of {event.seq_len} tokens, micro batch "
                  f"{event.micro_batch_size} × {event.grad_accum}, {event.max_steps} steps"
                  + (f" (attempt {event.attempt})" if event.attempt > 1 else ""))

    def _progress(self, step: ev.Step) -> None:
        self.progress.setRange(0, max(1, step.max_steps))
        self.progress.setValue(step.step)
        self.progress.setFormat(f"step {step.step} / {step.max_steps} · epoch {step.epoch:.2f} · "
                                f"ETA {format_eta(step.eta_seconds)}")

    def _replay(self, run: RunDir) -> None:
        """Put a resumed run's history back on the charts (quietly: only the log's summary line)."""
        events = run.events()
        for event in events:
            self._apply(event, live=False)
        if events:
            self._log(f"{len(events)} earlier events of this run loaded")

    # ------------------------------------------------------------ endings

    def _ended(self) -> None:
        self._running = False
        self.browser.active_run = None

    def _run_done(self, result) -> None:
        self._ended()
        self.last_result = result
        if self._closing:
            return
        if result.status == "finished":
            self.title.setText(f"Finished: {result.message}")
            self.progress.setFormat(f"done: {result.step} steps")
        elif result.status == "stopped":
            if self._stop_mode == "pause":
                self.title.setText(f"Paused at step {result.step} of {result.max_steps}. Resume continues from "
                                   "the checkpoint.")
            else:
                self.title.setText(f"Stopped at step {result.step} of {result.max_steps}. The run can be "
                                   "resumed from the Runs tab.")
            word = "paused" if self._stop_mode == "pause" else "stopped"
            self.progress.setFormat(f"{word} at step {result.step} / {result.max_steps}")
        else:
            self.title.setText(f"Failed: {result.message}")
            self.progress.setFormat("failed")
            self.error_box = show_error(self, StudioError(result.message, hint=result.hint),
                                        title="Training failed")
        self._update_buttons()
        finished = result.status == "finished"
        self.changes.announce(Changes(runs_finished={result.run_id} if finished else set(),
                                      runs_stopped=set() if finished else {result.run_id},
                                      adapters_added={result.adapter_id} if finished and result.adapter_id else set()))
        self.run_finished.emit(result)

    def _run_error(self, err: BaseException, details: str) -> None:
        """run_training raised before the run began (an invalid config, an unknown run to resume)."""
        self._ended()
        if self._closing:
            return
        self.title.setText(f"Could not start: {getattr(err, 'message', None) or err}")
        self.progress.setFormat("not started")
        self._log(f"✘ {err}")
        self._update_buttons()
        # A run in the child process sends its own traceback; the worker's one only says where it was re-raised.
        self.error_box = show_error(self, err, getattr(err, "details", "") or details, title="Training could not start")

    # ------------------------------------------------------------ helpers

    def _reset_dashboard(self) -> None:
        self.charts.reset()
        self.samples.clear()
        self.log_view.clear()
        self.events_seen = 0
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("preparing…")

    def _update_buttons(self) -> None:
        running = self._running
        stopping = running and self._stop_flag.is_set()
        result = self.last_result
        self.new_button.setEnabled(not running)
        self.pause_button.setEnabled(running and not stopping)
        self.stop_button.setEnabled(running and not stopping)
        self.resume_button.setEnabled(not running and result is not None and result.status != "finished"
                                      and self._stop_mode == "pause")
        self.compare_button.setEnabled(not running and result is not None and bool(result.adapter_id))

    def _compare(self) -> None:
        if self.last_result is not None and self.last_result.adapter_id:
            self.compare_requested.emit(self.last_result.adapter_id)

    def _log(self, line: str, live: bool = True) -> None:
        if live:
            self.log_view.appendPlainText(line)


    def _update_banner(self) -> None:
        self.banner.show_runs([] if self._running else self.browser.interrupted())

