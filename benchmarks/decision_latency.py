"""How long do decisions on many slices hold the window's GUI thread?

Opens the main window offscreen on one generated CT-like volume (512 x 512 x 48 voxels,
uncompressed NIfTI, one ellipsoid through every slice, its label dented on 35 slices),
gives every slice the ellipsoid as its proposal (as the scoring job stores them) and
times three bulk decisions, each then undone and redone:

- **object**: the 3-D object under a click taken whole (key O on a volume,
  `MainWindow.accept_object_3d`: 35 slices change);
- **volume**: every slice's proposal accepted (Shift+A, `decide_volume`: 48 slices);
- **undo / redo** of each.

Two variants, interleaved in rounds so that load on a shared machine hits both alike:

- ``worker`` (what the window does): the slices are read, the object found and the new
  masks encoded in a worker (`plan_in_background`), and the GUI thread records them in
  one transaction;
- ``gui thread``: the same planner called in the GUI thread, then the same recording:
  the work the window did in its GUI thread before the planners moved to a worker
  (there it was 35 or 48 transactions, one per slice, not one).

A 5 ms QTimer heartbeat runs throughout; the **stall** of a decision is the longest gap
between two beats while it ran, less 5 ms, which is what a person sees as a frozen
window. Prints a table (medians over ``--rounds``) and, as its LAST line,
``object_stall_ms=<worker> object_stall_gui_thread_ms=<gui thread>``.

    python benchmarks/decision_latency.py [--rounds 5] [--size 512] [--slices 48]
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

HEARTBEAT_MS = 5


def make_volume(folder: Path, size: int, slices: int):
    """One CT-like volume and its label (the ellipsoid dented on most slices); the ellipsoid."""
    import nibabel as nib
    import numpy as np

    shape = (size, size, slices)
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij", sparse=True)
    c = size / 2
    ell = (((i - c) / (0.24 * size)) ** 2 + ((j - c) / (0.2 * size)) ** 2
           + ((k - (slices - 1) / 2) / (0.63 * slices)) ** 2) <= 1
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image((ell * 300 - 200 + rng.normal(0, 15, shape)).astype(np.int16), np.eye(4)),
             images / "case.nii")
    given = ell.copy()
    d0, d1 = int(0.39 * size), int(0.51 * size)
    given[d0:d1, d0:d1, int(0.1 * slices):int(0.83 * slices)] = False
    nib.save(nib.Nifti1Image(given.astype(np.uint8), np.eye(4)), labels / "case_seg.nii")
    return images, labels, ell


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of both variants (default 5)")
    ap.add_argument("--size", type=int, default=512, help="in-plane size of the volume (default 512)")
    ap.add_argument("--slices", type=int, default=48, help="slices of the volume (default 48)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                    help="folder for decision-latency.md (default benchmarks/results)")
    args = ap.parse_args(argv)

    import numpy as np
    from PySide6.QtCore import QElapsedTimer, QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from ielstudio.core.iel import one_hot
    from ielstudio.core.imageio import atomic_write_text
    from ielstudio.core.session import plan_decisions
    from ielstudio.core.volume_review import plan_object_take, to_display
    from ielstudio.gui import jobs
    from ielstudio.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp(prefix="ielstudio-decisions-"))
    images, labels, ell = make_volume(tmp / "data", args.size, args.slices)
    w = MainWindow(settings=QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat), data_dir=tmp)
    w.confirm_close_during_training = lambda: True
    if not w.open_folders(images, labels, project_path=tmp / "decisions.ielproj"):
        print(f"cannot open {images}: {w.last_error}", file=sys.stderr)
        return 2
    t0 = time.time()
    while w.project.mask_encoding() is None and time.time() - t0 < 120:
        app.processEvents()
        time.sleep(0.005)
    entry = w.scan.volume("case")
    items = {}
    for k in range(entry.n_slices):
        p = to_display(ell[entry.index(k)].astype(np.int64), entry.orientation)
        items[entry.slice_name(k)] = jobs.ImageReview(one_hot(p, 2), p, 0.5, 0.1)
    writer = jobs.ScoreWriter(w.project.path)
    writer.source = "benchmark"
    try:
        w.apply_reviews(writer(jobs.Reviews(None, items, len(items), len(items), volume_scores={"case": 0.4})))
    finally:
        writer.close()
    middle = entry.slice_name(entry.n_slices // 2)
    w.show_slice(middle)
    r, c = (int(v) for v in np.argwhere(w.proposals.get(middle) != 0)[0])

    clock = QElapsedTimer()
    clock.start()
    beats: list[float] = []
    heartbeat = QTimer()
    heartbeat.setInterval(HEARTBEAT_MS)
    heartbeat.timeout.connect(lambda: beats.append(clock.nsecsElapsed() / 1e6))
    heartbeat.start()

    def settle(seconds: float = 1.0) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)

    def measured(action) -> tuple[float, float]:
        """(longest stall in ms, wall ms) of ``action()`` and the worker it may leave running."""
        settle()
        start = clock.nsecsElapsed() / 1e6
        n0 = len(beats)
        action()
        worker = w.planning_worker
        while worker is not None and not worker.done:
            app.processEvents()
            time.sleep(0.0005)
        end = clock.nsecsElapsed() / 1e6
        settle(0.03)
        times = [start] + beats[n0:] + [end]
        times = [t for t in times if t <= end] + [end]
        gaps = np.diff(times)
        return float(max(gaps.max() - HEARTBEAT_MS, 0.0)), end - start

    def object_in_gui_thread() -> None:
        encoding = w.project.mask_encoding()
        take = plan_object_take(w.project, entry, entry.n_slices // 2, r, c,
                                lambda n: w.volumes.sample(n, encoding).mask, w.proposals.reader())
        w.record_plans(take.plans, "Accept object")

    def volume_in_gui_thread() -> None:
        plans, _ = plan_decisions(w.project, entry.slice_names(), "accepted", w.proposals.reader())
        w.record_plans(plans, "Accept proposals")

    variants = {
        "worker": {"object": lambda: w.accept_object_3d(middle, r, c), "volume": lambda: w.decide_volume("accepted")},
        "gui thread": {"object": object_in_gui_thread, "volume": volume_in_gui_thread},
    }
    results: dict = {(v, a): [] for v in variants for a in ("object", "object undo", "object redo", "volume",
                                                              "volume undo")}
    changed: dict = {}
    for _ in range(args.rounds):
        for variant, actions in variants.items():
            w.show_slice(middle)
            results[variant, "object"].append(measured(actions["object"]))
            changed[variant, "object"] = sum(w.project.image(n).status == "edited" for n in entry.slice_names())
            results[variant, "object undo"].append(measured(w.undo))
            results[variant, "object redo"].append(measured(w.redo))
            w.undo()
            w.show_slice(middle)
            results[variant, "volume"].append(measured(actions["volume"]))
            changed[variant, "volume"] = sum(w.project.image(n).status == "accepted" for n in entry.slice_names())
            results[variant, "volume undo"].append(measured(w.undo))
    heartbeat.stop()
    w.close()

    def median(values, i):
        return float(np.median([v[i] for v in values]))

    lines = [f"Decisions on a {args.size} x {args.size} x {args.slices} volume, {os.cpu_count()} CPU cores, "
             f"medians of {args.rounds} rounds (stall: the longest the window froze)", "",
             "| decision | slices changed | stall, worker | stall, GUI thread | wall, worker | wall, GUI thread |",
             "|---|---|---|---|---|---|"]
    for action in ("object", "object undo", "object redo", "volume", "volume undo"):
        n = changed.get(("worker", action.split()[0]), "")
        lines.append(f"| {action} | {n} | {median(results['worker', action], 0):.0f} ms | "
                     f"{median(results['gui thread', action], 0):.0f} ms | "
                     f"{median(results['worker', action], 1):.0f} ms | {median(results['gui thread', action], 1):.0f} ms |")
    lines += ["", f"`python benchmarks/decision_latency.py --rounds {args.rounds} --size {args.size} "
                  f"--slices {args.slices}`"]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "decision-latency.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"object_stall_ms={median(results['worker', 'object'], 0):.1f} "
          f"object_stall_gui_thread_ms={median(results['gui thread', 'object'], 0):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
