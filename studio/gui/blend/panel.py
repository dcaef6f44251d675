"""The Blend panel: pick adapters of one base and their weights, a method, preview the blend, save it.

The widget only: the adapter table, the method knobs, the preview and save boxes, progress and
Cancel. The form is checked live (studio.gui.blend.work.describe_check, headers only, no torch), so
a refusal and the methods that would work show before anything loads. Preview and Save run
studio.gui.blend.work.BlendWork in a worker, which keeps the loaded parents while the chosen
adapters stay the same and re-blends only when the recipe changed; Cancel is cooperative. A saved
blend is announced on the app's ChangeNotifier; the adapter list re-reads itself from every notice
that touches adapters.
Imports nothing from studio.ml; BlendWork.run does, in the worker.
"""

from __future__ import annotations

from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from studio.core.blend.checks import (
    DEFAULT_DENSITY,
    METHOD_HELP,
    METHODS,
    AdapterFacts,
    BlendPlan,
)
from studio.core.changes import Changes
from studio.core.errors import StudioError
from studio.core.library.store import AdapterLibrary
from studio.core.paths import DataDir
from studio.core.progress import Cancelled, StageProgress
from studio.gui.blend.parents import ParentsTable
from studio.gui.blend.work import (
    BlendOutcome,
    BlendSpec,
    BlendWork,
    Catalog,
    auto_name,
    describe_check,
    knobs,
    parse_tags,
)
from studio.gui.changes import ChangeNotifier, Reload
from studio.gui.error_dialog import show_error
from studio.gui.workers import start_job

DEFAULT_PROMPT = "What is the capital of France?"
OK_STYLE, BAD_STYLE = "color: #1a7f37", "color: #b42318"


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


class BlendPanel(QWidget):
    """Blend two or more adapters; a blend saved to the library is announced as an adapter added."""

    refreshed = Signal(int)  # after the adapter list reloads, with the count

    def __init__(self, data: DataDir, changes: ChangeNotifier, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.data, self.changes = data, changes
        self.library = AdapterLibrary(data)
        self.reload = Reload(self, lambda: Catalog.load(self.library), self._fill, self._list_failed)
        self.plan: BlendPlan | None = None
        self.work = BlendWork(self.library, data)
        self._jobs = 0
        self._closing = False
        self._pending: dict[str, float] | None = None
        self._auto_name = ""
        self.last_error = None  # the last error box, for tests and screenshots

        self.remake_button = QPushButton("Remake from recipe", toolTip="Load the selected blend's recipe "
                                         "(parents, weights, method) to tweak it.",
                                         clicked=lambda: self.load_recipe(self.parents.current_id() or ""))
        self.parents = ParentsTable()
        self.parents.chosen_changed.connect(self._selection_changed)
        self.parents.weight_changed.connect(self.update_check)
        self.parents.current_changed.connect(self._update_remake)
        left = _layout(QVBoxLayout(), (self.parents, 1), _layout(QHBoxLayout(), self.remake_button, 1))

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
        knob_row = _layout(QHBoxLayout(), QLabel("Density"), self.density_spin, QLabel("Rank"), self.rank_spin,
                           QLabel("Seed"), self.seed_spin, 1)
        self.check_label = _label()
        self.method_box = QGroupBox("Method")
        _layout(QVBoxLayout(self.method_box), self.method_combo, self.method_help, knob_row, self.check_label)

        self.prompt_edit = QLineEdit(DEFAULT_PROMPT, returnPressed=self.preview)
        self.preview_button = QPushButton("Preview", clicked=self.preview,
                                          toolTip="Blend in memory and ask the prompt (nothing is saved).")
        self.answer_view = QPlainTextEdit(readOnly=True, placeholderText="The blend's answer appears here.")
        self.answer_view.setMinimumHeight(60)
        preview_box = QGroupBox("Preview")
        _layout(QVBoxLayout(preview_box), _layout(QHBoxLayout(), (self.prompt_edit, 1), self.preview_button),
                self.answer_view)

        self.name_edit = QLineEdit(placeholderText="Name of the new adapter",
                                   textChanged=lambda _text: self._update_buttons())
        self.tags_edit = QLineEdit("blend", placeholderText="comma-separated tags")
        self.save_button = QPushButton("Save to library", clicked=self.save)
        save_box = QGroupBox("Save")
        save_form = QFormLayout(save_box)
        for label, widget in (("Name", self.name_edit), ("Tags", self.tags_edit), ("", self.save_button)):
            save_form.addRow(label, widget)

        self.progress = QProgressBar(maximum=1000, textVisible=False)
        self.cancel_button = QPushButton("Cancel", clicked=self.cancel)
        self.status_label = _label("Loading the library…")
        right = _layout(QVBoxLayout(), self.method_box, (preview_box, 1), save_box)
        _layout(QVBoxLayout(self), (_layout(QHBoxLayout(), (left, 5), (right, 4)), 1),
                _layout(QHBoxLayout(), (self.status_label, 3), (self.progress, 2), self.cancel_button))

        for signal in (self.method_combo.currentIndexChanged, self.density_spin.valueChanged,
                       self.rank_spin.valueChanged, self.seed_spin.valueChanged):
            signal.connect(self.update_check)
        self._method_changed()
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        changes.changed.connect(self._changed)
        self.refresh()

    # ------------------------------------------------------------------ the adapter list

    def refresh(self) -> None:
        """Reload the adapters and their blend facts (headers only) in a worker."""
        self.reload.start()

    def _changed(self, changes: Changes) -> None:
        if changes.adapters:
            self.refresh()

    def _list_failed(self, err: BaseException, details: str) -> None:
        self.status_label.setText(f"Could not read the library: {getattr(err, 'message', err)}")
        self.last_error = show_error(self, err, details)

    def _fill(self, catalog: Catalog) -> None:
        keep = {**self.chosen_weights(), **(self._pending or {})}
        self._pending = None
        self.status_label.setText(catalog.summary())
        self._say_missing(self.parents.show_catalog(catalog, keep))
        self._update_remake()
        self.refreshed.emit(len(catalog.entries))

    @property
    def catalog(self) -> Catalog:
        return self.parents.catalog

    def _say_missing(self, missing: list[str]) -> None:
        if missing:
            self.status_label.setText("Not in the library: " + ", ".join(missing))

    def _selection_changed(self) -> None:
        chosen = self.chosen_facts()
        if chosen:
            with QSignalBlocker(self.rank_spin):
                self.rank_spin.setValue(max(f.rank for f in chosen))
        if self.name_edit.text() in ("", self._auto_name):
            self._auto_name = auto_name(chosen)
            self.name_edit.setText(self._auto_name)
        self.update_check()

    def chosen_weights(self) -> dict[str, float]:
        """The ticked adapters (id -> weight), in table order."""
        return self.parents.chosen_weights()

    def chosen_facts(self) -> list[AdapterFacts]:
        return self.parents.chosen_facts()

    def set_parents(self, weights: dict[str, float]) -> None:
        """Tick these adapters (ids or names) with these weights, untick the others."""
        if self.reload.running:
            self._pending = dict(weights)  # the list is being read; applied by _fill
            return
        self._say_missing(self.parents.choose(weights))

    def _update_remake(self) -> None:
        self.remake_button.setEnabled(self.catalog.has_recipe(self.parents.current_id() or ""))

    def load_recipe(self, adapter_id: str) -> None:
        """Fill the form from a blended adapter's recipe, to remake or tweak it."""
        try:
            recipe = self.catalog.recipe(adapter_id)
        except StudioError as err:
            self.last_error = show_error(self, err)
            return
        name = self.catalog.entries[adapter_id].manifest.name
        self.method_combo.setCurrentIndex(max(0, self.method_combo.findData(recipe.method)))
        self.density_spin.setValue(recipe.density if recipe.density is not None else DEFAULT_DENSITY)
        self.seed_spin.setValue(recipe.seed)
        self.set_parents(dict(zip(recipe.parents, recipe.weights, strict=False)))
        if recipe.rank is not None:
            self.rank_spin.setValue(recipe.rank)
        self.name_edit.setText(f"{name}-remake")
        self.status_label.setText(f"Loaded the recipe of {name}.")

    # ------------------------------------------------------------------ the live check

    def _method_changed(self) -> None:
        method = self.method_combo.currentData()
        self.method_help.setText(METHOD_HELP[method])
        self._fit_labels()
        for spin, used in zip((self.density_spin, self.rank_spin, self.seed_spin), knobs(method), strict=True):
            spin.setEnabled(used)

    def spec(self) -> BlendSpec:
        return BlendSpec.from_form(self.chosen_weights(), self.method_combo.currentData(),
                                   self.density_spin.value(), self.rank_spin.value(), self.seed_spin.value())

    def update_check(self) -> None:
        """Check the form (headers only) and say what the blend will be or why not."""
        spec = self.spec()
        check = describe_check(self.chosen_facts(), spec)
        self.plan = check.plan
        self.check_label.setStyleSheet(OK_STYLE if check.ok else BAD_STYLE)
        self.check_label.setText(check.text)
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
        self._run_blend(save=(name, parse_tags(self.tags_edit.text())))

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
        if outcome.answer is not None:
            self.answer_view.setPlainText(outcome.answer or "(empty answer)")
        if outcome.saved_id:
            self.changes.announce(Changes(adapters_added={outcome.saved_id}))
        self.status_label.setText(outcome.describe())
        self.update_check()

    def shutdown(self) -> None:
        """Ask running jobs to stop; the loaded model is let go once they have."""
        self._closing = True
        self.work.stop.set()
        if not self.busy():
            self.work.close()
