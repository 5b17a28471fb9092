"""Volumes benchmark: `ielstudio clean` on whole label volumes with 3-D label noise.

Two sets, each cleaned twice with the defaults (`core.volume_clean.clean_volumes`, the
code path of `ielstudio clean IMAGES MASKS --out DIR` on volume folders): once given
noisy label volumes, once given the correct ones (do no harm: those must come out
unchanged). Printed per set: mean Dice (foreground, per volume, against the correct
labels) of the given and the cleaned volumes, the run's time and the process's peak
memory.

- ``generated``: 6 CT-like volumes of 96 x 96 x 24 voxels (0.8 x 0.8 x 3 mm), two or three
  ellipsoids each, made here.
- ``pyradiomics``: the five real scans of the pyradiomics 3.0.1 source distribution
  (brain1, brain2: MR; lung1, lung2: CT; breast1: MR; `benchmarks/realdata.py` fetches
  and caches them), whole volumes with their manual lesion labels, cropped to the
  lesion's neighbourhood in-plane (2.5 x its extent, at least 96 px) and to the slices
  around it.

Label noise (3-D, per volume, seeded): `--faults` (default 2) of: outlines drawn 1-2
voxels too wide or too narrow (3-D dilation/erosion), a spurious blob, a missed slab of
the object, a 1-2 voxel in-plane shift. Nothing here chose a default: this set only reports (see README.md).

    python benchmarks/volumes.py [--sets generated,pyradiomics] [--steps N] [--faults 2] [--folds 1] [--tag NAME]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

from ielstudio.core.cleaning import CleanConfig, CleanDone, clean_dataset  # noqa: E402
from ielstudio.core.training import TrainConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _ball(r: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.generate_binary_structure(3, 1) if r <= 1 else ndimage.iterate_structure(
        ndimage.generate_binary_structure(3, 1), r)


def noisy_label(label: np.ndarray, rng: np.random.Generator, faults: int = 2) -> np.ndarray:
    """`faults` different 3-D annotation faults on a binary label volume (axes i, j, k; k slices)."""
    from scipy import ndimage

    out = label.astype(bool).copy()
    kinds = rng.choice(["wide", "narrow", "blob", "slab", "shift"], size=faults, replace=False)
    for kind in kinds:
        if kind == "wide":
            out = ndimage.binary_dilation(out, _ball(1), iterations=int(rng.integers(1, 3)))
        elif kind == "narrow":
            eroded = ndimage.binary_erosion(out, _ball(1))
            out = eroded if eroded.sum() > 0.3 * out.sum() else out
        elif kind == "blob":
            inside = np.argwhere(~out)
            c = inside[int(rng.integers(len(inside)))]
            i, j, k = np.ogrid[:out.shape[0], :out.shape[1], :out.shape[2]]
            r = float(rng.uniform(2, 4))
            out |= ((i - c[0]) ** 2 + (j - c[1]) ** 2 + (2.0 * (k - c[2])) ** 2) <= r * r
        elif kind == "slab":
            ks = np.flatnonzero(out.any(axis=(0, 1)))
            if len(ks) > 2:
                k0 = int(ks[int(rng.integers(len(ks)))])
                out[:, :, k0:k0 + max(1, len(ks) // 4)] = False
        elif kind == "shift":
            out = np.roll(out, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    return out.astype(label.dtype)


def generated_cases(n: int = 6, shape=(96, 96, 24), seed: int = 0):
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    for c in range(n):
        label = np.zeros(shape, np.uint8)
        for _ in range(int(rng.integers(2, 4))):
            centre = rng.uniform([20, 20, 6], [76, 76, 18])
            radii = rng.uniform([7, 7, 2.5], [14, 14, 5])
            label[(((i - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2
                   + ((k - centre[2]) / radii[2]) ** 2) <= 1] = 1
        image = (label * 300.0 - 50 + rng.normal(0, 60, shape)).astype(np.int16)
        yield f"gen{c}", image, label, (0.8, 0.8, 3.0)


def pyradiomics_cases():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import nrrd
    import realdata

    raw = realdata.fetch_pyradiomics(realdata.cache_root())
    for name in sorted(realdata.MODALITY):
        image, header = nrrd.read(str(raw / f"{name}_image.nrrd"))
        label, _ = nrrd.read(str(raw / f"{name}_label.nrrd"))
        label = (label > 0).astype(np.uint8)
        spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(header["space directions"], float), axis=1))
        where = np.argwhere(label)
        lo, hi = where.min(0), where.max(0) + 1
        box = []
        for a in range(3):
            extent = hi[a] - lo[a]
            if spacing[a] == max(spacing):  # the slice axis: the lesion's slices and 2 more each side
                half = extent // 2 + 2
            else:
                half = max(int(1.25 * extent), 48)
            mid = (lo[a] + hi[a]) // 2
            box.append(slice(max(0, mid - half), min(label.shape[a], mid + half)))
        yield name, image[tuple(box)].astype(np.int16), label[tuple(box)], spacing


def write_set(root: Path, cases, seed: int = 1, faults: int = 2) -> tuple[Path, Path, Path, dict]:
    import nibabel as nib

    images, noisy, clean = root / "images", root / "noisy", root / "clean"
    for d in (images, noisy, clean):
        d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    truth = {}
    for name, image, label, spacing in cases:
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(image, affine), images / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), clean / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(noisy_label(label, rng, faults), affine), noisy / f"{name}.nii.gz")
        truth[name] = label.astype(bool)
    return images, noisy, clean, truth


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def run_clean(images: Path, masks: Path, out: Path, steps: int | None, folds: int = 1,
              slice_context: int = 0, seed: int = 0) -> tuple[dict, float]:
    budget = {} if steps is None else {"max_steps": steps, "min_steps": min(300, steps)}
    config = TrainConfig(folds=folds, slice_context=slice_context, seed=seed, **budget)
    t0 = time.perf_counter()
    report = None
    for ev in clean_dataset(images, masks, out, config, CleanConfig()):
        if isinstance(ev, CleanDone):
            report = ev.report
    return report, time.perf_counter() - t0


def mean_dice(folder: Path, truth: dict) -> float:
    import nibabel as nib

    return float(np.mean([dice(np.asarray(nib.load(folder / f"{n}.nii.gz").dataobj) > 0, t) for n, t in truth.items()]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="generated,pyradiomics")
    p.add_argument("--steps", type=int, help="cap on training steps (default: the automatic budget)")
    p.add_argument("--faults", type=int, default=2, help="annotation faults per noisy volume (1..5)")
    p.add_argument("--folds", type=int, default=1, help="--folds K of the clean runs (default 1)")
    p.add_argument("--slice-context", type=int, default=0,
                   help="--slice-context N of the clean runs: N neighbouring slices each side as input (default 0)")
    p.add_argument("--seed", type=int, default=0, help="training seed of the clean runs (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = []
    for set_name in args.sets.split(","):
        cases = list(generated_cases() if set_name == "generated" else pyradiomics_cases())
        with tempfile.TemporaryDirectory() as tmp:
            images, noisy, clean, truth = write_set(Path(tmp) / set_name, cases, faults=args.faults)
            for given_name, given in (("noisy", noisy), ("correct", clean)):
                out = Path(tmp) / f"out-{given_name}"
                report, seconds = run_clean(images, given, out, args.steps, args.folds, args.slice_context,
                                            args.seed)
                peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                rows.append({
                    "set": set_name, "given": given_name, "volumes": len(cases),
                    "voxels": int(sum(c[1].size for c in cases)), "slices": report["n_slices"],
                    "dice_in": round(mean_dice(given, truth), 3), "dice_out": round(mean_dice(out, truth), 3),
                    "steps": report["training"]["steps"], "kept_as_given": report["labels_kept_as_given"],
                    "agreement": report["reliability"]["agreement"][1],
                    "objects": report["reliability"].get("objects"),
                    "trained_agreement": report["reliability"].get("trained_agreement"),
                    "time_s": round(seconds, 1), "peak_rss_mb": round(peak_mb),
                })
                print(json.dumps(rows[-1]), flush=True)
    lines = ["| set | masks given | volumes (slices) | Dice in | Dice out | steps | held-out agreement | labels kept | time (s) | peak memory (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agreement = ("-" if r["agreement"] is None else f"{r['agreement']:.3f}") + C.rule_1_details(r)
        lines.append(f"| {r['set']} | {r['given']} | {r['volumes']} ({r['slices']}) | {r['dice_in']:.3f} | "
                     f"{r['dice_out']:.3f} | {r['steps']} | {agreement} | {'all' if r['kept_as_given'] else 'no'} | "
                     f"{r['time_s']} | {r['peak_rss_mb']} |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    (RESULTS / f"volumes{tag}.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / f"volumes{tag}.md").write_text(table + "\n\nPeak memory is the process's maximum resident set "
                                              "size so far (it includes the sets before).\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
