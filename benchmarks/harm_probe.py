"""Which proposed changes would harm: the probe that chose `review.RELABEL_CONFIDENCE`.

    python benchmarks/harm_probe.py --set brain-multiclass-dev [--labels clean,noisy]
    python benchmarks/harm_probe.py --set lesions-dev          # generated: the bundled lesion
                                                              # recipe with a new seed
Only ever run on a development set. For each labelling, one default `ielstudio clean`
run (`core.cleaning.clean_dataset`) prints its output Dice against the correct masks;
then, with the model it saved, every region where the raw proposal differs from the
given mask (classes the model is reliable for) is listed by kind (add, remove, relabel:
one foreground class to another) with the model's mean probability of the proposed
class, and the table shows the net pixels gained (right minus wrong, against the
correct masks) if regions were applied from each confidence on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "resources"))
import realdata  # noqa: E402

from ielstudio.core.cleaning import (CleanConfig, CleanDone, calibration_subset, clean_dataset,  # noqa: E402
                                     load_dataset, propose, thresholds_for)
from ielstudio.core.imageio import read_mask  # noqa: E402
from ielstudio.core.metrics import dice  # noqa: E402
from ielstudio.core.review import assess_reliability, decision_probabilities  # noqa: E402
from ielstudio.core.training import TrainConfig, load_checkpoint, predict  # noqa: E402

THRESHOLDS = (0.75, 0.85, 0.9, 0.95)


def folders(name: str, cache: Path) -> tuple[Path, Path, Path, int]:
    """(images, noisy masks, correct masks, classes) of a development set."""
    if name == "lesions-dev":
        import make_sample as M

        root = cache / "lesions-dev"
        if not (root / "clean").is_dir():
            M.write_set(root, M.make_lesions, M.LESION_NOISE, M.LESION_ENCODING, 3, M.SEED + 1001, "lesion", True)
        return root / "images", root / "masks", root / "clean", 3
    if name == "nuclei-mixture-dev":
        return nuclei_mixture_dev(cache / name)
    rs = realdata.build_sets(None)[name]
    if rs.split != "dev":
        raise SystemExit(f"{name} is not a development set")
    return rs.images, rs.noisy, rs.clean, rs.n_classes


def nuclei_mixture_dev(root: Path) -> tuple[Path, Path, Path, int]:
    """The bundled nuclei sample (a development set already) with `realdata.mixture_noise`
    instead of its own noise: on a tile of many nuclei an op hits all of them, so every
    outline is 1-3 px too wide or narrow, shifted or wobbly in most images, the kind of
    noise that keeps a good model's held-out agreement under the bar."""
    sample = Path(__file__).resolve().parents[1] / "resources" / "sample" / "nuclei"
    if not (root / "masks").is_dir():
        for f in sorted((sample / "clean").glob("*.png")):
            clean = (cv2.imread(str(f), cv2.IMREAD_UNCHANGED) > 0).astype(np.uint8)
            noisy, _ = realdata.mixture_noise(clean, realdata.image_rng(1001, root.name, f.stem, "mixture"), 2)
            realdata.write_png(root / "masks" / f.name, realdata.mask_png(noisy, 2))
    return sample / "images", root / "masks", sample / "clean", 2


def regions(images: Path, masks: Path, clean: Path, model_path: Path) -> list[dict]:
    model, _, meta = load_checkpoint(model_path)
    loaded = load_dataset(images, masks)
    probs = {s.name: predict(model, s.image) for s in loaded.samples}
    th = thresholds_for((probs[s.name] for s in calibration_subset(list(loaded.samples))), CleanConfig())
    held = set(meta.get("holdout", []))
    n_classes = next(iter(probs.values())).shape[0]
    rel = assess_reliability([(probs[s.name], s.mask) for s in loaded.samples if s.name in held], n_classes, th, True)
    unreliable = np.flatnonzero(~np.asarray(rel.reliable))
    rows = []
    for s in loaded.samples:
        truth = read_mask(clean / s.mask_path.name, loaded.encoding)[0].astype(np.int64)
        g = s.mask.astype(np.int64)
        raw = propose(probs[s.name], g, CleanConfig(), th)
        p_prop = np.take_along_axis(decision_probabilities(probs[s.name], th), raw[None], 0)[0]
        changed = (raw != g) & ~(np.isin(g, unreliable) | np.isin(raw, unreliable))
        relabel = changed & (g != 0) & (raw != 0)
        for kind_mask, is_relabel in ((changed & ~relabel, False), (relabel, True)):
            n, lab = cv2.connectedComponents(kind_mask.astype(np.uint8), connectivity=8)
            for k in range(1, n):
                m = lab == k
                kind = "relabel" if is_relabel else ("add" if np.bincount(g[m]).argmax() == 0 else "remove")
                rows.append({"kind": kind, "px": int(m.sum()), "p": float(p_prop[m].mean()),
                             "gain": int((raw[m] == truth[m]).sum() - (g[m] == truth[m]).sum())})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="brain-multiclass-dev")
    ap.add_argument("--labels", default="clean,noisy")
    a = ap.parse_args(argv)
    cache = Path(tempfile.gettempdir()) / "ielstudio-harm-probe"
    images, noisy, clean, n_classes = folders(a.set, cache)
    for labels in a.labels.split(","):
        masks = clean if labels == "clean" else noisy
        with tempfile.TemporaryDirectory() as tmp:
            out, model_path = Path(tmp) / "out", Path(tmp) / "model.pt"
            for ev in clean_dataset(images, masks, out, TrainConfig(), CleanConfig(), save_model=model_path):
                if isinstance(ev, CleanDone):
                    pass
            names = sorted(p.name for p in clean.iterdir())
            enc = read_mask(clean / names[0])[1]
            d = [(dice(read_mask(masks / n, enc)[0], read_mask(clean / n, enc)[0], n_classes),
                  dice(read_mask(out / n, enc)[0], read_mask(clean / n, enc)[0], n_classes)) for n in names]
            given, output = np.mean(d, axis=0)
            print(f"\n{a.set}, {labels} masks given: Dice {given:.4f} -> default clean {output:.4f}")
            rows = regions(images, masks, clean, model_path)
        print("| kind | regions | px | " + " | ".join(f"net px gained at p >= {t}" for t in THRESHOLDS) + " |")
        print("|---|---|---|" + "---|" * len(THRESHOLDS))
        for kind in ("add", "remove", "relabel"):
            k = [r for r in rows if r["kind"] == kind]
            cells = [str(sum(r["gain"] for r in k if r["p"] >= t)) for t in THRESHOLDS]
            print(f"| {kind} | {len(k)} | {sum(r['px'] for r in k)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
