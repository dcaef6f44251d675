"""The train wizard's "rank dial": rank slider and the live estimate of what training will cost.

Shows one studio.core.train.estimator Estimate: trainable parameters, adapter file size, and predicted
peak memory as a bar against the device's memory, coloured fits / tight / won't fit, with the
largest terms of the prediction. The settings page (studio.gui.train.wizard_settings) re-estimates on
every change and calls `show_estimate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QSlider,
    QSpinBox,
    QVBoxLayout,
)

from studio.core.train.estimator import Estimate, format_bytes, verdict

VERDICT_COLOURS = {"fits": "#3c9a3c", "tight": "#d98b1c", "won't fit": "#c83232"}
VERDICT_TEXT = {"fits": "✔ Fits", "tight": "⚠ Tight: close to the limit",
                "won't fit": "✘ Won't fit: lower seq_len, rank or batch"}
RANK_SLIDER_MAX = 256  # the spin box beside it goes further


@dataclass(frozen=True)
class DeviceSummary:
    """The device a run would train on, as far as the estimate needs to know it."""

    kind: str  # "cuda" | "mps" | "cpu"
    name: str
    total_bytes: int  # VRAM, or RAM on a CPU
    detected: bool = True

    @property
    def memory_name(self) -> str:
        return "VRAM" if self.kind == "cuda" else "RAM"


class EstimatePanel(QGroupBox):
    """The rank slider and spin box (their values are the page's to keep in step) and the estimate."""

    def __init__(self, parent=None) -> None:
        super().__init__("Estimate", parent)
        self.setFixedWidth(340)
        self.rank_slider = QSlider(Qt.Orientation.Horizontal, minimum=1, maximum=RANK_SLIDER_MAX, value=16)
        self.rank_slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.rank_slider.setTickInterval(32)
        self.rank_spin = QSpinBox(minimum=1, maximum=1024, value=16)
        rank_row = QHBoxLayout()
        rank_row.addWidget(QLabel("LoRA rank:"))
        rank_row.addWidget(self.rank_slider, 1)
        rank_row.addWidget(self.rank_spin)
        self.params_label = QLabel(wordWrap=True)
        self.size_label = QLabel()
        self.device_label = QLabel(wordWrap=True)
        self.memory_bar = QProgressBar(minimum=0, maximum=1000, textVisible=True)
        self.memory_bar.setMinimumHeight(26)
        self.verdict_label = QLabel()
        self.verdict_label.setStyleSheet("font-size: 15px; font-weight: bold;")
        self.breakdown = QLabel(wordWrap=True)
        self.breakdown.setStyleSheet("color: #555;")
        layout = QVBoxLayout(self)
        layout.addLayout(rank_row)
        form = QFormLayout()
        form.addRow("Trainable:", self.params_label)
        form.addRow("Adapter file:", self.size_label)
        layout.addLayout(form)
        layout.addWidget(QLabel("Predicted peak memory:"))
        layout.addWidget(self.memory_bar)
        layout.addWidget(self.verdict_label)
        layout.addWidget(self.device_label)
        layout.addWidget(self.breakdown)
        layout.addStretch(1)

    def show_message(self, text: str) -> None:
        """No estimate to show (the base is still being read, or it cannot be estimated): say why."""
        self.params_label.setText(text)

    def show_estimate(self, est: Estimate, device: DeviceSummary) -> None:
        total = device.total_bytes
        share = est.predicted_peak_bytes / total if total else 1.0
        ruling = verdict(est, total)
        colour = VERDICT_COLOURS[ruling]
        self.params_label.setText(f"{est.trainable_params:,} parameters, {est.trainable_percent:.2f} % of the model")
        self.size_label.setText(format_bytes(est.adapter_file_bytes))
        self.memory_bar.setValue(min(1000, int(share * 1000)))
        self.memory_bar.setFormat(f"{format_bytes(est.predicted_peak_bytes)} of {format_bytes(total)} "
                                  f"{device.memory_name} ({share:.0%})")
        self.memory_bar.setStyleSheet(f"QProgressBar::chunk {{ background-color: {colour}; }}"
                                      "QProgressBar { text-align: center; }")
        self.verdict_label.setText(VERDICT_TEXT[ruling])
        self.verdict_label.setStyleSheet(f"font-size: 15px; font-weight: bold; color: {colour};")
        self.device_label.setText(f"On {device.name} ({format_bytes(total)} {device.memory_name}"
                                  f"{'' if device.detected else ', still detecting'}).")
        largest = sorted(((k, v) for k, v in est.memory.items() if v > 0), key=lambda kv: -kv[1])[:4]
        self.breakdown.setText("Largest terms: " + ", ".join(
            f"{'CUDA context' if k == 'cuda_context' else k.replace('_', ' ')} {format_bytes(v)}" for k, v in largest))
