"""How much of a clean's change sits in objects it barely moved: a per-object account.

    ielstudio clean IMAGES GIVEN --out OUT --seed N
    python benchmarks/object_changes.py CORRECT GIVEN OUT

For every object of the given masks (a connected foreground region), the changed pixels
near it (within 4 px, and nearer it than any other object) are given to it, and the
object's change is 1 - Dice of the object as given and as the output leaves it. The
table groups the objects by that change and counts the pixels that now agree with the
correct masks (right) and those that do not (wrong). Foreground is every nonzero label.
This is the count that prompted rule 2's per-object step (`review.objects_moved_enough`;
benchmarks/README.md, "Nudges too small to be evidence"); pixels of objects added whole,
far from every given object, are not counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ielstudio.core.imageio import read_mask  # noqa: E402

BINS = ((0.0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 1.01))
NEAR = 4


def objects_changed(correct: np.ndarray, given: np.ndarray, out: np.ndarray) -> list[tuple[float, int, int]]:
    """[(1 - Dice of the object before and after, right px, wrong px)] per given object
    the output changed; the masks as foreground (bool)."""
    labels, n = ndimage.label(given, np.ones((3, 3)))
    changed = out != given
    rows = []
    for i in range(1, n + 1):
        obj = labels == i
        near = cv2.dilate(obj.astype(np.uint8), np.ones((2 * NEAR + 1,) * 2, np.uint8)).astype(bool)
        others = cv2.dilate(((labels > 0) & ~obj).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        mine = changed & near & ~(others & ~obj)
        if not mine.any():
            continue
        moved = (obj | (mine & out)) & ~(mine & ~out)
        share = 1 - 2 * int((obj & moved).sum()) / int(obj.sum() + moved.sum())
        rows.append((share, int((mine & (out == correct)).sum()), int((mine & (out != correct)).sum())))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("correct", type=Path)
    ap.add_argument("given", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    rows = []
    for f in sorted(p for p in a.correct.iterdir() if p.is_file()):
        enc = read_mask(f)[1]
        masks = [np.asarray(read_mask(d / f.name, enc)[0]) != 0 for d in (a.correct, a.given, a.out)]
        rows += objects_changed(*masks)
    print("| object changed by | objects | right px | wrong px |\n|---|---|---|---|")
    for lo, hi in BINS:
        sel = [r for r in rows if lo <= r[0] < hi]
        print(f"| {lo:.0%}-{min(hi, 1):.0%} | {len(sel)} | {sum(r[1] for r in sel)} | {sum(r[2] for r in sel)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
