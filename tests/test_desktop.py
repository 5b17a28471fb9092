"""Desktop integration: files written under a temporary XDG data home, validated, then removed."""

import configparser
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from ielstudio import desktop
from ielstudio.core.session import Project

ROOT = Path(__file__).resolve().parents[1]
APP = desktop.APP_ID


def _entry(path: Path) -> dict:
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str
    cp.read(path, encoding="utf-8")
    return dict(cp["Desktop Entry"])


def test_install_writes_entry_icons_and_mime_then_uninstall_removes_them(tmp_path):
    home = tmp_path / "share"
    result = desktop.install_desktop(home, exec_command="/opt/IEL Studio/ielstudio")
    entry = _entry(home / "applications" / f"{APP}.desktop")
    assert entry["Exec"] == '"/opt/IEL Studio/ielstudio" gui %f'
    assert entry["MimeType"] == "application/x-ielstudio-project;"
    assert entry["Icon"] == APP and entry["Type"] == "Application" and entry["Name"] == "IEL Studio"

    for n in desktop.INSTALLED_PNG_SIZES:
        png = cv2.imread(str(home / "icons" / "hicolor" / f"{n}x{n}" / "apps" / f"{APP}.png"),
                         cv2.IMREAD_UNCHANGED)
        assert png.shape == (n, n, 4)
        assert png[..., 3].max() == 255 and png[0, 0, 3] == 0  # opaque tile, transparent corner
    svg = home / "icons" / "hicolor" / "scalable" / "apps" / f"{APP}.svg"
    assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"

    mime = ET.parse(home / "mime" / "packages" / f"{APP}.xml").getroot()
    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    mt = mime.find("m:mime-type", ns)
    assert mt.get("type") == "application/x-ielstudio-project"
    assert mt.find("m:glob", ns).get("pattern") == "*.ielproj"
    assert len(result.files) == 3 + len(desktop.INSTALLED_PNG_SIZES)
    assert all(p.is_file() for p in result.files)
    if shutil.which("update-mime-database"):  # the real tool accepted our XML and compiled it
        assert ("update-mime-database", 0) in result.tools
        assert (home / "mime" / "application" / "x-ielstudio-project.xml").is_file()
        assert "*.ielproj" in (home / "mime" / "globs2").read_text()

    # idempotent: same files, same bytes
    before = {p: p.read_bytes() for p in result.files}
    again = desktop.install_desktop(home, exec_command="/opt/IEL Studio/ielstudio")
    assert {p: p.read_bytes() for p in again.files} == before

    removed = desktop.uninstall_desktop(home)
    assert sorted(removed.files) == sorted(result.files)
    assert not any(p.exists() for p in result.files)
    if shutil.which("update-mime-database"):
        assert not (home / "mime" / "application" / "x-ielstudio-project.xml").exists()
    assert desktop.uninstall_desktop(home).files == []  # second uninstall: nothing to do, no error


def test_install_without_database_tools_still_succeeds(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    result = desktop.install_desktop()  # data home from $XDG_DATA_HOME
    assert result.tools == [] and result.data_home == tmp_path / "xdg"
    assert (tmp_path / "xdg" / "applications" / f"{APP}.desktop").is_file()
    assert "database updates: none found" in str(result)
    assert len(desktop.uninstall_desktop().files) == len(result.files)


def test_exec_quoting_follows_the_desktop_entry_spec():
    assert desktop._exec_quote("/usr/bin/ielstudio") == "/usr/bin/ielstudio"
    # reserved characters -> double quotes; ", `, $, \ escaped inside, then backslashes doubled
    assert desktop._exec_quote('/a b/$x') == '"/a b/\\\\$x"'
    assert desktop._exec_quote("100%") == "100%%"
    exec_line = desktop.desktop_entry(["/venv/bin/python", "-m", "ielstudio"]).split("Exec=")[1].split("\n")[0]
    assert exec_line == "/venv/bin/python -m ielstudio gui %f"


def test_launcher_points_at_an_existing_program():
    cmd = desktop.launcher_command()
    assert Path(cmd[0]).is_file()


def test_mime_magic_matches_a_real_project_file(tmp_path):
    """The MIME magic (SQLite header + application id at byte 68) recognises a file session writes."""
    Project.create(tmp_path / "p.ielproj", tmp_path, tmp_path).close()
    head = (tmp_path / "p.ielproj").read_bytes()[:72]
    assert head.startswith(desktop.SQLITE_MAGIC.encode()) and head[68:72] == desktop.PROJECT_MAGIC.encode()


def test_packaging_copies_match_the_generated_text():
    assert (ROOT / "packaging" / f"{APP}.desktop").read_text() == desktop.desktop_entry("ielstudio")
    assert (ROOT / "packaging" / "ielstudio-mime.xml").read_text() == desktop.mime_xml()
    if shutil.which("desktop-file-validate"):
        out = subprocess.run(["desktop-file-validate", str(ROOT / "packaging" / f"{APP}.desktop")],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_icon_pngs_exist_at_every_size_and_match_the_256_runtime_icon():
    runtime = cv2.imread(str(ROOT / "resources" / "icons" / "ielstudio-256.png"), cv2.IMREAD_UNCHANGED)
    for n in desktop.ICON_SIZES:
        png = cv2.imread(str(ROOT / "packaging" / "icons" / f"{n}x{n}.png"), cv2.IMREAD_UNCHANGED)
        assert png.shape == (n, n, 4)
        # every size is the same picture: compare with the 256 px icon scaled to n
        ref = cv2.resize(_premultiplied(runtime), (n, n), interpolation=cv2.INTER_AREA if n < 256 else cv2.INTER_LINEAR)
        err = np.abs(_premultiplied(png) - ref).mean()
        assert err < (0.5 if n == 256 else 8), (n, err)
        # and the picture is not blank: tile, contour and sparkle colours differ
        assert _premultiplied(png)[..., :3].std() > 20


def _premultiplied(bgra: np.ndarray) -> np.ndarray:
    """Colour weighted by alpha (edge pixels with alpha ~0 carry arbitrary colour)."""
    f = bgra.astype(np.float32)
    f[..., :3] *= f[..., 3:] / 255.0
    return f


def test_metainfo_names_the_app_its_desktop_file_and_mime_type():
    path = ROOT / "packaging" / f"{APP}.metainfo.xml"
    root = ET.parse(path).getroot()
    assert root.findtext("id") == APP
    assert root.find("launchable").text == f"{APP}.desktop"
    assert root.find("provides/mediatype").text == desktop.MIME_TYPE
    import ielstudio

    assert root.find("releases/release").get("version") == ielstudio.__version__
    if shutil.which("appstreamcli"):
        out = subprocess.run(["appstreamcli", "validate", "--no-net", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
