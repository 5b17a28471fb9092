"""Does the window stay responsive while training runs? (issue 3 quality bar)

Opens the main window offscreen on the bundled nuclei sample, starts training in
the background (with snapshots refreshing proposals, scores, overlays and the IEL
panel, exactly as a user would see it) and runs a 10 ms QTimer heartbeat in the
GUI thread. A stall is how much later than 10 ms a tick arrives. Prints a table
and, as its LAST line, ``max_stall_ms=<x> p99_stall_ms=<y>``.

Target: max < 100 ms, p99 < 30 ms on 2 CPU cores.

    python benchmarks/ui_latency.py [--steps 120] [--seconds 60] [--snapshot-every 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

HEARTBEAT_MS = 10


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120, help="training steps (default 120)")
    ap.add_argument("--seconds", type=float, default=90.0, help="stop measuring after this long")
    ap.add_argument("--snapshot-every", type=int, default=10, help="steps between proposal refreshes")
    ap.add_argument("--sample", default="nuclei", help="bundled sample set (nuclei, lesions)")
    ap.add_argument("--verbose", action="store_true", help="also list the five worst stalls")
    ap.add_argument("--in-thread", action="store_true",
                    help="train in a thread of the GUI process instead of a child process (for comparison)")
    ap.add_argument("--idle", action="store_true",
                    help="no training: the noise floor of this machine (other load, the OS scheduler)")
    args = ap.parse_args(argv)

    import numpy as np
    from PySide6.QtCore import QElapsedTimer, QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from ielstudio.core.paths import sample_dir
    from ielstudio.gui.main_window import MainWindow, freeze_startup_objects

    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp(prefix="ielstudio-latency-"))
    window = MainWindow(settings=QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat), data_dir=tmp)
    freeze_startup_objects()  # as run_app does
    window.train_in_process = not args.in_thread
    window.resize(1560, 980)
    window.show()
    sample = sample_dir(args.sample)
    if not window.open_folders(sample / "images", sample / "masks", project_path=tmp / "latency.ielproj"):
        print(f"cannot open {sample}: {window.last_error}", file=sys.stderr)
        return 2

    gaps: list[float] = []
    times: list[float] = []
    clock = QElapsedTimer()
    state = {"last": None, "steps": 0, "reviews": 0, "done": False, "t0": None}

    def beat():
        now = clock.nsecsElapsed() / 1e6
        if state["last"] is not None:
            gaps.append(now - state["last"])
            times.append(state["last"])
        state["last"] = now

    heartbeat = QTimer()
    heartbeat.setInterval(HEARTBEAT_MS)
    heartbeat.timeout.connect(beat)

    def finish(*_):
        if state["done"]:
            return
        state["done"] = True
        heartbeat.stop()
        window.confirm_close_during_training = lambda: True
        window.close()
        app.quit()

    marks: list[tuple[float, str]] = []

    def on_review(r):
        state["reviews"] += 1
        marks.append((clock.nsecsElapsed() / 1e9, f"proposals for {len(r.items)} images (step {r.step})"))

    window.reviewsApplied.connect(on_review)
    window.trainingFinished.connect(lambda *_: QTimer.singleShot(500, finish))  # include the scoring pass start
    window.errorShown.connect(lambda msg: print(f"error: {msg}", file=sys.stderr))

    def begin():
        clock.start()
        heartbeat.start()
        state["t0"] = time.perf_counter()
        if not args.idle:
            window.start_training(steps=args.steps, snapshot_every=args.snapshot_every)

    QTimer.singleShot(200, begin)
    QTimer.singleShot(int((min(args.seconds, 10.0) if args.idle else args.seconds) * 1000), finish)
    app.exec()
    wall = time.perf_counter() - (state["t0"] or time.perf_counter())

    if not gaps:
        print("no heartbeat recorded", file=sys.stderr)
        return 1
    g = np.asarray(gaps)
    stalls = np.maximum(g - HEARTBEAT_MS, 0.0)
    steps = window.training_panel.progress.value()
    rows = [
        ("CPU cores", f"{os.cpu_count()}"),
        ("training runs in", "a child process" if window.train_in_process else "a thread"),
        ("measured for", f"{wall:.1f} s"),
        ("training steps shown", f"{steps}"),
        ("proposal/score messages applied", f"{state['reviews']}"),
        ("heartbeats", f"{len(g)}"),
        ("median interval", f"{np.median(g):.1f} ms"),
        ("p90 stall", f"{np.percentile(stalls, 90):.1f} ms"),
        ("p99 stall", f"{np.percentile(stalls, 99):.1f} ms"),
        ("max stall", f"{stalls.max():.1f} ms"),
        ("stalls > 30 ms", f"{int((stalls > 30).sum())}"),
        ("stalls > 100 ms", f"{int((stalls > 100).sum())}"),
    ]
    width = max(len(k) for k, _ in rows)
    title = "UI latency, idle window" if args.idle else "UI latency while training"
    print(f"| {title.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")
    if args.verbose:
        for i in np.argsort(stalls)[::-1][:5]:
            print(f"stall {stalls[i]:.1f} ms at t = {times[i] / 1000:.2f} s")
        for t, what in marks:
            print(f"t = {t:.2f} s: {what}")
    print(f"max_stall_ms={stalls.max():.1f} p99_stall_ms={np.percentile(stalls, 99):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
