"""Live training charts: loss (raw, smoothed, eval points), learning rate, memory, tokens/s.

Curves are created once; incoming figures are appended to plain lists and the plots are redrawn by
a ~10 Hz timer, so a fast stream of events never floods the GUI thread (pyqtgraph's
scrollingPlots pattern, with clip-to-view and peak downsampling for long runs). The timer only
runs while something is dirty, and `stop()` ends it for good. `LossOverlay` draws several runs'
loss curves on one plot for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QGraphicsView, QGridLayout, QWidget

SMOOTHING = 0.9  # exponential moving average factor for the smoothed loss line
REDRAW_MS = 100
AXIS_WIDTH = 64  # px: room for the left axis's label and ticks such as "0.00012"
GIB = 2**30
# Distinct colours that read on white (matplotlib's tab10): one per run in the overlay.
RUN_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
# Legend corners (pyqtgraph offsets: negative x from the right, negative y from the bottom). Loss falls
# to the right, so its top right is empty; memory is drawn from zero, so its bottom right is.
TOP_RIGHT, BOTTOM_RIGHT = (-10, 10), (-10, -10)


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

    def keep_before(self, x: float) -> None:
        """Drop the points at or after `x` (a resumed run redoes the steps after its checkpoint)."""
        n = next((i for i, value in enumerate(self.x) if value >= x), len(self.x))
        del self.x[n:], self.y[n:]

    def __len__(self) -> int:
        return len(self.x)


def _style(plot: pg.PlotWidget, title: str, y_label: str) -> None:
    plot.setBackground("w")
    plot.setTitle(title, color="#333", size="11pt")
    plot.setLabel("bottom", "step", color="#555")
    plot.setLabel("left", y_label, color="#555")
    for side in ("left", "bottom"):
        axis = plot.getAxis(side)
        axis.enableAutoSIPrefix(False)  # "GB (x0.001)" over 651 reads worse than 0.651
        axis.setTextPen("#444")
    # No grid: pyqtgraph draws it from the axes across the whole plot, so every new point repainted
    # each plot twice over its full area; that alone was ~60% of a dashboard update (benchmarks/
    # gui_responsiveness.py). A fixed axis width keeps a new tick label from relaying out the plot.
    plot.getAxis("left").setWidth(AXIS_WIDTH)


def _legend(plot: pg.PlotWidget, corner: tuple[int, int]) -> pg.LegendItem:
    return plot.addLegend(offset=corner, brush=pg.mkBrush(255, 255, 255, 210), pen=pg.mkPen("#ccc"),
                          labelTextColor="#333")


def _plot(title: str, y_label: str, legend: tuple[int, int] | None = None) -> pg.PlotWidget:
    plot = pg.PlotWidget()
    _style(plot, title, y_label)
    plot.setClipToView(True)
    plot.setDownsampling(auto=True, mode="peak")
    plot.setMinimumSize(220, 150)
    # One full repaint per update instead of Qt working out the dirty regions of the scene.
    plot.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
    if legend:
        _legend(plot, legend)
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
        self.memory_reserved = Series()
        self.memory_peak = Series()
        self.memory_total: float | None = None  # GB
        self.memory_label = "RSS"  # "allocated" on a GPU
        self._ema: float | None = None
        self._dirty = False
        self._stopped = False

        self.loss_plot = _plot("Loss", "loss", legend=TOP_RIGHT)
        self.loss_curve = self.loss_plot.plot(name="train", pen=pg.mkPen((150, 180, 225), width=1))
        self.smooth_curve = self.loss_plot.plot(name="smoothed", pen=pg.mkPen((30, 90, 200), width=2))
        self.eval_curve = self.loss_plot.plot(name="eval", pen=None, symbol="o", symbolSize=8,
                                              symbolBrush=(230, 120, 30))
        self.lr_plot = _plot("Learning rate", "learning rate")
        self.lr_curve = self.lr_plot.plot(pen=pg.mkPen((60, 160, 90), width=2))
        self.memory_plot = _plot("Memory", "GB", legend=BOTTOM_RIGHT)
        self.memory_curve = self.memory_plot.plot(name="used", pen=pg.mkPen((150, 80, 190), width=2))
        self.reserved_curve = self.memory_plot.plot(name="reserved", pen=pg.mkPen((90, 150, 190), width=1))
        self.peak_curve = self.memory_plot.plot(name="peak", pen=pg.mkPen((200, 60, 60), width=1,
                                                                         style=Qt.PenStyle.DashLine))
        self.total_line = pg.InfiniteLine(angle=0, pen=pg.mkPen((120, 120, 120), width=1, style=Qt.PenStyle.DotLine),
                                          label="device total", labelOpts={"position": 0.1, "color": (90, 90, 90)})
        self.total_line.setVisible(False)
        self.memory_plot.addItem(self.total_line, ignoreBounds=True)
        self.speed_plot = _plot("Throughput", "tokens/s")
        self.speed_curve = self.speed_plot.plot(pen=pg.mkPen((200, 140, 30), width=2))

        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self.loss_plot, 0, 0)
        grid.addWidget(self.lr_plot, 0, 1)
        grid.addWidget(self.memory_plot, 1, 0)
        grid.addWidget(self.speed_plot, 1, 1)

        self.timer = QTimer(self, interval=REDRAW_MS)
        self.timer.timeout.connect(self.redraw)

    # ------------------------------------------------------------ feeding

    def reset(self) -> None:
        for series in self._all_series():
            series.clear()
        self._ema = None
        self.memory_total = None
        self._mark_dirty()

    def keep_before(self, step: int) -> None:
        """Forget the points from `step` on (a resume redoes them) and restart the smoothing there."""
        for series in self._all_series():
            series.keep_before(step)
        self._ema = self.smoothed.y[-1] if self.smoothed.y else None
        self._mark_dirty()

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
        self._mark_dirty()

    def add_eval(self, step: int, eval_loss: float) -> None:
        self.eval_loss.append(step, eval_loss)
        self._mark_dirty()

    def add_memory(self, step: int, used_bytes: float, peak_bytes: float | None, total_bytes: float | None,
                   reserved_bytes: float | None = None) -> None:
        self.memory_used.append(step, used_bytes / GIB)
        if reserved_bytes is not None and reserved_bytes != used_bytes:  # on a CPU both are the RSS
            self.memory_reserved.append(step, reserved_bytes / GIB)
        if peak_bytes is not None:
            self.memory_peak.append(step, peak_bytes / GIB)
        if total_bytes:
            self.memory_total = total_bytes / GIB
        self._mark_dirty()

    # ------------------------------------------------------------ drawing

    def _all_series(self) -> tuple[Series, ...]:
        return (self.loss, self.smoothed, self.eval_loss, self.learning_rate, self.tokens_per_second,
                self.memory_used, self.memory_reserved, self.memory_peak)

    def _mark_dirty(self) -> None:
        self._dirty = True
        if not self._stopped and not self.timer.isActive():
            self.timer.start()

    def stop(self) -> None:
        """Stop redrawing for good (the panel is closing); draws what is pending once."""
        self._stopped = True
        self.timer.stop()
        self.redraw()

    def redraw(self) -> None:
        if not self._dirty:
            self.timer.stop()  # idle: no timer ticks while nothing arrives
            return
        self._dirty = False
        self.loss_curve.setData(self.loss.x, self.loss.y)
        self.smooth_curve.setData(self.smoothed.x, self.smoothed.y)
        self.eval_curve.setData(self.eval_loss.x, self.eval_loss.y)
        self.lr_curve.setData(self.learning_rate.x, self.learning_rate.y)
        self.speed_curve.setData(self.tokens_per_second.x, self.tokens_per_second.y)
        self.memory_curve.setData(self.memory_used.x, self.memory_used.y)
        self.reserved_curve.setData(self.memory_reserved.x, self.memory_reserved.y)
        self.peak_curve.setData(self.memory_peak.x, self.memory_peak.y)
        self._memory_legend()
        self._memory_title()

    def _memory_legend(self) -> None:
        """Name only the memory curves that have data (a CPU reports neither reserved nor peak)."""
        legend = self.memory_plot.plotItem.legend
        for curve, series, name in ((self.reserved_curve, self.memory_reserved, "reserved"),
                                    (self.peak_curve, self.memory_peak, "peak")):
            listed = any(sample.item is curve for sample, _ in legend.items)
            if len(series) and not listed:
                legend.addItem(curve, name)
            elif not len(series) and listed:
                legend.removeItem(curve)

    def _memory_title(self) -> None:
        top = max(self.memory_peak.y + self.memory_used.y + self.memory_reserved.y or [0.0])
        if not self.memory_total:
            self.memory_plot.setTitle("Memory", color="#333", size="11pt")
            self.total_line.setVisible(False)
        else:
            peak = max(self.memory_peak.y or self.memory_used.y or [0.0])
            share = 100 * peak / self.memory_total
            self.memory_plot.setTitle(f"Memory: peak {peak:.2f} of {self.memory_total:.1f} GB ({share:.0f}%)",
                                      color="#333", size="11pt")
            self.total_line.setValue(self.memory_total)
            # The total line is drawn only when it is near the curves; far above, it would flatten them.
            self.total_line.setVisible(peak > 0.5 * self.memory_total)
            if self.total_line.isVisible():
                top = max(top, self.memory_total)
        # From zero: a few MB of drift must not look like a leak.
        if top > 0:
            self.memory_plot.setYRange(0, top * 1.1, padding=0)


class LossOverlay(pg.PlotWidget):
    """Several runs' loss curves (smoothed) on one plot, one colour each, with a legend."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        _style(self, "Loss of the selected runs (smoothed)", "loss")
        self.legend = _legend(self, TOP_RIGHT)
        self.curves: dict[str, pg.PlotDataItem] = {}

    def show_runs(self, runs: list[tuple[str, list[float], list[float]]]) -> None:
        """`runs`: (label, steps, losses) per run; replaces what was drawn."""
        self.clear()
        self.legend.clear()
        self.curves = {}
        for index, (label, steps, losses) in enumerate(runs):
            pen = pg.mkPen(RUN_COLOURS[index % len(RUN_COLOURS)], width=2)
            self.curves[label] = self.plot(steps, smooth(losses), name=label, pen=pen)


def smooth(values: list[float], factor: float = SMOOTHING) -> list[float]:
    """The exponential moving average the dashboard draws as the smoothed loss."""
    out: list[float] = []
    ema: float | None = None
    for value in values:
        ema = value if ema is None else factor * ema + (1 - factor) * value
        out.append(ema)
    return out
