"""The only package that imports PySide6 / pyqtgraph: windows, panels, and the worker bridge."""
