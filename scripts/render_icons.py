"""Render studio/resources/icons/lora-studio.svg to the PNG, ICO and ICNS files the launchers use.

Run once after changing the SVG: `python scripts/render_icons.py` (needs PySide6, no display).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

ICONS = Path(__file__).resolve().parents[1] / "studio" / "resources" / "icons"


def render(size: int) -> QImage:
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    QSvgRenderer(str(ICONS / "lora-studio.svg")).render(painter)
    painter.end()
    return image


def main() -> None:
    QGuiApplication([])
    for size in (16, 32, 48, 64, 128, 256):
        render(size).save(str(ICONS / f"lora-studio-{size}.png"))
    render(256).save(str(ICONS / "lora-studio.png"))
    render(256).save(str(ICONS / "lora-studio.ico"))
    render(256).save(str(ICONS / "lora-studio.icns"))


if __name__ == "__main__":
    main()
