"""Start the desktop application: ``run_app(...)`` (called by ``ielstudio`` / ``ielstudio demo``).

Training and scoring run in a child process started with the ``spawn`` method, so a
script that calls ``run_app`` must do so under ``if __name__ == "__main__":`` (the
``ielstudio`` entry point does), and a frozen bundle must call
``multiprocessing.freeze_support()`` first.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def demo_project_path(data_dir: Path | None = None) -> Path:
    """Where the demo's project lives: the user data folder, else a temporary folder."""
    from .main_window import user_data_dir

    for base in ([data_dir] if data_dir else []) + [user_data_dir() / "projects"]:
        try:
            base.mkdir(parents=True, exist_ok=True)
            probe = base / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
            return base / "demo-nuclei.ielproj"
        except OSError:
            continue
    return Path(tempfile.mkdtemp(prefix="ielstudio-demo-")) / "demo-nuclei.ielproj"


def _fresh_demo_path(path: Path) -> Path:
    """A new demo project each run that takes a screenshot (deterministic pictures)."""
    if not path.exists():
        return path
    return Path(tempfile.mkdtemp(prefix="ielstudio-demo-")) / path.name


def train_on_start(window, demo: bool, train_steps: int | None, screenshot) -> bool:
    """Start training once the window is open? Asked for (steps, a screenshot), or a demo
    whose project has no saved model yet: running `ielstudio demo` again reopens its project
    with the model it trained (its stored proposals) instead of retraining and replacing it."""
    if train_steps is not None or screenshot:
        return True
    return bool(demo) and window.project is not None and window.checkpoint is None


def run_app(images_dir: str | Path | None = None, masks_dir: str | Path | None = None,
            project: str | Path | None = None, demo: bool = False, train_steps: int | None = None,
            screenshot: str | Path | None = None, argv: list[str] | None = None) -> int:
    """Open the main window and run the Qt event loop; returns the exit code.

    demo: open the bundled nuclei sample (resources/sample/nuclei) with its own project
    and start training (automatic budget), unless that project already has a saved model.
    train_steps: start training with at most this many steps once the dataset is open.
    screenshot: wait for the first proposals (or the end of training), save the window
    to this PNG and exit 0 (exit 1 if that fails or nothing arrives within 10 minutes).
    """
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow, freeze_startup_objects

    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv[:1])
    app.setApplicationName("IEL Studio")
    app.setOrganizationName("ielstudio")
    app.setDesktopFileName("ielstudio")
    window = MainWindow()
    freeze_startup_objects()
    state = {"code": 0, "shot": False}

    if demo:
        from ielstudio.core.paths import sample_dir

        sample = sample_dir("nuclei")
        if not (sample / "images").is_dir():
            window.report_error("Demo data missing", f"{sample} has no images/ folder")
        else:
            path = demo_project_path()
            if screenshot:
                path = _fresh_demo_path(path)
            window.open_folders(sample / "images", sample / "masks", project_path=path)
    elif project:
        window.open_project(project)
    elif images_dir and masks_dir:
        window.open_folders(images_dir, masks_dir)

    def take_screenshot(*_):
        if state["shot"]:
            return
        state["shot"] = True

        def grab():
            app.processEvents()
            out = Path(screenshot)
            out.parent.mkdir(parents=True, exist_ok=True)
            ok = window.grab().save(str(out))
            if not ok:
                print(f"could not save the screenshot to {out}", file=sys.stderr)
                state["code"] = 1
            window.confirm_close_during_training = lambda: True
            window.close()
            app.quit()

        # let the overlays and the IEL maps of the new proposals draw first
        QTimer.singleShot(300 if not window.iel_panel.busy() else 1500, grab)

    if screenshot:
        window.reviewsApplied.connect(take_screenshot)
        window.trainingFinished.connect(take_screenshot)
        window.errorShown.connect(lambda msg: print(f"error: {msg}", file=sys.stderr))

        def give_up():
            print("no proposals arrived in time; saving the window as it is", file=sys.stderr)
            state["code"] = 1
            take_screenshot()

        QTimer.singleShot(600_000, give_up)
    if train_on_start(window, demo, train_steps, screenshot):
        # the demo trains straight away (the form's automatic budget unless train_steps)
        QTimer.singleShot(0, lambda: window.start_training(steps=train_steps) or (screenshot and take_screenshot()))

    window.show()
    code = app.exec()
    return state["code"] or int(code)
