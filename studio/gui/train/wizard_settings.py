"""The train wizard's second page: base model, method, preset, advanced settings and the live estimate.

Every change of the rank slider, sequence length, micro batch, targets, method or quantization
re-runs studio.core.train.estimator.estimate (pure Python, well under a millisecond) on the GUI thread and
hands it to the estimate panel (studio.gui.train.estimate_panel, the "rank dial"), with each preset's
predicted memory beside its button. The device and the list of base models are found in workers.
"""

from __future__ import annotations

import time

import psutil
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QRadioButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
    QWizardPage,
)

from studio.core.basemodels import DEFAULT_BASE_ID, DEFAULT_BASE_SHAPE
from studio.core.paths import DataDir
from studio.core.train.config import PRESET_HELP, PRESETS, TrainConfig
from studio.core.train.estimator import Estimate, EstimateRequest, estimate, format_bytes, verdict
from studio.gui.train.estimate_panel import VERDICT_COLOURS, DeviceSummary, EstimatePanel
from studio.gui.train.wizard_advanced import AdvancedSettings
from studio.gui.workers import start_job

METHODS = [  # (label, method, quant it implies or None to keep the chosen one)
    ("QLoRA: 4-bit base + LoRA (least memory)", "lora", "4bit"),
    ("LoRA: full-precision base", "lora", "none"),
    ("DoRA: weight-decomposed LoRA", "dora", None),
    ("rsLoRA: rank-stabilised scaling", "rslora", None),
]


_device_cache: DeviceSummary | None = None


def detect_device_summary(emit=None) -> DeviceSummary:
    """Worker: the training device and its memory (imports torch; cached for the session)."""
    global _device_cache
    from studio.ml.base.hardware import detect_device

    info = detect_device(probe_bnb=False)
    _device_cache = DeviceSummary(info.kind, info.name, info.total_memory_bytes)
    return _device_cache


def list_bases(data: DataDir) -> list[tuple[str, str, dict]]:
    """Worker: (ref, label, config.json) of every base model available here."""
    from studio.core.basemodels import list_base_models, read_config

    found = []
    for info in list_base_models(data):
        try:
            config = read_config(info.path)
        except Exception:  # a model that lost its config is listed by nobody
            continue
        label = info.id if info.source != "folder" else info.path.name  # info.id, the ref, is its full path
        found.append((info.id, f"{label} ({_count(info.parameters)} parameters, {info.source})", config))
    return found


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


class SettingsPage(QWizardPage):
    """Page 2. `apply_to(config)` writes the chosen settings into a TrainConfig."""

    base_changed = Signal(str)

    def __init__(self, data: DataDir, base: str, parent_adapter: str = "", parent=None) -> None:
        super().__init__(parent)
        self.data = data
        self.parent_adapter = parent_adapter
        self.setTitle("Model and settings")
        self.setSubTitle("Choose the base model, the method and a preset; drag the rank dial and watch the "
                         "estimate. Advanced settings are one click away.")
        self.device = _device_cache or DeviceSummary("cpu", "this computer (looking for a GPU…)",
                                                     int(psutil.virtual_memory().total), detected=False)
        self.configs: dict[str, dict] = {}
        self.last: Estimate | None = None
        self.last_estimate_ms = 0.0
        self._building = True

        self.base_combo = QComboBox()
        self.base_combo.setMinimumContentsLength(28)
        self._add_base(DEFAULT_BASE_ID, f"{DEFAULT_BASE_ID} (default)", self._local_config(DEFAULT_BASE_ID))
        base = self._ref(base)
        if base != DEFAULT_BASE_ID:
            self._add_base(base, base, self._local_config(base))
        self.base_combo.setCurrentIndex(self.base_combo.findData(base))
        self.base_combo.currentIndexChanged.connect(self._base_changed)
        self.method_combo = QComboBox()
        for label, method, quant in METHODS:
            self.method_combo.addItem(label, (method, quant))
        self.method_combo.currentIndexChanged.connect(self._method_changed)

        self.preset_group = QButtonGroup(self)
        self.preset_buttons: dict[str, QRadioButton] = {}
        self.preset_memory: dict[str, QLabel] = {}
        presets = QGroupBox("Preset: what should the adapter learn?")
        preset_layout = QFormLayout(presets)
        for name in PRESETS:
            button = QRadioButton(f"{name.capitalize()}: {PRESET_HELP[name]}")
            self.preset_group.addButton(button)
            self.preset_buttons[name] = button
            self.preset_memory[name] = QLabel()
            preset_layout.addRow(button, self.preset_memory[name])
            button.toggled.connect(lambda on, n=name: on and self.apply_preset(n))

        self.advanced_button = QToolButton(text="Advanced settings", checkable=True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_button.toggled.connect(self._toggle_advanced)
        self.advanced = AdvancedSettings()
        self.advanced.setVisible(False)
        self.advanced.estimate_inputs_changed.connect(self.update_estimate)

        left = QWidget()
        form = QFormLayout()
        form.addRow("Base model:", self.base_combo)
        form.addRow("Method:", self.method_combo)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addLayout(form)
        if parent_adapter:
            left_layout.addWidget(QLabel(f"<b>Continuing adapter {parent_adapter}</b>: its rank and target "
                                         "layers are kept.", wordWrap=True))
        left_layout.addWidget(presets)
        left_layout.addWidget(self.advanced_button)
        left_layout.addWidget(self.advanced)
        left_layout.addStretch(1)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(left)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        layout = QHBoxLayout(self)
        layout.addWidget(scroll, 1)
        self.estimate_panel = EstimatePanel()
        # The page keeps the rank slider and box in step with each other and with alpha.
        self.rank_slider, self.rank_spin = self.estimate_panel.rank_slider, self.estimate_panel.rank_spin
        self.rank_slider.valueChanged.connect(self._rank_moved)
        self.rank_spin.valueChanged.connect(self._rank_typed)
        self.params_label, self.memory_bar = self.estimate_panel.params_label, self.estimate_panel.memory_bar
        self.verdict_label = self.estimate_panel.verdict_label
        layout.addWidget(self.estimate_panel)

        self._building = False
        self.preset_buttons["task"].setChecked(True)
        self._lock_to_parent()
        self.update_estimate()
        if _device_cache is None:
            start_job(detect_device_summary, on_done=self._device_found, parent=self)
        start_job(lambda emit: list_bases(self.data), on_done=self._bases_found, parent=self)

    # ------------------------------------------------------------ base models and device

    def _add_base(self, ref: str, label: str, config: dict | None) -> None:
        if self.base_combo.findData(ref) < 0:
            self.base_combo.addItem(label, ref)
        if config:
            self.configs[ref] = config

    def _ref(self, base: str) -> str:
        """The id a base is recorded by (a folder inside models/ is its studio id), as list_bases lists it."""
        from studio.core.basemodels import locate_base

        found = locate_base(self.data, base, hf_cache=False)  # on the GUI thread: the cheap places only
        return found.id if found is not None else base

    def _local_config(self, ref: str) -> dict | None:
        from studio.core.basemodels import locate_base, read_config

        found = locate_base(self.data, ref, hf_cache=False)
        if found is not None:
            try:
                return read_config(found.path)
            except Exception:
                return None
        return dict(DEFAULT_BASE_SHAPE) if ref == DEFAULT_BASE_ID else None

    def _bases_found(self, bases: list[tuple[str, str, dict]]) -> None:
        current = self.base()
        self.base_combo.blockSignals(True)
        for ref, label, config in bases:
            index = self.base_combo.findData(ref)
            if index >= 0:
                self.base_combo.setItemText(index, label + (" (default)" if ref == DEFAULT_BASE_ID else ""))
                self.configs[ref] = config
            else:
                self._add_base(ref, label, config)
        self.base_combo.setCurrentIndex(max(0, self.base_combo.findData(current)))
        self.base_combo.blockSignals(False)
        self.update_estimate()

    def _device_found(self, device: DeviceSummary) -> None:
        self.device = device
        self.update_estimate()

    def base(self) -> str:
        return self.base_combo.currentData() or DEFAULT_BASE_ID

    def _base_changed(self) -> None:
        self.update_estimate()
        self.base_changed.emit(self.base())

    # ------------------------------------------------------------ choices

    def _method_changed(self) -> None:
        _, quant = self.method_combo.currentData()
        if quant is not None:
            self.advanced.quant.setCurrentIndex(self.advanced.quant.findData(quant))
        self.update_estimate()

    def apply_preset(self, name: str) -> None:
        values = PRESETS[name]
        self._building = True
        self.advanced.dropout.setValue(values["dropout"])
        self.advanced.learning_rate.setValue(values["learning_rate"])
        self.advanced.epochs.setValue(values["epochs"])
        self.advanced.targets.setCurrentText(values["targets"])
        if not self.parent_adapter:
            self.rank_spin.setValue(values["rank"])
            self.advanced.alpha.setValue(values["alpha"])
            self.advanced.alpha_follows.setChecked(values["alpha"] == 2 * values["rank"])
        self._building = False
        self.update_estimate()

    def preset(self) -> str:
        return next((name for name, button in self.preset_buttons.items() if button.isChecked()), "")

    def _lock_to_parent(self) -> None:
        if not self.parent_adapter:
            return
        from studio.core.library.store import AdapterLibrary

        try:
            manifest = AdapterLibrary(self.data).get(self.parent_adapter).manifest
        except Exception:  # the wizard still opens; the engine reports a missing parent
            return
        if manifest.rank:
            self.rank_spin.setValue(manifest.rank)
        if manifest.target_modules:
            self.advanced.targets.setCurrentText(",".join(manifest.target_modules))
        if manifest.alpha:
            self.advanced.alpha_follows.setChecked(False)
            self.advanced.alpha.setValue(manifest.alpha)
        if manifest.base_model:
            self._add_base(manifest.base_model, manifest.base_model, self._local_config(manifest.base_model))
            self.base_combo.setCurrentIndex(self.base_combo.findData(manifest.base_model))
        for widget in (self.rank_slider, self.rank_spin, self.method_combo, self.advanced.targets,
                       self.advanced.alpha, self.advanced.alpha_follows):
            widget.setEnabled(False)

    def _rank_moved(self, value: int) -> None:
        if self.rank_spin.value() != value:
            self.rank_spin.setValue(value)  # which re-estimates

    def _rank_typed(self, value: int) -> None:
        if self.rank_slider.value() != min(value, self.rank_slider.maximum()):
            self.rank_slider.blockSignals(True)
            self.rank_slider.setValue(value)
            self.rank_slider.blockSignals(False)
        if self.advanced.alpha_follows.isChecked():
            self.advanced.alpha.setValue(2.0 * value)
        self.update_estimate()

    def _toggle_advanced(self, on: bool) -> None:
        self.advanced.setVisible(on)
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    # ------------------------------------------------------------ estimate

    def _request(self, config: dict, **overrides) -> EstimateRequest:
        method, _ = self.method_combo.currentData()
        values = dict(config=config, quant=self.advanced.quant.currentData(), rank=self.rank_spin.value(),
                      alpha=self.advanced.alpha.value(), targets=self.advanced.target_value(), method=method,
                      seq_len=self.advanced.seq_len.value(), batch_size=self.advanced.micro_batch.value(),
                      gradient_checkpointing=self.advanced.gradient_checkpointing.isChecked(),
                      lora_dropout=self.advanced.dropout.value())
        values.update(overrides)
        return EstimateRequest.on_device(self.device.kind, **values)

    def update_estimate(self, *_args) -> None:
        """Re-estimate now (synchronously: it is pure arithmetic) and redraw the panel."""
        if self._building:
            return
        started = time.perf_counter()
        config = self.configs.get(self.base())
        if config is None:
            self.last = None
            self.estimate_panel.show_message("(reading the base model…)")
            self.last_estimate_ms = (time.perf_counter() - started) * 1000
            return
        try:
            est = estimate(self._request(config))
        except Exception as err:  # an unknown target module name, an odd model layout
            self.last = None
            self.estimate_panel.show_message(f"cannot estimate: {getattr(err, 'message', err)}")
            self.last_estimate_ms = (time.perf_counter() - started) * 1000
            return
        self.last = est
        total = self.device.total_bytes
        self.estimate_panel.show_estimate(est, self.device)
        for name, values in PRESETS.items():
            if self.parent_adapter:
                self.preset_memory[name].setText("")
                continue
            preset_est = estimate(self._request(config, rank=values["rank"], alpha=values["alpha"],
                                                targets=values["targets"], lora_dropout=values["dropout"]))
            preset_ruling = verdict(preset_est, total)
            self.preset_memory[name].setText(
                f"<span style='color:{VERDICT_COLOURS[preset_ruling]}'>~{format_bytes(preset_est.predicted_peak_bytes)}"
                f" ({preset_ruling})</span>")
        self.last_estimate_ms = (time.perf_counter() - started) * 1000

    # ------------------------------------------------------------ result

    def apply_to(self, config: TrainConfig) -> TrainConfig:
        method, _ = self.method_combo.currentData()
        return self.advanced.apply_to(config).replace(
            base=self.base(), preset=self.preset(), method=method, rank=self.rank_spin.value(),
            parent_adapter=self.parent_adapter)

    def summary(self) -> list[tuple[str, str]]:
        """(what, value) rows for the review page."""
        rows = [("Base model", self.base()), ("Method", self.method_combo.currentText()),
                ("Base weights", self.advanced.quant.currentText()), ("Preset", self.preset() or "custom"),
                ("Rank / alpha", f"{self.rank_spin.value()} / {self.advanced.alpha.value():g}"),
                ("Target layers", self.advanced.targets.currentText()),
                ("Learning rate", f"{self.advanced.learning_rate.value():g} ({self.advanced.schedule.currentText()})"),
                ("Length", self.advanced.length_text()), ("Batch", self.advanced.batch_text()),
                ("Device", self.advanced.device_combo.currentText()),
                ("Early stopping", self.advanced.early_stopping_text()),
                ("Probe prompts", f"{len(self.advanced.prompts())} of yours" if self.advanced.prompts()
                 else "the first validation questions")]
        if self.parent_adapter:
            rows.insert(0, ("Continues", self.parent_adapter))
        if self.last is not None:
            rows.append(("Predicted peak memory", f"{format_bytes(self.last.predicted_peak_bytes)} "
                                                  f"({verdict(self.last, self.device.total_bytes)} on {self.device.name})"))
            rows.append(("Trainable parameters", f"{self.last.trainable_params:,} "
                                                 f"({self.last.trainable_percent:.2f} %)"))
        return rows
