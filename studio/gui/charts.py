"""Live training charts: loss (raw, smoothed, eval points), learning rate, memory, tokens/s.

Curves are created once; incoming figures are appended to plain lists and the plots are redrawn by
a ~10 Hz timer, so a fast stream of events never floods the GUI thread (pyqtgraph's
scrollingPlots pattern, with clip-to-view and peak downsampling for long runs). Knows nothing
about where the figures come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QGridLayout, QWidget

SMOOTHING = 0.9  # exponential moving average factor for the smoothed loss line
REDRAW_MS = 100


@dataclass
class Series:
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)

    def append(self, x: float, y: float) -> None:
        self.x.append(x)
        self.y.append(y)

    def clear(self) -> None:
        self.x.clear()
        self.y.clear()


def _plot(title: str, y_label: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(title=title)
    plot.setLabel("bottom", "step")
    plot.setLabel("left", y_label)
    plot.showGrid(x=True, y=True, alpha=0.25)
    plot.setClipToView(True)
    plot.setDownsampling(auto=True, mode="peak")
    plot.addLegend(offset=(-10, 10))
    return plot


class TrainingCharts(QWidget):
    """Four live plots; feed them with `add_step`, `add_eval`, `add_memory`, then they redraw themselves."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss = Series()
        self.smoothed = Series()
        self.eval_loss = Series()
        self.learning_rate = Series()
        self.tokens_per_second = Series()
        self.memory_used = Series()
        self.memory_peak = Series()
        self.memory_total: float | None = None
        self._ema: float | None = None
        self._dirty = False

        self.loss_plot = _plot("Loss", "loss")
        self.loss_curve = self.loss_plot.plot(name="train", pen=pg.mkPen((120, 160, 220), width=1))
        self.smooth_curve = self.loss_plot.plot(name="smoothed", pen=pg.mkPen((30, 90, 200), width=2))
        self.eval_curve = self.loss_plot.plot(name="eval", pen=None, symbol="o", symbolSize=8,
                                              symbolBrush=(230, 120, 30))
        self.lr_plot = _plot("Learning rate", "lr")
        self.lr_curve = self.lr_plot.plot(pen=pg.mkPen((60, 160, 90), width=2))
        self.memory_plot = _plot("Memory", "GB")
        self.memory_curve = self.memory_plot.plot(name="used", pen=pg.mkPen((150, 80, 190), width=2))
        self.peak_curve = self.memory_plot.plot(name="peak", pen=pg.mkPen((200, 60, 60), width=1,
                                                                         style=pg.QtCore.Qt.PenStyle.DashLine))
        self.total_line = pg.InfiniteLine(angle=0, pen=pg.mkPen((120, 120, 120), width=1))
        self.total_line.setVisible(False)
        self.memory_plot.addItem(self.total_line)
        self.speed_plot = _plot("Throughput", "tokens/s")
        self.speed_curve = self.speed_plot.plot(pen=pg.mkPen((200, 140, 30), width=2))

        grid = QGridLayout(self)
        grid.addWidget(self.loss_plot, 0, 0)
        grid.addWidget(self.lr_plot, 0, 1)
        grid.addWidget(self.memory_plot, 1, 0)
        grid.addWidget(self.speed_plot, 1, 1)

        self.timer = QTimer(self, interval=REDRAW_MS)
        self.timer.timeout.connect(self.redraw)
        self.timer.start()

    def reset(self) -> None:
        for series in (self.loss, self.smoothed, self.eval_loss, self.learning_rate, self.tokens_per_second,
                       self.memory_used, self.memory_peak):
            series.clear()
        self._ema = None
        self._dirty = True

    def add_step(self, step: int, loss: float | None, learning_rate: float | None,
                 tokens_per_second: float | None) -> None:
        if loss is not None:
            self.loss.append(step, loss)
            self._ema = loss if self._ema is None else SMOOTHING * self._ema + (1 - SMOOTHING) * loss
            self.smoothed.append(step, self._ema)
        if learning_rate is not None:
            self.learning_rate.append(step, learning_rate)
        if tokens_per_second is not None:
            self.tokens_per_second.append(step, tokens_per_second)
        self._dirty = True

    def add_eval(self, step: int, eval_loss: float) -> None:
        self.eval_loss.append(step, eval_loss)
        self._dirty = True

    def add_memory(self, step: int, used_bytes: float, peak_bytes: float | None, total_bytes: float | None) -> None:
        self.memory_used.append(step, used_bytes / 2**30)
        if peak_bytes is not None:
            self.memory_peak.append(step, peak_bytes / 2**30)
        if total_bytes:
            self.memory_total = total_bytes / 2**30
        self._dirty = True

    def redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.loss_curve.setData(self.loss.x, self.loss.y)
        self.smooth_curve.setData(self.smoothed.x, self.smoothed.y)
        self.eval_curve.setData(self.eval_loss.x, self.eval_loss.y)
        self.lr_curve.setData(self.learning_rate.x, self.learning_rate.y)
        self.speed_curve.setData(self.tokens_per_second.x, self.tokens_per_second.y)
        self.memory_curve.setData(self.memory_used.x, self.memory_used.y)
        self.peak_curve.setData(self.memory_peak.x, self.memory_peak.y)
        if self.memory_total:
            self.total_line.setValue(self.memory_total)
            self.total_line.setVisible(True)
