"""The dashboard's table of sample answers: what the model answers to the probe prompts, step by step.

One row per studio.core.train.events.Sample, with the answer's text wrapped to the column width, so the
user watches the answers change as the run trains.
"""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtWidgets import QHeaderView, QStyledItemDelegate, QTreeWidget, QTreeWidgetItem

from studio.core.train import events as ev

PROMPT_COLUMN_WIDTH = 170  # the prompt repeats; the answer is what changes


class WrappingDelegate(QStyledItemDelegate):
    """Rows as tall as their wrapped text: QTreeView's word wrap alone keeps one elided line."""

    def sizeHint(self, option, index) -> QSize:  # noqa: N802 - Qt's name
        width = max(20, self.parent().header().sectionSize(index.column()) - 10)
        text = str(index.data() or "")
        bounds = option.fontMetrics.boundingRect(QRect(0, 0, width, 1_000_000), Qt.TextFlag.TextWordWrap, text)
        return QSize(width, bounds.height() + 4)


class SampleAnswers(QTreeWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setHeaderLabels(["Step", "Prompt", "Answer"])
        self.setRootIsDecorated(False)
        self.setWordWrap(True)
        self.setItemDelegate(WrappingDelegate(self))
        header = self.header()
        header.sectionResized.connect(lambda *_: self.doItemsLayout())
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(1, PROMPT_COLUMN_WIDTH)
        header.setStretchLastSection(True)

    def add_sample(self, event: ev.Sample, scroll: bool = True) -> None:
        answer = event.completion.strip()
        item = QTreeWidgetItem([str(event.step), event.prompt, answer or "(empty answer)"])
        if not answer:  # an untrained model often ends its turn at once; say so, not a blank cell
            item.setForeground(2, Qt.GlobalColor.gray)
        item.setToolTip(1, event.prompt)
        item.setToolTip(2, event.completion)
        self.addTopLevelItem(item)
        if scroll:
            self.scrollToItem(item)
