"""The train wizard's first page: pick a folder, see the data report, browse samples as trained.

The folder is scanned off the GUI thread (studio.core.dataset.scan_folder). The report becomes a
per-file table and totals; a sample browser renders samples through the base model's chat template
(its tokenizer is loaded in a worker) and paints the tokens that take loss green. A folder with no
usable sample keeps the page incomplete and says why.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWizardPage,
)

from studio.core.dataset import IGNORE_INDEX, ScanResult
from studio.core.paths import DataDir
from studio.core.progress import StageProgress
from studio.gui.workers import start_job

TRAINED_COLOUR = "#bfeebf"  # background of the tokens the loss is taken on
MAX_RENDERED = 200  # samples rendered for the browser; the rest are counted, not shown
FILE_COLUMNS = ["File", "Format", "Shape", "Samples", "Skipped", "Why skipped"]
SUPPORTED_TEXT = ".jsonl / .json (OpenAI messages, ShareGPT, Alpaca, prompt/completion, text), .csv / .tsv, .txt / .md"


@dataclass(frozen=True)
class RenderedSample:
    """One sample as the model will see it: text pieces, each trained on or not."""

    source: str
    segments: tuple[tuple[str, bool], ...]
    tokens: int
    trained: int
    problem: str = ""  # why it could not be rendered (it will be skipped in training)
    windows: int = 1  # prose: how many seq_len windows the document becomes (the first is shown)


def render_samples(data: DataDir, base: str, samples: list, seq_len: int = 1024,
                   limit: int = MAX_RENDERED, emit=None) -> list[RenderedSample]:
    """Worker: load the base tokenizer and render the first `limit` samples with their labels.

    `emit(text)` hears about the default model's first conversion, which this may have to do."""
    from studio.core.dataset.tokenize import ChatRenderer
    from studio.ml.base.default_model import resolve_base
    from studio.ml.base.loading import load_tokenizer

    def converting(event: StageProgress) -> None:
        if emit is not None:
            emit(f"Preparing the default model (first use only, {event.fraction or 0:.0%}): {event.message}")

    info, _ = resolve_base(data, base, converting)
    tokenizer = load_tokenizer(info.path)
    renderer = ChatRenderer(tokenizer)
    out: list[RenderedSample] = []
    for sample in samples[:limit]:
        if sample.kind == "chat":
            result = renderer.render_chat(sample)
            if isinstance(result, str):
                out.append(RenderedSample(sample.source, (), 0, 0, problem=result))
                continue
            windows = [result]
        else:
            windows = renderer.render_text(sample, seq_len)
            if not windows:
                out.append(RenderedSample(sample.source, (), 0, 0, problem="no text"))
                continue
        first = windows[0]
        out.append(RenderedSample(sample.source, _segments(tokenizer, first.input_ids, first.labels),
                                  len(first.input_ids), first.trained_tokens, windows=len(windows)))
    return out


def _segments(tokenizer, ids: list[int], labels: list[int]) -> tuple[tuple[str, bool], ...]:
    """Runs of trained / untrained tokens, each decoded as one piece of text."""
    pieces: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            text = tokenizer.decode(ids[start:i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            pieces.append((text, labels[start] != IGNORE_INDEX))
            start = i
    return tuple(pieces)


def sample_html(sample: RenderedSample) -> str:
    if sample.problem:
        return f"<p style='color:#a33'>{html.escape(sample.source)}: {html.escape(sample.problem)}</p>"
    parts = []
    for text, trained in sample.segments:
        escaped = html.escape(text)
        parts.append(f"<span style='background-color:{TRAINED_COLOUR}'>{escaped}</span>" if trained else escaped)
    return ("<pre style='white-space:pre-wrap; font-family:monospace'>" + "".join(parts) + "</pre>")


def folder_from_mime(mime) -> Path | None:
    """The first local folder among a drag's URLs."""
    for url in mime.urls() if mime.hasUrls() else []:
        path = Path(url.toLocalFile())
        if url.isLocalFile() and path.is_dir():
            return path
    return None


class DataPage(QWizardPage):
    """Page 1. `scan` holds the ScanResult once the scan is done; `rendered` the browser's samples."""

    scanned = Signal(object)  # ScanResult
    rendered_ready = Signal()

    def __init__(self, data: DataDir, base: Callable[[], str], parent=None) -> None:
        super().__init__(parent)
        self.data = data
        self.base = base  # the base model currently chosen on the settings page
        self.setTitle("Your data")
        self.setSubTitle("Pick the folder that holds your training files, or drop it onto this page. "
                         "Every file is listed with what was used and what was skipped.")
        self.setAcceptDrops(True)
        self.folder: Path | None = None
        self.scan: ScanResult | None = None
        self.rendered: list[RenderedSample] = []
        self.scanning = False
        self.rendering = False
        self._generation = 0  # ignores results of a scan or render that a newer one replaced
        self.index = 0

        self.folder_edit = QLineEdit(readOnly=True, placeholderText="Drop a folder here, or choose one…")
        self.folder_edit.setFocusPolicy(Qt.FocusPolicy.ClickFocus)  # else the page opens with the path selected
        self.choose_button = QPushButton("Choose folder…")
        self.choose_button.clicked.connect(self.ask_folder)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(self.choose_button)
        self.status = QLabel(f"Supported files: {SUPPORTED_TEXT}.", wordWrap=True)

        self.table = QTableWidget(0, len(FILE_COLUMNS))
        self.table.setHorizontalHeaderLabels(FILE_COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        for column in range(len(FILE_COLUMNS) - 1):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(FILE_COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        self.totals = QLabel(wordWrap=True)

        self.browser = QTextBrowser()
        self.browser.setMinimumHeight(120)
        self.prev_button = QPushButton("◀")
        self.next_button = QPushButton("▶")
        for button in (self.prev_button, self.next_button):
            button.setFixedWidth(36)
        self.prev_button.clicked.connect(lambda: self.show_sample(self.index - 1))
        self.next_button.clicked.connect(lambda: self.show_sample(self.index + 1))
        self.sample_label = QLabel()
        nav = QHBoxLayout()
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)
        nav.addWidget(self.sample_label, 1)
        legend = QLabel(f"<span style='background-color:{TRAINED_COLOUR}'>&nbsp;green&nbsp;</span> tokens are "
                        "trained on (the answers); the rest is context the model reads but is not taught.")
        box = QGroupBox("Samples as the model sees them")
        box_layout = QVBoxLayout(box)
        box_layout.addLayout(nav)
        box_layout.addWidget(self.browser, 1)
        box_layout.addWidget(legend)

        split = self.split = QSplitter(Qt.Orientation.Vertical)
        top = QGroupBox("Data report")
        top_layout = QVBoxLayout(top)
        top_layout.addWidget(self.table, 1)
        top_layout.addWidget(self.totals)
        split.addWidget(top)
        split.addWidget(box)
        split.setSizes([220, 260])

        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)
        self._update_nav()

    # ------------------------------------------------------------ folder

    def ask_folder(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Folder with your training files",
                                                  str(self.folder or Path.home()))
        if chosen:
            self.set_folder(Path(chosen))

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if folder_from_mime(event.mimeData()) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt's name
        folder = folder_from_mime(event.mimeData())
        if folder is not None:
            event.acceptProposedAction()
            self.set_folder(folder)

    def set_folder(self, folder: Path) -> None:
        from studio.core.dataset import scan_folder

        self.folder = Path(folder)
        self.folder_edit.setText(str(self.folder))
        self.scan, self.rendered = None, []
        self.table.setRowCount(0)
        self.totals.clear()
        self.browser.clear()
        self.scanning = True
        self._generation += 1
        generation = self._generation
        self._set_status(f"Reading {self.folder.name}…")
        self.completeChanged.emit()
        folder = self.folder
        start_job(lambda emit: scan_folder(folder), parent=self,
                  on_done=lambda scan: self._scanned(generation, scan),
                  on_error=lambda err, details: self._scan_failed(generation, err))

    def _scan_failed(self, generation: int, err: BaseException) -> None:
        if generation != self._generation:
            return
        self.scanning = False
        self._set_status(getattr(err, "message", None) or str(err), error=True)
        self.completeChanged.emit()

    def _scanned(self, generation: int, scan: ScanResult) -> None:
        if generation != self._generation:
            return
        self.scanning = False
        self.scan = scan
        self._fill_table(scan)
        if scan.samples:
            used = sum(1 for f in scan.report.files if f.used)
            self._set_status(f"{len(scan.samples)} samples from {used} file(s) are ready to train on.")
            self.render()
        else:
            self._set_status("Nothing to train on: no file in this folder gave a usable sample (see the reasons "
                             f"in the table). Supported files: {SUPPORTED_TEXT}. Add files in one of these "
                             "formats, or pick another folder.", error=True)
        self.completeChanged.emit()
        self.scanned.emit(scan)

    def _fill_table(self, scan: ScanResult) -> None:
        files = scan.report.files
        self.table.setRowCount(len(files))
        for row, f in enumerate(files):
            reasons = [f.error] if f.error else []
            reasons += [f"line {item.line}: {item.reason}" for item in f.skipped[:3]]
            if len(f.skipped) > 3:
                reasons.append(f"… and {len(f.skipped) - 3} more")
            values = [f.path, f.format, f.shape or "-", str(f.samples), str(len(f.skipped)), "; ".join(reasons)]
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                if column in (3, 4):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if not f.used:
                    item.setForeground(Qt.GlobalColor.darkRed)
                item.setToolTip("\n".join(reasons) if column == 5 and reasons else value)
                self.table.setItem(row, column, item)
        self._fit_report()
        t = scan.report.totals()
        text = (f"<b>Totals:</b> {t['files']} file(s), {t['files_used']} used, {t['files_skipped']} skipped; "
                f"<b>{t['samples']}</b> samples; {t['skipped_lines']} line(s) skipped")
        if scan.report.hidden_ignored:
            text += f"; {scan.report.hidden_ignored} hidden file(s) ignored"
        text += "".join(f"<br>⚠ {html.escape(w)}" for w in scan.report.warnings)
        self.totals.setText(text)

    def _fit_report(self) -> None:
        """Give the report the rows it has (up to half the page); the sample browser gets the rest."""
        total = sum(self.split.sizes())
        if total <= 0:  # not laid out yet
            return
        table = self.table
        needed = (table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth()
                  + sum(table.rowHeight(row) for row in range(table.rowCount()))
                  + self.totals.sizeHint().height() + 60)  # the group box's title, margins and spacing
        top = max(170, min(needed, total // 2))
        self.split.setSizes([top, total - top])

    # ------------------------------------------------------------ samples

    def render(self) -> None:
        """(Re-)render the browser's samples with the current base model's tokenizer."""
        if self.scan is None or not self.scan.samples:
            return
        self._generation += 1
        generation = self._generation
        self.rendering = True
        base = self.base()
        samples = list(self.scan.samples)
        self.sample_label.setText(f"Loading the tokenizer of {base}…")
        start_job(lambda emit: render_samples(self.data, base, samples, emit=emit), parent=self,
                  on_event=lambda text: generation == self._generation and self.sample_label.setText(text),
                  on_done=lambda rendered: self._rendered(generation, rendered),
                  on_error=lambda err, details: self._render_failed(generation, err))

    def _render_failed(self, generation: int, err: BaseException) -> None:
        if generation != self._generation:
            return
        self.rendering = False
        message = getattr(err, "message", None) or str(err)
        self.sample_label.setText("The samples cannot be shown with the base model's tokenizer.")
        self.browser.setPlainText(message)
        self.rendered_ready.emit()

    def _rendered(self, generation: int, rendered: list[RenderedSample]) -> None:
        if generation != self._generation:
            return
        self.rendering = False
        self.rendered = rendered
        self.show_sample(0)
        self.rendered_ready.emit()

    def show_sample(self, index: int) -> None:
        if not self.rendered:
            self._update_nav()
            return
        self.index = max(0, min(index, len(self.rendered) - 1))
        sample = self.rendered[self.index]
        self.browser.setHtml(sample_html(sample))
        shown = len(self.rendered)
        total = len(self.scan.samples) if self.scan else shown
        of = f"{shown}" + (f" shown of {total}" if total > shown else "")
        detail = (f"{sample.trained} of {sample.tokens} tokens trained" if not sample.problem else "will be skipped")
        if sample.windows > 1:
            detail += f"; first of {sample.windows} windows"
        self.sample_label.setText(f"Sample {self.index + 1} of {of} — {sample.source} — {detail}")
        self._update_nav()

    def _update_nav(self) -> None:
        self.prev_button.setEnabled(self.index > 0)
        self.next_button.setEnabled(self.index < len(self.rendered) - 1)

    # ------------------------------------------------------------ wizard

    def _set_status(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #a32020; font-weight: bold;" if error else "")

    def isComplete(self) -> bool:  # noqa: N802 - Qt's name
        return not self.scanning and self.scan is not None and bool(self.scan.samples)
