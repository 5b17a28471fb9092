"""Freedesktop integration (Linux desktops): menu entry, icon and the `.ielproj` file type.

`install_desktop()` writes, under the user's data folder ($XDG_DATA_HOME, usually
~/.local/share), atomically and idempotently:

    applications/io.github.ielstudio.IELStudio.desktop       (Exec=<ielstudio> gui %f)
    icons/hicolor/scalable/apps/io.github.ielstudio.IELStudio.svg
    icons/hicolor/<N>x<N>/apps/io.github.ielstudio.IELStudio.png   (N = 16 ... 256)
    mime/packages/io.github.ielstudio.IELStudio.xml          (application/x-ielstudio-project, *.ielproj)

then refreshes the desktop and MIME databases when `update-desktop-database` /
`update-mime-database` exist (never fails when they do not). `uninstall_desktop()`
removes exactly those files. No Qt here: usable from the headless CLI.
The texts of the desktop entry and the MIME XML live here only; packaging/ holds
generated copies (packaging/make_icons.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ielstudio.core.imageio import atomic_write_bytes, atomic_write_text
from ielstudio.core.paths import resources_dir

APP_ID = "io.github.ielstudio.IELStudio"
MIME_TYPE = "application/x-ielstudio-project"
PROJECT_GLOB = "*.ielproj"
ICON_SIZES = (16, 32, 48, 64, 128, 256, 512)
INSTALLED_PNG_SIZES = (16, 32, 48, 64, 128, 256)  # larger sizes use the scalable SVG
SQLITE_MAGIC = "SQLite format 3"
PROJECT_MAGIC = "IELS"  # SQLite application_id at byte 68 (see core.session.APPLICATION_ID)


def desktop_entry(exec_command: str | list[str] = "ielstudio") -> str:
    """Text of the .desktop file; `exec_command` is the program (and leading args) that runs `ielstudio`."""
    argv = [exec_command] if isinstance(exec_command, str) else list(exec_command)
    exec_line = " ".join(_exec_quote(a) for a in argv) + " gui %f"
    return "\n".join([
        "[Desktop Entry]",
        "Type=Application",
        "Version=1.4",
        "Name=IEL Studio",
        "GenericName=Segmentation Mask Cleaner",
        "Comment=Clean noisy segmentation masks with networks regularised by inverse evolution layers",
        f"Exec={exec_line}",
        f"Icon={APP_ID}",
        "Terminal=false",
        "Categories=Science;ImageProcessing;MedicalSoftware;",
        f"MimeType={MIME_TYPE};",
        "Keywords=segmentation;mask;label;annotation;noise;cleaning;deep learning;",
        "StartupNotify=true",
        "",
    ])


def mime_xml() -> str:
    """shared-mime-info XML for the project file: by extension, and by content (SQLite + our application id)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<mime-info xmlns="http://www.freedesktop.org/standards/shared-mime-info">
  <mime-type type="{MIME_TYPE}">
    <comment>IEL Studio review project</comment>
    <sub-class-of type="application/vnd.sqlite3"/>
    <generic-icon name="x-office-document"/>
    <icon name="{APP_ID}"/>
    <glob pattern="{PROJECT_GLOB}"/>
    <magic priority="60">
      <match type="string" offset="0" value="{SQLITE_MAGIC}">
        <match type="string" offset="68" value="{PROJECT_MAGIC}"/>
      </match>
    </magic>
  </mime-type>
</mime-info>
"""


@dataclass
class DesktopChange:
    """What install/uninstall did: files written or removed, database tools run (name, exit code)."""

    data_home: Path
    files: list[Path] = field(default_factory=list)
    tools: list[tuple[str, int | None]] = field(default_factory=list)

    def __str__(self) -> str:
        ran = ", ".join(f"{t} ({'ok' if rc == 0 else f'exit {rc}'})" for t, rc in self.tools) or "none found"
        return f"{len(self.files)} file(s) under {self.data_home}; database updates: {ran}"


def default_data_home() -> Path:
    """$XDG_DATA_HOME, else the platform's user data folder (~/.local/share on Linux)."""
    env = os.environ.get("XDG_DATA_HOME")
    if env and os.path.isabs(env):
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir())


def launcher_command() -> list[str]:
    """How the desktop should start this installation: bundle binary, `ielstudio` script, or python -m."""
    if getattr(sys, "frozen", False):
        return [str(Path(sys.executable).resolve())]
    beside = Path(sys.executable).parent / "ielstudio"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("ielstudio")
    if found:
        return [str(Path(found).resolve())]
    return [str(Path(sys.executable)), "-m", "ielstudio"]


def _paths(data_home: Path) -> dict[str, Path]:
    icons = data_home / "icons" / "hicolor"
    out = {
        "desktop": data_home / "applications" / f"{APP_ID}.desktop",
        "mime": data_home / "mime" / "packages" / f"{APP_ID}.xml",
        "svg": icons / "scalable" / "apps" / f"{APP_ID}.svg",
    }
    for n in INSTALLED_PNG_SIZES:
        out[f"png{n}"] = icons / f"{n}x{n}" / "apps" / f"{APP_ID}.png"
    return out


def _icon_pngs() -> dict[int, bytes]:
    """The bundled 256 px icon and area-averaged smaller copies, as PNG bytes."""
    src = resources_dir() / "icons" / "ielstudio-256.png"
    img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(f"{src}: icon missing from the installation")
    out = {}
    for n in INSTALLED_PNG_SIZES:
        small = img if n == img.shape[0] else cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(small))
        out[n] = buf.tobytes()
    return out


def install_desktop(data_home: str | Path | None = None,
                    exec_command: str | list[str] | None = None) -> DesktopChange:
    """Install the menu entry, icons and MIME type for the current user; safe to run again."""
    home = Path(data_home) if data_home is not None else default_data_home()
    paths = _paths(home)
    change = DesktopChange(home)
    atomic_write_text(paths["desktop"], desktop_entry(exec_command or launcher_command()))
    atomic_write_text(paths["mime"], mime_xml())
    atomic_write_bytes(paths["svg"], (resources_dir() / "icons" / "ielstudio.svg").read_bytes())
    for n, data in _icon_pngs().items():
        atomic_write_bytes(paths[f"png{n}"], data)
    change.files = list(paths.values())
    _touch(home / "icons" / "hicolor")  # icon caches compare the theme folder's mtime
    change.tools = _refresh_databases(home)
    return change


def uninstall_desktop(data_home: str | Path | None = None) -> DesktopChange:
    """Remove what `install_desktop` wrote (nothing else); safe to run again."""
    home = Path(data_home) if data_home is not None else default_data_home()
    change = DesktopChange(home)
    for p in _paths(home).values():
        if p.exists():
            p.unlink()
            change.files.append(p)
    if (home / "icons" / "hicolor").is_dir():
        _touch(home / "icons" / "hicolor")
    change.tools = _refresh_databases(home)
    return change


def _touch(folder: Path) -> None:
    try:
        os.utime(folder)
    except OSError:
        pass


def _refresh_databases(home: Path) -> list[tuple[str, int | None]]:
    """Run the freedesktop cache tools that exist; a missing or failing tool is reported, never raised."""
    ran = []
    for tool, folder in (("update-mime-database", home / "mime"),
                         ("update-desktop-database", home / "applications")):
        exe = shutil.which(tool)
        if exe is None or not folder.is_dir():
            continue
        try:
            rc = subprocess.run([exe, str(folder)], capture_output=True, timeout=60).returncode
        except (OSError, subprocess.SubprocessError):
            rc = None
        ran.append((tool, rc))
    return ran


_EXEC_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def _exec_quote(arg: str) -> str:
    """Quote one Exec argument per the Desktop Entry spec (then escape for the .desktop string value)."""
    arg = arg.replace("%", "%%")
    if any(c in _EXEC_RESERVED for c in arg):
        arg = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
    return arg.replace("\\", "\\\\")
