"""The settings dialog (data directory, default base model, theme, torch CPU threads) and the theme itself.

Settings are UI state, so they live in QSettings; the data directory chosen here is applied at the
next start through LORA_STUDIO_HOME. The torch thread share (0 = automatic) applies at once to this
process and to training runs started from now on (studio.ml.base.threads).
"""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from studio.core.basemodels import DEFAULT_BASE_ID
from studio.core.paths import default_home

THEME_KEY = "ui/theme"
DATA_DIR_KEY = "ui/data_dir"
BASE_MODEL_KEY = "ui/default_base"
TORCH_THREADS_KEY = "compute/torch_threads"  # 0: automatic (half the cores)


_platform_look: tuple[str, QPalette] | None = None  # the style and palette the app started with


def apply_theme(app: QApplication, theme: str) -> None:
    """Fusion style with a light or dark palette; "system" is (or goes back to) the platform's look."""
    global _platform_look
    if _platform_look is None:
        _platform_look = (app.style().name(), QPalette(app.palette()))
    if theme == "system":
        app.setStyle(_platform_look[0])
        app.setPalette(_platform_look[1])
        return
    app.setStyle("Fusion")
    palette = QPalette()
    if theme == "dark":
        colors = {
            QPalette.ColorRole.Window: "#2b2b2e", QPalette.ColorRole.WindowText: "#e6e6e6",
            QPalette.ColorRole.Base: "#1f1f22", QPalette.ColorRole.AlternateBase: "#2b2b2e",
            QPalette.ColorRole.Text: "#e6e6e6", QPalette.ColorRole.Button: "#35353a",
            QPalette.ColorRole.ButtonText: "#e6e6e6", QPalette.ColorRole.Highlight: "#3d6fb4",
            QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#35353a",
            QPalette.ColorRole.ToolTipText: "#e6e6e6", QPalette.ColorRole.PlaceholderText: "#8a8a8a",
        }
        for role, color in colors.items():
            palette.setColor(role, QColor(color))
    app.setPalette(palette)


class SettingsDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = QSettings()
        self.data_dir_edit = QLineEdit(self.settings.value(DATA_DIR_KEY, "", type=str))
        self.data_dir_edit.setPlaceholderText(f"default: {default_home()}")
        self.setMinimumWidth(640)  # room for a whole path
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.data_dir_edit, 1)
        row.addWidget(browse)
        self.base_edit = QLineEdit(self.settings.value(BASE_MODEL_KEY, DEFAULT_BASE_ID, type=str))
        self.theme_combo = QComboBox()
        self.theme_combo.addItems(["system", "light", "dark"])
        self.theme_combo.setCurrentText(self.settings.value(THEME_KEY, "system", type=str))
        self.threads_spin = QSpinBox()
        self.threads_spin.setRange(0, 256)
        self.threads_spin.setSpecialValueText("auto (half the cores)")
        self.threads_spin.setValue(self.settings.value(TORCH_THREADS_KEY, 0, type=int))
        self.threads_spin.setToolTip("CPU threads torch may use in the app and in each training run. "
                                     "LORA_STUDIO_TORCH_THREADS, when set, wins.")

        form = QFormLayout(self)
        form.addRow("Data directory (next start)", row)
        form.addRow("Default base model", self.base_edit)
        form.addRow("Theme", self.theme_combo)
        form.addRow("Torch CPU threads", self.threads_spin)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Data directory")
        if folder:
            self.data_dir_edit.setText(folder)

    def accept(self) -> None:
        self.settings.setValue(DATA_DIR_KEY, self.data_dir_edit.text().strip())
        self.settings.setValue(BASE_MODEL_KEY, self.base_edit.text().strip() or DEFAULT_BASE_ID)
        self.settings.setValue(THEME_KEY, self.theme_combo.currentText())
        self.settings.setValue(TORCH_THREADS_KEY, self.threads_spin.value())
        from studio.ml.base.threads import apply_thread_share  # imports no torch

        apply_thread_share(self.threads_spin.value())
        app = QApplication.instance()
        if isinstance(app, QApplication):
            apply_theme(app, self.theme_combo.currentText())
        super().accept()
