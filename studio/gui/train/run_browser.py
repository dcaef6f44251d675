"""The run browser: past training runs, their loss curves overlaid, a settings diff, resume.

studio.core.train.runs.list_runs reads the runs in a worker (interrupted, running elsewhere, finished...).
An interrupted, stopped or failed run can be resumed from its last checkpoint. The list is re-read
after every notice of the app's ChangeNotifier about runs; a checkpoint saved as an adapter is announced.
The widget lists runs, overlays the selected runs' smoothed loss, diffs two runs' settings and
asks the panel to resume one; InterruptedRunBanner offers the newest interrupted run at start.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.core.changes import Changes
from studio.core.paths import DataDir
from studio.core.train import checkpoints
from studio.core.train.run_dir import step_of
from studio.core.train.runs import RunSummary, config_diff, list_runs
from studio.gui.changes import ChangeNotifier, Reload
from studio.gui.train.charts import LossOverlay
from studio.gui.workers import start_job

log = logging.getLogger(__name__)

STATUS_COLOURS = {"finished": "#2f7d32", "stopped": "#8a6d00", "failed": "#b3261e", "interrupted": "#c05800",
                  "running": "#1f5fbf"}
COLUMNS = ["Run", "Started", "Status", "Steps", "Final loss", "Eval loss", "Base"]


class RunBrowser(QWidget):
    """Lists the runs; `resume_requested(run_id)` asks the panel to continue one."""

    resume_requested = Signal(str)
    loaded = Signal()

    def __init__(self, data: DataDir, changes: ChangeNotifier, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data, self.changes = data, changes
        self.runs: list[RunSummary] | None = None  # None until the first listing arrives
        self._active_run: str | None = None  # the run the panel is training now
        self.reload = Reload(self, lambda: list_runs(self.data), self._listed, self._list_failed)
        self._saving = False  # a checkpoint is being saved as an adapter

        self.table = QTreeWidget()
        self.table.setHeaderLabels(COLUMNS)
        self.table.setRootIsDecorated(False)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setSortingEnabled(False)
        self.table.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.resume_button = QPushButton("Resume run")
        self.resume_button.setEnabled(False)
        self.resume_button.clicked.connect(self._resume)
        self.save_checkpoint_button = QPushButton("Save a checkpoint as adapter…", enabled=False,
                                                  toolTip="Add one of the run's kept checkpoints to the library, "
                                                          "when you prefer it to the best one.")
        self.save_checkpoint_button.clicked.connect(self.save_checkpoint)
        self.last_error = None  # the last error box, for tests
        self.hint = QLabel("Select runs to overlay their loss; select two to compare their settings.")
        self.hint.setStyleSheet("color: #555;")
        buttons = QHBoxLayout()
        buttons.addWidget(self.hint, 1)
        buttons.addWidget(self.save_checkpoint_button)
        buttons.addWidget(self.resume_button)

        self.overlay = LossOverlay()
        self.diff = QTableWidget(0, 3)
        self.diff.setHorizontalHeaderLabels(["Setting", "Run A", "Run B"])
        self.diff.verticalHeader().setVisible(False)
        self.diff.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.diff.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.diff_label = QLabel("Settings diff: select two runs.")

        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.overlay)
        diff_box = QWidget()
        diff_layout = QVBoxLayout(diff_box)
        diff_layout.setContentsMargins(0, 0, 0, 0)
        diff_layout.addWidget(self.diff_label)
        diff_layout.addWidget(self.diff, 1)
        bottom.addWidget(diff_box)
        bottom.setSizes([500, 400])
        split = QSplitter(Qt.Orientation.Vertical)
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.table, 1)
        top_layout.addLayout(buttons)
        split.addWidget(top)
        split.addWidget(bottom)
        split.setSizes([200, 500])  # the chart and the diff matter more than empty rows
        layout = QVBoxLayout(self)
        layout.addWidget(split)
        changes.changed.connect(self._changed)

    # ------------------------------------------------------------ listing

    def busy(self) -> bool:
        return self.reload.running

    def refresh(self) -> None:
        self.reload.start()

    def _changed(self, changes: Changes) -> None:
        if changes.runs:
            self.refresh()

    def _list_failed(self, err: BaseException, details: str) -> None:
        log.warning("Listing the runs failed: %s", err)

    def _listed(self, runs: list[RunSummary]) -> None:
        selected = set(self.selected_ids())
        self.runs = runs
        self.table.clear()
        for run in runs:
            status = "running" if run.run_id == self.active_run else run.status
            steps = f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)
            values = [run.name, run.started, status, steps, _loss(run.final_loss), _loss(run.best_eval),
                      str(run.config.get("base", ""))]
            item = QTreeWidgetItem(values)
            item.setData(0, Qt.ItemDataRole.UserRole, run.run_id)
            item.setForeground(2, QColor(STATUS_COLOURS.get(status, "#000")))
            item.setToolTip(0, run.run_id)
            if run.message:
                item.setToolTip(2, run.message)
            self.table.addTopLevelItem(item)
            item.setSelected(run.run_id in selected)
        self._selection_changed()
        self.loaded.emit()

    @property
    def active_run(self) -> str | None:
        return self._active_run

    @active_run.setter
    def active_run(self, run_id: str | None) -> None:
        """The panel starts or ends a run: mark its row and keep Resume off the run that trains."""
        self._active_run = run_id
        for index in range(self.table.topLevelItemCount()):
            item = self.table.topLevelItem(index)
            run = self.run(item.data(0, Qt.ItemDataRole.UserRole))
            if run is not None:
                status = "running" if run.run_id == run_id else run.status
                item.setText(2, status)
                item.setForeground(2, QColor(STATUS_COLOURS.get(status, "#000")))
        self._update_resume()

    def interrupted(self) -> list[RunSummary]:
        """Runs that ended without a final event (not the one running now)."""
        return [r for r in self.runs or [] if r.status == "interrupted" and r.run_id != self.active_run]

    # ------------------------------------------------------------ selection

    def selected_ids(self) -> list[str]:
        return [item.data(0, Qt.ItemDataRole.UserRole) for item in self.table.selectedItems()]

    def select(self, run_ids: list[str]) -> None:
        for index in range(self.table.topLevelItemCount()):
            item = self.table.topLevelItem(index)
            item.setSelected(item.data(0, Qt.ItemDataRole.UserRole) in run_ids)

    def run(self, run_id: str) -> RunSummary | None:
        return next((r for r in self.runs or [] if r.run_id == run_id), None)

    def _selection_changed(self) -> None:
        chosen = [r for r in (self.run(i) for i in self.selected_ids()) if r is not None]
        self.overlay.show_runs([(label, r.steps, r.losses) for label, r in zip(_labels(chosen), chosen, strict=True)])
        one = chosen[0] if len(chosen) == 1 else None
        self._update_resume()
        if len(chosen) == 2:
            rows = config_diff(chosen[0].config, chosen[1].config)
            self.diff_label.setText(f"Settings diff: A = {chosen[0].name}, B = {chosen[1].name} "
                                    f"({len(rows)} setting(s) differ)")
        else:
            rows = config_diff(chosen[0].config, {}, everything=True) if one else []
            rows = [(k, a, "") for k, a, _ in rows]
            self.diff_label.setText(f"Settings of {one.name}" if one else "Settings diff: select two runs.")
        self.diff.setRowCount(len(rows))
        for row, values in enumerate(rows):
            for column, value in enumerate(values):
                self.diff.setItem(row, column, QTableWidgetItem(value))

    def _update_resume(self) -> None:
        ids = self.selected_ids()
        one = self.run(ids[0]) if len(ids) == 1 else None
        self.resume_button.setEnabled(one is not None and one.resumable and one.run_id != self._active_run)
        self.save_checkpoint_button.setEnabled(one is not None and one.run_id != self._active_run
                                               and one.status != "running" and not self._saving)

    def _resume(self) -> None:
        ids = self.selected_ids()
        if len(ids) == 1:
            self.resume_requested.emit(ids[0])

    # ------------------------------------------------------------ a checkpoint as an adapter

    def save_checkpoint(self) -> None:
        """Ask which kept checkpoint of the selected run to add to the library, then add it in a worker."""
        from studio.ml.train.checkpoint_adapter import save_checkpoint_as_adapter

        ids = self.selected_ids()
        run = self.run(ids[0]) if len(ids) == 1 else None
        if run is None:
            return
        choices: dict[str, int] = {}
        for folder in checkpoints.complete_checkpoints(run.run_dir):
            step = step_of(folder) or 0
            eval_loss = (checkpoints.read_marker(folder) or {}).get("eval_loss")
            best = " (the best so far)" if eval_loss is not None else ""
            choices[f"step {step}{best}"] = step
        if not choices:
            self.hint.setText(f"{run.name} kept no complete checkpoint.")
            return
        labels = list(choices)
        label, ok = QInputDialog.getItem(self, "Save a checkpoint as an adapter",
                                         f"Checkpoints {run.name} kept (the library has its best one if it "
                                         "finished):", labels, len(labels) - 1, False)
        if not ok:
            return
        step = choices[label]
        self._saving = True
        self._update_resume()
        self.hint.setText(f"Saving step {step} of {run.name}…")
        start_job(lambda emit: save_checkpoint_as_adapter(self.data, run.run_id, step),
                  on_done=self._checkpoint_saved, on_error=self._checkpoint_failed, parent=self)

    def _checkpoint_saved(self, entry) -> None:
        self._saving = False
        self.hint.setText(f"Saved as {entry.name!r} in the library.")
        self._update_resume()
        self.changes.announce(Changes(adapters_added={entry.id}))

    def _checkpoint_failed(self, err: BaseException, details: str) -> None:
        from studio.gui.error_dialog import show_error

        self._saving = False
        self.hint.setText(f"Could not save the checkpoint: {getattr(err, 'message', err)}")
        self._update_resume()
        self.last_error = show_error(self, err, details)


def _labels(runs: list[RunSummary]) -> list[str]:
    """Legend labels: name and start time, or the run id where two runs would read the same."""
    labels = [f"{r.name} ({r.started or r.run_id})" for r in runs]
    return [f"{r.name} ({r.run_id})" if labels.count(label) > 1 else label for label, r in zip(labels, runs, strict=True)]


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


class InterruptedRunBanner(QWidget):
    """A strip above the Train panel naming the newest interrupted run, with a button to resume it."""

    resume_requested = Signal(str)  # run id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text = QLabel(wordWrap=True)
        self.text.setStyleSheet("background: #fff4d6; border: 1px solid #e0c070; padding: 6px;")
        self.resume_button = QPushButton("Resume it")
        self.resume_button.clicked.connect(lambda: self.run_id and self.resume_requested.emit(self.run_id))
        row = QHBoxLayout(self)
        row.addWidget(self.text, 1)
        row.addWidget(self.resume_button)
        self.run_id = ""
        self.setVisible(False)

    def show_runs(self, interrupted: list[RunSummary]) -> None:
        """Show the first of `interrupted` (newest first), or hide when the list is empty."""
        if not interrupted:
            self.run_id = ""
            self.setVisible(False)
            return
        latest = interrupted[0]
        more = f" ({len(interrupted) - 1} more in the Runs tab)" if len(interrupted) > 1 else ""
        self.text.setText(f"A training run did not finish (the app was closed or crashed): <b>{latest.name}</b> "
                          f"at step {latest.step} of {latest.max_steps or '?'}{more}.")
        self.run_id = latest.run_id
        self.setVisible(True)
