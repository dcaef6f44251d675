"""The Blend panel: pick adapters of one base and their weights, a method, preview the blend, save it.

The form is checked live with studio.core.blend_checks (no torch: adapter headers only), so a
refusal and the methods that would work show before anything loads. Preview and Save run a
studio.ml.blend.BlendSession in a worker: the base and parents are loaded once and kept while the
chosen adapters stay the same, the blend is redone only when the recipe changed. Cancel is
cooperative (checked between stages). Knows nothing about how peft blends or how the library
stores adapters.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.core.blend_checks import (
    DEFAULT_DENSITY,
    DENSITY_METHODS,
    METHOD_HELP,
    METHODS,
    RANDOM_METHODS,
    SVD_METHODS,
    AdapterFacts,
    BlendPlan,
    BlendRecipe,
    Cancelled,
    StageProgress,
    check_blend,
    read_adapter_facts,
    suitable_methods,
)
from studio.core.errors import StudioError
from studio.core.library import AdapterLibrary
from studio.core.paths import DataDir
from studio.gui.error_dialog import show_error
from studio.gui.workers import start_job

DEFAULT_PROMPT = "What is the capital of France?"
COLUMNS = ["Adapter", "Weight", "Rank", "Targets", "Made by"]
OK_STYLE, BAD_STYLE = "color: #1a7f37", "color: #b42318"


@dataclass(frozen=True)
class BlendSpec:
    """What the form asks for: enough to tell whether the blend in memory is still current."""

    adapters: tuple[str, ...]
    weights: tuple[float, ...]
    method: str
    density: float | None
    rank: int | None
    seed: int

    def options(self) -> dict[str, Any]:
        return {"density": self.density, "rank": self.rank, "seed": self.seed}


@dataclass(frozen=True)
class BlendOutcome:
    """What a preview or save job hands back to the GUI thread."""

    spec: BlendSpec
    result_rank: int
    exact: bool
    seconds: float
    answer: str | None = None
    saved_id: str | None = None
    saved_name: str | None = None


def _label(text: str = "", style: str = "") -> QLabel:
    """A word-wrapped, top-aligned label (the panel sizes wrapped labels itself, see _fit_labels)."""
    label = QLabel(text, wordWrap=True, styleSheet=style)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
    return label


def _layout(layout, *items):
    """Fill a box layout: widgets, layouts, (item, stretch) pairs, or an int for a stretch."""
    for item in items:
        item, stretch = item if isinstance(item, tuple) else (item, 0)
        if isinstance(item, int):
            layout.addStretch(item)
        elif isinstance(item, QWidget):
            layout.addWidget(item, stretch)
        else:
            layout.addLayout(item, stretch)
    return layout


def _load_library(library: AdapterLibrary) -> tuple[list, dict[str, AdapterFacts | str]]:
    """Runs in a worker: the entries, and each one's blend facts or why they cannot be read."""
    entries, facts = library.list(), {}
    for e in entries:
        try:
            facts[e.id] = read_adapter_facts(e.path, e.manifest, ref=e.id)
        except StudioError as err:
            facts[e.id] = str(err)
    return entries, facts


class BlendWork:
    """The BlendSession the panel's workers share (one job at a time) and its cooperative stop flag.

    Plain Python, no Qt: `run` executes in a worker, everything else on the GUI thread while idle."""

    def __init__(self, library: AdapterLibrary, data: DataDir) -> None:
        self.library, self.data = library, data
        self.session = None  # a studio.ml.blend.BlendSession
        self.blended: BlendSpec | None = None  # the recipe of the blend held in the session
        self.stop = threading.Event()

    def run(self, emit, spec: BlendSpec, prompt: str | None, save: tuple[str, list[str]] | None) -> BlendOutcome:
        """(Re)load the session if the parents changed, blend if the recipe changed, then ask / save."""
        from studio.ml.blend import BlendSession

        def report(low: float, high: float):
            return lambda p: emit(StageProgress(p.stage, low + (high - low) * p.fraction, p.message))

        if self.session is not None and tuple(self.session.adapters) != spec.adapters:
            self.close()
        if self.session is None:
            self.session = BlendSession(self.library, list(spec.adapters), data=self.data,
                                        progress=report(0.0, 0.5), should_stop=self.stop.is_set)
        session = self.session
        if self.blended != spec or session.result is None:
            self.blended = None
            session.progress = report(0.5, 0.85)
            session.blend(spec.weights, spec.method, **spec.options())
            self.blended = spec
        plan = session.result.plan
        outcome = BlendOutcome(spec=spec, result_rank=plan.result_rank, exact=plan.exact,
                               seconds=session.result.seconds)
        if prompt is not None:
            emit(StageProgress("preview", 0.9, "Asking the blend…"))
            outcome = replace(outcome, answer=session.preview(prompt))
        if self.stop.is_set():
            raise Cancelled("Stopped.", hint="Nothing was saved.")
        if save is not None:
            session.progress = report(0.9, 1.0)
            entry = session.save(save[0], tags=save[1])
            outcome = replace(outcome, saved_id=entry.id, saved_name=entry.name)
        return outcome

    def close(self) -> None:
        """Let go of the loaded model (only while no job runs)."""
        session, self.session, self.blended = self.session, None, None
        if session is not None:
            session.close()


class BlendPanel(QWidget):
    """Blend two or more adapters; `adapter_created(id)` after a blend is saved to the library."""

    adapter_created = Signal(str)
    refreshed = Signal(int)  # after the adapter list reloads, with the count

    def __init__(self, data: DataDir, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data = data
        self.library = AdapterLibrary(data)
        self.entries: dict[str, Any] = {}
        self.facts: dict[str, AdapterFacts | str] = {}  # id -> facts, or why they could not be read
        self.plan: BlendPlan | None = None
        self.work = BlendWork(self.library, data)
        self._jobs = 0
        self._closing = False
        self._pending: dict[str, float] | None = None
        self._auto_name = ""
        self.last_error = None  # the last error box, for tests and screenshots

        self.base_combo = QComboBox()
        self.base_combo.currentIndexChanged.connect(self._filter_base)
        refresh_button = QPushButton("Refresh")
        refresh_button.clicked.connect(self.refresh)
        self.remake_button = QPushButton("Remake from recipe")
        self.remake_button.setToolTip("Load the selected blend's recipe (parents, weights, method) to tweak it.")
        self.remake_button.clicked.connect(lambda: self.load_recipe(self._current_id() or ""))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        for col in range(len(COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Stretch if col == 0
                                        else QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemChanged.connect(self._item_changed)
        self.table.itemSelectionChanged.connect(self._update_remake)
        tip = _label("Tick two or more adapters. A negative weight subtracts an adapter (task arithmetic).",
                     "color: gray")
        left = _layout(QVBoxLayout(), _layout(QHBoxLayout(), QLabel("Base model"), (self.base_combo, 1),
                                               refresh_button), (self.table, 1), tip,
                       _layout(QHBoxLayout(), self.remake_button, 1))

        self.method_combo = QComboBox()
        for method in METHODS:
            self.method_combo.addItem(method, method)
            self.method_combo.setItemData(self.method_combo.count() - 1, METHOD_HELP[method],
                                          Qt.ItemDataRole.ToolTipRole)
        self.method_help = _label()
        self.density_spin = QDoubleSpinBox(minimum=0.01, maximum=1.0, singleStep=0.05, value=DEFAULT_DENSITY,
                                           toolTip="Fraction of values kept by the pruning methods.")
        self.rank_spin = QSpinBox(minimum=1, maximum=4096, value=8, toolTip="Target rank of the SVD methods.")
        self.seed_spin = QSpinBox(minimum=0, maximum=2**31 - 1, value=0,
                                  toolTip="Seed of DARE's random drop mask (same seed, same blend).")
        knobs = _layout(QHBoxLayout(), QLabel("Density"), self.density_spin, QLabel("Rank"), self.rank_spin,
                        QLabel("Seed"), self.seed_spin, 1)
        self.check_label = _label()
        self.method_box = QGroupBox("Method")
        _layout(QVBoxLayout(self.method_box), self.method_combo, self.method_help, knobs, self.check_label)

        self.prompt_edit = QLineEdit(DEFAULT_PROMPT)
        self.prompt_edit.returnPressed.connect(self.preview)
        self.preview_button = QPushButton("Preview", toolTip="Blend in memory and ask the prompt (nothing "
                                                             "is saved).")
        self.preview_button.clicked.connect(self.preview)
        self.answer_view = QPlainTextEdit(readOnly=True, placeholderText="The blend's answer appears here.")
        self.answer_view.setMinimumHeight(60)
        preview_box = QGroupBox("Preview")
        _layout(QVBoxLayout(preview_box), _layout(QHBoxLayout(), (self.prompt_edit, 1), self.preview_button),
                self.answer_view)

        self.name_edit = QLineEdit(placeholderText="Name of the new adapter")
        self.name_edit.textChanged.connect(lambda _text: self._update_buttons())
        self.tags_edit = QLineEdit("blend", placeholderText="comma-separated tags")
        self.save_button = QPushButton("Save to library")
        self.save_button.clicked.connect(self.save)
        save_box = QGroupBox("Save")
        save_form = QFormLayout(save_box)
        for label, widget in (("Name", self.name_edit), ("Tags", self.tags_edit), ("", self.save_button)):
            save_form.addRow(label, widget)

        self.progress = QProgressBar(maximum=1000, textVisible=False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.status_label = _label("Loading the library…")
        right = _layout(QVBoxLayout(), self.method_box, (preview_box, 1), save_box)
        _layout(QVBoxLayout(self), (_layout(QHBoxLayout(), (left, 5), (right, 4)), 1),
                _layout(QHBoxLayout(), (self.status_label, 3), (self.progress, 2), self.cancel_button))

        for signal in (self.method_combo.currentIndexChanged, self.density_spin.valueChanged,
                       self.rank_spin.valueChanged, self.seed_spin.valueChanged):
            signal.connect(self.update_check)
        self._method_changed()
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        self.refresh()

    # ------------------------------------------------------------------ the adapter list

    def refresh(self) -> None:
        """Reload the adapters and their blend facts (headers only) in a worker."""
        self._start(lambda emit: _load_library(self.library), self._fill)

    def _fill(self, result) -> None:
        entries, facts = result
        chosen = {**self.chosen_weights(), **(self._pending or {})}
        self.entries, self.facts = {e.id: e for e in entries}, facts
        self.table.blockSignals(True)
        self.table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            fact = facts.get(entry.id)
            item = QTableWidgetItem(entry.manifest.name)
            item.setData(Qt.ItemDataRole.UserRole, entry.id)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
            spin = QDoubleSpinBox(minimum=-10.0, maximum=10.0, singleStep=0.1, decimals=2, value=1.0)
            spin.setEnabled(False)
            spin.valueChanged.connect(self.update_check)
            self.table.setItem(row, 0, item)
            self.table.setCellWidget(row, 1, spin)
            if isinstance(fact, AdapterFacts):
                cells = [str(fact.rank), ", ".join(fact.targets), entry.manifest.source]
            else:
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled)
                item.setToolTip(str(fact))
                cells = ["?", "cannot be blended", entry.manifest.source]
            for col, text in enumerate(cells, start=2):
                self.table.setItem(row, col, QTableWidgetItem(text))
        self.table.blockSignals(False)
        bases = sorted({e.manifest.base_model or "?" for e in entries})
        current = self.base_combo.currentText()
        with QSignalBlocker(self.base_combo):
            self.base_combo.clear()
            self.base_combo.addItems(bases)
            self.base_combo.setCurrentText(current if current in bases else bases[0] if bases else "")
        self._pending = None
        self.status_label.setText(f"{len(entries)} adapters in the library." if entries else
                                  "The library is empty: train or import adapters first.")
        self._apply_weights(chosen)  # may say which chosen adapters are missing
        self._update_remake()
        self.refreshed.emit(len(entries))

    def _rows(self):
        for row in range(self.table.rowCount()):
            yield row, self.table.item(row, 0), self.table.cellWidget(row, 1)

    def _filter_base(self) -> None:
        base = self.base_combo.currentText()
        self.table.blockSignals(True)
        for row, item, spin in self._rows():
            entry = self.entries[item.data(Qt.ItemDataRole.UserRole)]
            hide = (entry.manifest.base_model or "?") != base
            self.table.setRowHidden(row, hide)
            if hide:
                item.setCheckState(Qt.CheckState.Unchecked)
                spin.setEnabled(False)
        self.table.blockSignals(False)
        self._selection_changed()

    def _item_changed(self, item: QTableWidgetItem) -> None:
        if item.column() == 0:
            self.table.cellWidget(item.row(), 1).setEnabled(item.checkState() == Qt.CheckState.Checked)
            self._selection_changed()

    def _selection_changed(self) -> None:
        chosen = self.chosen_facts()
        if chosen:
            with QSignalBlocker(self.rank_spin):
                self.rank_spin.setValue(max(f.rank for f in chosen))
        if self.name_edit.text() in ("", self._auto_name):
            self._auto_name = "blend-" + "-".join(f.name for f in chosen)[:60] if len(chosen) > 1 else ""
            self.name_edit.setText(self._auto_name)
        self.update_check()

    def chosen_weights(self) -> dict[str, float]:
        """The ticked adapters (id -> weight), in table order."""
        return {item.data(Qt.ItemDataRole.UserRole): spin.value() for row, item, spin in self._rows()
                if item.checkState() == Qt.CheckState.Checked}

    def chosen_facts(self) -> list[AdapterFacts]:
        return [f for i in self.chosen_weights() if isinstance(f := self.facts.get(i), AdapterFacts)]

    def set_parents(self, weights: dict[str, float]) -> None:
        """Tick these adapters (ids or names) with these weights, untick the others."""
        if not self.entries and self._jobs:
            self._pending = dict(weights)  # the list is still loading; applied by _fill
            return
        self._apply_weights(weights)

    def _apply_weights(self, weights: dict[str, float]) -> None:
        by_name = {e.manifest.name: i for i, e in self.entries.items()}
        wanted = {(ref if ref in self.entries else by_name.get(ref, ref)): w for ref, w in weights.items()}
        missing = [ref for ref in wanted if ref not in self.entries]
        found = [ref for ref in wanted if ref in self.entries]
        if found:
            self.base_combo.setCurrentText(self.entries[found[0]].manifest.base_model or "?")
        self._filter_base()
        self.table.blockSignals(True)
        for row, item, spin in self._rows():
            adapter_id = item.data(Qt.ItemDataRole.UserRole)
            use = adapter_id in wanted and not self.table.isRowHidden(row)
            item.setCheckState(Qt.CheckState.Checked if use else Qt.CheckState.Unchecked)
            spin.setEnabled(use)
            if use:
                with QSignalBlocker(spin):
                    spin.setValue(float(wanted[adapter_id]))
        self.table.blockSignals(False)
        self._selection_changed()
        if missing:
            self.status_label.setText("Not in the library: " + ", ".join(missing))

    def _current_id(self) -> str | None:
        row = self.table.currentRow()
        item = self.table.item(row, 0) if row >= 0 else None
        return item.data(Qt.ItemDataRole.UserRole) if item else None

    def _update_remake(self) -> None:
        entry = self.entries.get(self._current_id() or "")
        self.remake_button.setEnabled(bool(entry and entry.manifest.lineage.recipe.get("parents")))

    def load_recipe(self, adapter_id: str) -> None:
        """Fill the form from a blended adapter's recipe, to remake or tweak it."""
        entry = self.entries.get(adapter_id)
        try:
            recipe = BlendRecipe.from_dict(entry.manifest.lineage.recipe if entry else {})
        except StudioError as err:
            self.last_error = show_error(self, err)
            return
        self.method_combo.setCurrentIndex(max(0, self.method_combo.findData(recipe.method)))
        self.density_spin.setValue(recipe.density if recipe.density is not None else DEFAULT_DENSITY)
        self.seed_spin.setValue(recipe.seed)
        self.set_parents(dict(zip(recipe.parents, recipe.weights, strict=False)))
        if recipe.rank is not None:
            self.rank_spin.setValue(recipe.rank)
        self.name_edit.setText(f"{entry.manifest.name}-remake")
        self.status_label.setText(f"Loaded the recipe of {entry.manifest.name}.")

    # ------------------------------------------------------------------ the live check

    def _method_changed(self) -> None:
        method = self.method_combo.currentData()
        self.method_help.setText(METHOD_HELP[method])
        self._fit_labels()
        self.density_spin.setEnabled(method in DENSITY_METHODS)
        self.rank_spin.setEnabled(method in SVD_METHODS)
        self.seed_spin.setEnabled(method in RANDOM_METHODS)

    def spec(self) -> BlendSpec:
        method = self.method_combo.currentData()
        weights = self.chosen_weights()
        return BlendSpec(adapters=tuple(weights), weights=tuple(weights.values()), method=method,
                         density=self.density_spin.value() if method in DENSITY_METHODS else None,
                         rank=self.rank_spin.value() if method in SVD_METHODS else None,
                         seed=self.seed_spin.value() if method in RANDOM_METHODS else 0)

    def update_check(self) -> None:
        """Check the form with blend_checks (headers only) and say what the blend will be or why not."""
        spec, facts = self.spec(), self.chosen_facts()
        self.plan = None
        try:
            self.plan = check_blend(facts, spec.weights, spec.method, **spec.options())
        except StudioError as err:
            text = f"✗ {err.message}" + (f"\n{err.hint}" if err.hint else "")
            self.check_label.setStyleSheet(BAD_STYLE)
        else:
            kind = "exact weighted sum of the updates" if self.plan.exact else "an approximation"
            text = (f"✓ Can blend: rank {self.plan.result_rank}, {kind}, "
                    f"{len(self.plan.modules)} modules ({', '.join(self.plan.targets)}).")
            text += "".join(f"\n• {w}" for w in self.plan.warnings)
            self.check_label.setStyleSheet(OK_STYLE)
        if len(facts) > 1 and self.plan is None:
            fits = suitable_methods(facts)
            if fits and spec.method not in fits and "Use one of" not in text:
                text += f"\nMethods that fit these adapters: {', '.join(fits)}."
        self.check_label.setText(text)
        # An answer from an older recipe stays readable but greyed until the next preview.
        self.answer_view.setStyleSheet("color: gray" if self.work.blended not in (None, spec) else "")
        self._fit_labels()
        self._update_buttons()

    def _fit_labels(self) -> None:
        for label in (self.method_help, self.check_label):
            lines = 3 * label.fontMetrics().lineSpacing() + 4
            label.setMinimumHeight(max(lines, label.heightForWidth(max(label.width(), 320))))
        if hasattr(self, "method_box"):
            self.method_box.setMinimumHeight(self.method_box.minimumSizeHint().height())

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._fit_labels()

    def _update_buttons(self) -> None:
        idle = not self.busy()
        self.preview_button.setEnabled(idle and self.plan is not None)
        self.save_button.setEnabled(idle and self.plan is not None and bool(self.name_edit.text().strip()))
        self.cancel_button.setEnabled(not idle)
        self.progress.setVisible(not idle)

    # ------------------------------------------------------------------ jobs

    def busy(self) -> bool:
        return self._jobs > 0

    def _start(self, func, on_done) -> None:
        self._jobs += 1
        self._update_buttons()
        start_job(func, on_done=lambda r: self._finish(on_done, r), on_error=self._failed,
                  on_event=self._progress, parent=self)

    def _finish(self, on_done, result) -> None:
        self._jobs -= 1
        on_done(result)
        self._after_job()

    def _failed(self, err: BaseException, details: str) -> None:
        self._jobs -= 1
        if isinstance(err, Cancelled):
            self.status_label.setText("Cancelled. Nothing was saved.")
        else:
            self.status_label.setText(f"Failed: {getattr(err, 'message', err)}")
            self.last_error = show_error(self, err, details)
        self._after_job()

    def _after_job(self) -> None:
        if self._closing and not self.busy():
            self.work.close()
        self._update_buttons()

    def _progress(self, event) -> None:
        if isinstance(event, StageProgress):
            self.progress.setValue(int(event.fraction * 1000))
            self.status_label.setText(event.message)

    def preview(self) -> None:
        if self.plan is None or self.busy():
            return
        self._run_blend(prompt=self.prompt_edit.text().strip() or DEFAULT_PROMPT)

    def save(self) -> None:
        name = self.name_edit.text().strip()
        if self.plan is None or self.busy() or not name:
            return
        tags = [t.strip() for t in self.tags_edit.text().split(",") if t.strip()]
        self._run_blend(save=(name, tags))

    def cancel(self) -> None:
        if self.busy():
            self.work.stop.set()
            self.status_label.setText("Stopping after the current step…")

    def _run_blend(self, prompt: str | None = None, save: tuple[str, list[str]] | None = None) -> None:
        self.work.stop.clear()
        spec = self.spec()
        self.progress.setValue(0)
        self.answer_view.setPlainText("" if save is None else self.answer_view.toPlainText())
        self._start(lambda emit: self.work.run(emit, spec, prompt, save), self._blend_done)

    def _blend_done(self, outcome: BlendOutcome) -> None:
        kind = "exact" if outcome.exact else "approximate"
        done = f"Blend ready ({kind}, rank {outcome.result_rank}, {outcome.seconds:.1f} s)."
        if outcome.answer is not None:
            self.answer_view.setPlainText(outcome.answer or "(empty answer)")
        if outcome.saved_id:
            done = f"Saved {outcome.saved_name!r} to the library with its recipe."
            self.adapter_created.emit(outcome.saved_id)
            self.refresh()
        self.status_label.setText(done)
        self.update_check()

    def shutdown(self) -> None:
        """Ask running jobs to stop; the loaded model is let go once they have."""
        self._closing = True
        self.work.stop.set()
        if not self.busy():
            self.work.close()
