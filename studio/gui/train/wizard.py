"""The train-from-folder wizard: data (page 1), model and settings (page 2), review and start (page 3).

`TrainWizard(data, folder=..., base=..., parent_adapter=...)` collects a TrainConfig (the adapter's
tags included); the caller reads `config()` once it is accepted (the Train panel starts the run). The pages live
in wizard_data (folder, report, sample browser) and wizard_settings (base, method, preset, advanced
settings, live estimate).
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QTextBrowser,
    QVBoxLayout,
    QWizard,
    QWizardPage,
)

from studio.core.basemodels import DEFAULT_BASE_ID
from studio.core.paths import DataDir
from studio.core.train.config import TrainConfig
from studio.gui.settings_dialog import BASE_MODEL_KEY
from studio.gui.train.wizard_data import DataPage
from studio.gui.train.wizard_settings import SettingsPage

LAST_FOLDER_KEY = "train/last_folder"


class ReviewPage(QWizardPage):
    """Page 3: the adapter's name, tags and notes, and everything chosen before Start."""

    def __init__(self, wizard: TrainWizard) -> None:
        super().__init__()
        self.owner = wizard
        self.setTitle("Review and start")
        self.setSubTitle("Name the adapter, tag it if you like, check the settings, and start training.")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("adapter name")
        self.tags_edit = QLineEdit(placeholderText="comma-separated, e.g. support, tone")
        self.notes_edit = QPlainTextEdit(placeholderText="Notes kept with the adapter (optional)")
        self.notes_edit.setMaximumHeight(70)
        self.summary = QTextBrowser()
        form = QFormLayout()
        form.addRow("Name:", self.name_edit)
        form.addRow("Tags:", self.tags_edit)
        form.addRow("Notes:", self.notes_edit)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("<b>Summary</b>"))
        layout.addWidget(self.summary, 1)
        self.name_edit.textChanged.connect(self.completeChanged)

    def initializePage(self) -> None:  # noqa: N802 - Qt's name
        data_page = self.owner.data_page
        if not self.name_edit.text() and data_page.folder is not None:
            self.name_edit.setText(data_page.folder.name)
        rows: list[tuple[str, str]] = []
        if data_page.scan is not None:
            totals = data_page.scan.report.totals()
            rows.append(("Data", f"{data_page.folder} — {totals['samples']} samples from {totals['files_used']} "
                                 f"of {totals['files']} file(s)"))
        rows += self.owner.settings_page.summary()
        self.summary.setHtml("<table cellspacing='4'>" + "".join(
            f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>")

    def isComplete(self) -> bool:  # noqa: N802 - Qt's name
        return bool(self.name_edit.text().strip())


class TrainWizard(QWizard):
    """Folder → settings → review. Accepted means "start": read `config()`."""

    def __init__(self, data: DataDir, parent=None, *, folder: Path | str | None = None, base: str | None = None,
                 parent_adapter: str = "") -> None:
        super().__init__(parent)
        self.data = data
        self.setWindowTitle("Train an adapter from a folder")
        self.setWizardStyle(QWizard.WizardStyle.ClassicStyle)
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage, True)
        self.setButtonText(QWizard.WizardButton.FinishButton, "Start training")
        self.resize(1060, 720)
        settings = QSettings()
        base = base or settings.value(BASE_MODEL_KEY, DEFAULT_BASE_ID, type=str) or DEFAULT_BASE_ID
        self.settings_page = SettingsPage(data, base, parent_adapter)
        self.data_page = DataPage(data, self.settings_page.base)
        self.review_page = ReviewPage(self)
        for page in (self.data_page, self.settings_page, self.review_page):
            self.addPage(page)
        self.settings_page.base_changed.connect(lambda _base: self.data_page.render())
        self.accepted.connect(self._remember_folder)
        if folder is None and not parent_adapter:
            last = settings.value(LAST_FOLDER_KEY, "", type=str)
            folder = last if last and Path(last).is_dir() else None
        if folder is not None:
            self.data_page.set_folder(Path(folder))

    def config(self) -> TrainConfig:
        """The TrainConfig the user chose (StudioError, naming the field, for a value that cannot work)."""
        review = self.review_page
        config = TrainConfig(data_folder=str(self.data_page.folder or ""),
                             adapter_name=review.name_edit.text().strip(),
                             notes=review.notes_edit.toPlainText().strip(), tags=tuple(self.tags()))
        return self.settings_page.apply_to(config)

    def tags(self) -> list[str]:
        return [t.strip() for t in self.review_page.tags_edit.text().split(",") if t.strip()]

    def _remember_folder(self) -> None:
        if self.data_page.folder is not None:
            QSettings().setValue(LAST_FOLDER_KEY, str(self.data_page.folder))
