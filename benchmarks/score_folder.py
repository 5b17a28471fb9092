"""Mean Dice of a folder of masks against reference masks (same file names).

    python benchmarks/score_folder.py REFERENCE_MASKS MASKS [MASKS ...]

Reads masks as `ielstudio clean` does (`core.dataset.load_samples`: the same value
convention for both folders), prints one line per folder: mean foreground Dice over
images, min and the number of images compared. Used to score `ielstudio clean` runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ielstudio.core.imageio import read_mask
from ielstudio.core.metrics import dice


def folder_dice(reference: Path, masks: Path) -> list[float]:
    out = []
    for ref in sorted(reference.iterdir()):
        other = masks / ref.name
        if not other.is_file():
            continue
        a, enc = read_mask(ref)
        b, _ = read_mask(other, enc)
        n = int(max(a.max(), b.max())) + 1
        out.append(dice(b, a, max(n, 2)))
    return out


def main(argv: list[str]) -> None:
    reference = Path(argv[0])
    for folder in argv[1:]:
        d = folder_dice(reference, Path(folder))
        print(f"{folder}: mean Dice {np.mean(d):.4f}  min {np.min(d):.4f}  n {len(d)}")


if __name__ == "__main__":
    main(sys.argv[1:])
