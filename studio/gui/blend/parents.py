"""The Blend panel's parent picker: the adapters of one base, each with a tick box and a weight.

Shows a Catalog (studio.gui.blend.work: the library with each adapter's blend facts, headers only).
Adapters of other bases are hidden behind the base selector; an adapter whose facts could not be
read is listed greyed with the reason as its tool tip.
"""

from __future__ import annotations

from collections.abc import Iterator

from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.core.blend.checks import AdapterFacts
from studio.gui.blend.work import Catalog

COLUMNS = ["Adapter", "Weight", "Rank", "Targets", "Made by"]
WEIGHT_RANGE = (-10.0, 10.0)  # negative: subtract the adapter (task arithmetic)


class ParentsTable(QWidget):
    chosen_changed = Signal()  # which adapters are ticked
    weight_changed = Signal()  # a ticked adapter's weight
    current_changed = Signal()  # the highlighted row

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.catalog = Catalog()  # the adapter list as last loaded, with each one's blend facts
        self.base_combo = QComboBox(currentIndexChanged=self._filter_base)
        self.table = QTableWidget(0, len(COLUMNS), editTriggers=QAbstractItemView.EditTrigger.NoEditTriggers,
                                  selectionBehavior=QAbstractItemView.SelectionBehavior.SelectRows,
                                  selectionMode=QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        for col in range(len(COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Stretch if col == 0
                                        else QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemChanged.connect(self._item_changed)
        self.table.itemSelectionChanged.connect(self.current_changed)
        tip = QLabel("Tick two or more adapters. A negative weight subtracts an adapter (task arithmetic).",
                     wordWrap=True, styleSheet="color: gray")
        base_row = QHBoxLayout()
        base_row.addWidget(QLabel("Base model"))
        base_row.addWidget(self.base_combo, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(base_row)
        layout.addWidget(self.table, 1)
        layout.addWidget(tip)

    def show_catalog(self, catalog: Catalog, keep: dict[str, float]) -> list[str]:
        """List a freshly loaded catalog, ticking `keep` (id or name -> weight); returns the missing ones."""
        self.catalog = catalog
        with QSignalBlocker(self.table):
            self.table.setRowCount(len(catalog.entries))
            for row, (adapter_id, entry) in enumerate(catalog.entries.items()):
                item = QTableWidgetItem(entry.manifest.name)
                item.setData(Qt.ItemDataRole.UserRole, adapter_id)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Unchecked)
                spin = QDoubleSpinBox(minimum=WEIGHT_RANGE[0], maximum=WEIGHT_RANGE[1], singleStep=0.1, decimals=2,
                                      value=1.0)
                spin.setEnabled(False)
                spin.valueChanged.connect(self.weight_changed)
                self.table.setItem(row, 0, item)
                self.table.setCellWidget(row, 1, spin)
                if not isinstance(fact := catalog.facts.get(adapter_id), AdapterFacts):
                    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled)
                    item.setToolTip(str(fact))
                for col, text in enumerate(catalog.cells(adapter_id), start=2):
                    self.table.setItem(row, col, QTableWidgetItem(text))
        bases = catalog.bases()
        current = self.base_combo.currentText()
        with QSignalBlocker(self.base_combo):
            self.base_combo.clear()
            self.base_combo.addItems(bases)
            self.base_combo.setCurrentText(current if current in bases else bases[0] if bases else "")
        return self.choose(keep)

    def _rows(self) -> Iterator[tuple[int, QTableWidgetItem, QDoubleSpinBox]]:
        for row in range(self.table.rowCount()):
            yield row, self.table.item(row, 0), self.table.cellWidget(row, 1)

    def _filter_base(self) -> None:
        base = self.base_combo.currentText()
        with QSignalBlocker(self.table):
            for row, item, spin in self._rows():
                hide = self.catalog.base_of(item.data(Qt.ItemDataRole.UserRole)) != base
                self.table.setRowHidden(row, hide)
                if hide:
                    item.setCheckState(Qt.CheckState.Unchecked)
                    spin.setEnabled(False)
        self.chosen_changed.emit()

    def _item_changed(self, item: QTableWidgetItem) -> None:
        if item.column() == 0:
            self.table.cellWidget(item.row(), 1).setEnabled(item.checkState() == Qt.CheckState.Checked)
            self.chosen_changed.emit()

    def chosen_weights(self) -> dict[str, float]:
        """The ticked adapters (id -> weight), in table order."""
        return {item.data(Qt.ItemDataRole.UserRole): spin.value() for row, item, spin in self._rows()
                if item.checkState() == Qt.CheckState.Checked}

    def chosen_facts(self) -> list[AdapterFacts]:
        return self.catalog.usable(self.chosen_weights())

    def choose(self, weights: dict[str, float]) -> list[str]:
        """Tick these adapters (ids or names) with these weights, untick the others; returns the missing ones."""
        wanted, missing = self.catalog.resolve(weights)
        found = [ref for ref in wanted if ref in self.catalog.entries]
        if found:
            with QSignalBlocker(self.base_combo):
                self.base_combo.setCurrentText(self.catalog.base_of(found[0]))
        with QSignalBlocker(self):  # one chosen_changed at the end, not one per row
            self._filter_base()
        with QSignalBlocker(self.table):
            for row, item, spin in self._rows():
                adapter_id = item.data(Qt.ItemDataRole.UserRole)
                use = adapter_id in wanted and not self.table.isRowHidden(row)
                item.setCheckState(Qt.CheckState.Checked if use else Qt.CheckState.Unchecked)
                spin.setEnabled(use)
                if use:
                    with QSignalBlocker(spin):
                        spin.setValue(float(wanted[adapter_id]))
        self.chosen_changed.emit()
        return missing

    def current_id(self) -> str | None:
        row = self.table.currentRow()
        item = self.table.item(row, 0) if row >= 0 else None
        return item.data(Qt.ItemDataRole.UserRole) if item else None
