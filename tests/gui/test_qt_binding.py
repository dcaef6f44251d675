"""The Qt binding the app runs on must not corrupt Python's reference counts.

PySide6 6.12.0 drops a reference to None on every call of a C++ method returning void. Python 3.12+
makes None immortal, so nothing happens there; on 3.11 None's count reaches zero after a few
thousand such calls and the process aborts ("none_dealloc"), which the live training charts did
within minutes. pyproject.toml keeps that release off 3.11; this test catches a binding that slips
through.
"""

from __future__ import annotations

import sys

import pytest
from PySide6 import QtCore, QtGui


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="None is immortal from Python 3.12 on")
def test_void_methods_keep_nones_reference_count() -> None:
    pen = QtGui.QPen()
    rect = QtCore.QRectF()
    pen.setWidth(1)
    before = sys.getrefcount(None)
    for width in range(200):
        pen.setWidth(width % 5)
        rect.setWidth(float(width))
    lost = before - sys.getrefcount(None)
    assert lost < 50, f"PySide6 {QtCore.__version_info__} lost {lost} references to None in 400 calls"
