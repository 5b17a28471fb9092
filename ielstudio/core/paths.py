"""Where the application's bundled resources live (source tree, installed data or frozen bundle)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def resources_dir() -> Path:
    """The `resources/` folder: env override, PyInstaller bundle, source checkout, or installed data."""
    candidates = []
    if os.environ.get("IELSTUDIO_RESOURCES"):
        candidates.append(Path(os.environ["IELSTUDIO_RESOURCES"]))
    if getattr(sys, "_MEIPASS", None):
        candidates.append(Path(sys._MEIPASS) / "resources")
    candidates.append(Path(__file__).resolve().parents[2] / "resources")
    candidates.append(Path(sys.prefix) / "share" / "ielstudio" / "resources")
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0] if candidates else Path("resources")


def sample_dir(name: str = "nuclei") -> Path:
    """One bundled sample dataset (`images/`, `masks/`, `clean/` inside)."""
    return resources_dir() / "sample" / name
