"""Render the icon PNGs from resources/icons/ielstudio.svg and write the generated packaging files.

Run from the repository root after changing the icon or `ielstudio.desktop`:
    .venv/bin/python packaging/make_icons.py
Writes packaging/icons/<N>x<N>.png (N = 16 ... 512), resources/icons/ielstudio-256.png, and
packaging/io.github.ielstudio.IELStudio.desktop + packaging/ielstudio-mime.xml from
`ielstudio.desktop` (the single source of their text; tests/test_desktop.py checks they match).
Needs PySide6 with QtSvg (rendered offscreen).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QByteArray, QBuffer, QIODevice, QRectF, Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

from ielstudio import desktop  # noqa: E402
from ielstudio.core.imageio import atomic_write_bytes, atomic_write_text  # noqa: E402

SVG = ROOT / "resources" / "icons" / "ielstudio.svg"


def render_png(renderer: QSvgRenderer, size: int) -> bytes:
    """PNG bytes of the SVG drawn antialiased at size x size."""
    img = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    img.fill(Qt.GlobalColor.transparent)
    painter = QPainter(img)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter, QRectF(0, 0, size, size))
    painter.end()
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    img.save(buf, "PNG")
    buf.close()
    return bytes(data.data())


def main() -> int:
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 (keeps Qt alive)
    renderer = QSvgRenderer(str(SVG))
    if not renderer.isValid():
        print(f"{SVG}: not a valid SVG", file=sys.stderr)
        return 1
    for size in desktop.ICON_SIZES:
        atomic_write_bytes(ROOT / "packaging" / "icons" / f"{size}x{size}.png", render_png(renderer, size))
    atomic_write_bytes(ROOT / "resources" / "icons" / "ielstudio-256.png", render_png(renderer, 256))
    atomic_write_text(ROOT / "packaging" / f"{desktop.APP_ID}.desktop", desktop.desktop_entry("ielstudio"))
    atomic_write_text(ROOT / "packaging" / "ielstudio-mime.xml", desktop.mime_xml())
    print("wrote", ", ".join(f"{s}px" for s in desktop.ICON_SIZES), "icons and the desktop/MIME files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
