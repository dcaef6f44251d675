"""The train wizard's advanced settings: every TrainConfig field the presets do not pick for the user.

A two-column grid of plain fields (alpha, dropout, learning rate and schedule, length, batch,
sequence length, evaluation and checkpoint cadence, target layers, base weights, device, early
stopping, checkpoints kept, what happens to samples longer than the sequence length) and the probe
prompts the dashboard samples answers to.
`estimate_inputs_changed` fires when a field the memory estimate depends on changes; `apply_to`
writes the fields into a TrainConfig. The settings page (studio.gui.train.wizard_settings) owns the rank,
the method and the presets, and sets these fields from them.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QSpinBox,
    QWidget,
)

from studio.core.train.config import DEVICES, SCHEDULES, TrainConfig

QUANT_LABELS = {"4bit": "4-bit NF4", "8bit": "8-bit", "none": "full precision"}
NAMED_TARGETS = ("all-linear", "attention")
LONG_SAMPLE_LABELS = {"truncate": "truncate them", "drop": "leave them out"}


def _spin(low: int, high: int, value: int, special: str = "", step: int = 1) -> QSpinBox:
    box = QSpinBox(minimum=low, maximum=high, value=value, singleStep=step)
    if special:
        box.setSpecialValueText(special)  # shown at the minimum, which means "automatic" or "never"
    return box


def _dspin(low: float, high: float, value: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    return QDoubleSpinBox(minimum=low, maximum=high, value=value, singleStep=step, decimals=decimals)


class AdvancedSettings(QGroupBox):
    estimate_inputs_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.alpha = _dspin(0.5, 4096, 32, 1, 1)
        self.alpha_follows = QCheckBox("2 × rank", checked=True)
        self.alpha_follows.toggled.connect(lambda on: self.alpha.setEnabled(not on))
        self.alpha.setEnabled(False)
        self.dropout = _dspin(0, 0.9, 0.05, 0.01)
        self.learning_rate = _dspin(1e-6, 0.5, 2e-4, 1e-5, 6)
        self.schedule = QComboBox()
        self.schedule.addItems(SCHEDULES)
        self.warmup = _dspin(0, 0.5, 0.03, 0.01)
        self.epochs = _dspin(0.1, 1000, 3, 0.5, 1)
        self.max_steps = _spin(0, 10_000_000, 0, "by epochs", 10)
        self.micro_batch = _spin(1, 512, 2)
        self.grad_accum = _spin(1, 4096, 4)
        self.seq_len = _spin(16, 131_072, 1024, step=128)
        self.val_fraction = _dspin(0, 0.5, 0.1, 0.05)
        self.eval_every = _spin(0, 10_000_000, 0, "auto (~10 per run)", 10)
        self.checkpoint_every = _spin(0, 10_000_000, 0, "auto (~5 per run)", 10)
        self.sample_every = _spin(0, 10_000_000, 0, "never", 10)
        self.seed = _spin(0, 2**31 - 1, 42)
        self.targets = QComboBox(editable=True)
        self.targets.addItems(NAMED_TARGETS)
        self.targets.setToolTip("'attention' (q/k/v/o), 'all-linear' (+ the MLP), or module names separated "
                                "by commas, e.g. q_proj,v_proj")
        self.quant = QComboBox()
        for key, label in QUANT_LABELS.items():
            self.quant.addItem(label, key)
        self.gradient_checkpointing = QCheckBox("Gradient checkpointing (less memory, about 30 % slower)",
                                                checked=True)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.early_stopping = _spin(0, 1000, 0, "off")
        self.early_stopping.setToolTip("Stop after this many evaluations without a better eval loss.")
        self.keep_checkpoints = _spin(1, 1000, 2)
        self.keep_checkpoints.setToolTip("The last N complete checkpoints are kept, plus the best one; any kept "
                                         "checkpoint can be saved as an adapter from the Runs tab.")
        self.long_samples = QComboBox()
        for key, label in LONG_SAMPLE_LABELS.items():
            self.long_samples.addItem(label, key)
        self.probe_prompts = QPlainTextEdit(placeholderText="One prompt a line, answered every 'Sample answers "
                                            "every' steps. Empty: the first validation questions.")
        self.probe_prompts.setFixedHeight(3 * self.probe_prompts.fontMetrics().lineSpacing() + 12)
        self._lay_out()
        for signal in (self.seq_len.valueChanged, self.micro_batch.valueChanged, self.dropout.valueChanged,
                       self.targets.currentTextChanged, self.quant.currentIndexChanged,
                       self.gradient_checkpointing.toggled, self.alpha.valueChanged):
            signal.connect(self.estimate_inputs_changed)

    def _lay_out(self) -> None:
        grid = QGridLayout(self)
        alpha_row = QHBoxLayout()
        alpha_row.addWidget(self.alpha)
        alpha_row.addWidget(self.alpha_follows)
        fields = (("LoRA alpha:", alpha_row), ("Dropout:", self.dropout), ("Learning rate:", self.learning_rate),
                  ("Schedule:", self.schedule), ("Warmup share:", self.warmup), ("Epochs:", self.epochs),
                  ("Max steps:", self.max_steps), ("Micro batch:", self.micro_batch),
                  ("Grad. accumulation:", self.grad_accum), ("Sequence length:", self.seq_len),
                  ("Validation share:", self.val_fraction), ("Seed:", self.seed),
                  ("Evaluate every:", self.eval_every), ("Checkpoint every:", self.checkpoint_every),
                  ("Sample answers every:", self.sample_every), ("Target layers:", self.targets),
                  ("Base weights:", self.quant), ("Device:", self.device_combo),
                  ("Early stopping:", self.early_stopping), ("Keep checkpoints:", self.keep_checkpoints),
                  ("Longer than seq. length:", self.long_samples))
        half = (len(fields) + 1) // 2  # two columns of label + field keep the page short
        for index, (label, field) in enumerate(fields):
            row, column = index % half, 2 * (index // half)
            grid.addWidget(QLabel(label), row, column)
            if isinstance(field, QHBoxLayout):
                grid.addLayout(field, row, column + 1)
            else:
                grid.addWidget(field, row, column + 1)
        grid.addWidget(QLabel("Probe prompts:"), half, 0)
        grid.addWidget(self.probe_prompts, half, 1, 1, 3)
        grid.addWidget(self.gradient_checkpointing, half + 1, 0, 1, 4)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)

    def target_value(self) -> str | list[str]:
        """'attention', 'all-linear' or the module names typed (commas or semicolons between them)."""
        text = self.targets.currentText().strip()
        if text in NAMED_TARGETS:
            return text
        names = [name.strip() for name in text.replace(";", ",").split(",") if name.strip()]
        return names or "all-linear"

    def apply_to(self, config: TrainConfig) -> TrainConfig:
        return config.replace(
            quant=self.quant.currentData(), targets=self.target_value(), alpha=self.alpha.value(),
            dropout=self.dropout.value(), learning_rate=self.learning_rate.value(),
            lr_schedule=self.schedule.currentText(), warmup_ratio=self.warmup.value(), epochs=self.epochs.value(),
            max_steps=self.max_steps.value(), micro_batch_size=self.micro_batch.value(),
            grad_accum=self.grad_accum.value(), seq_len=self.seq_len.value(), val_fraction=self.val_fraction.value(),
            eval_every=self.eval_every.value(), checkpoint_every=self.checkpoint_every.value(),
            sample_every=self.sample_every.value(), seed=self.seed.value(),
            gradient_checkpointing=self.gradient_checkpointing.isChecked(), device=self.device_combo.currentText(),
            early_stopping_patience=self.early_stopping.value(), keep_checkpoints=self.keep_checkpoints.value(),
            long_samples=self.long_samples.currentData(), probe_prompts=self.prompts())

    def prompts(self) -> list[str]:
        return [line.strip() for line in self.probe_prompts.toPlainText().splitlines() if line.strip()]

    def length_text(self) -> str:
        steps = self.max_steps.value()
        return f"{steps} steps" if steps else f"{self.epochs.value():g} epochs"

    def early_stopping_text(self) -> str:
        patience = self.early_stopping.value()
        return f"after {patience} evaluations without a better eval loss" if patience else "off"

    def batch_text(self) -> str:
        return (f"{self.micro_batch.value()} × {self.grad_accum.value()} accumulation, "
                f"{self.seq_len.value()} tokens per row")
