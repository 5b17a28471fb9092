"""Which evidence ranks and gates labels well when the model is weak: a development probe.

    python benchmarks/evidence_probe.py train --set dev --labels noisy,clean --folds 1,3
    python benchmarks/evidence_probe.py score --set dev
    python benchmarks/evidence_probe.py objects --set dev
    python benchmarks/evidence_probe.py adds --set dev
    python benchmarks/evidence_probe.py outlines --set dev
    python benchmarks/evidence_probe.py edges --set nuclei-sample
    python benchmarks/evidence_probe.py reliability --set dev,nuclei-mixture-dev,lesions-dev
    python benchmarks/evidence_probe.py objects-image --set hela-nuclei-dev,dev,nuclei-sample
    python benchmarks/evidence_probe.py nudges --set hela-nuclei-dev,nuclei-sample,nuclei-mixture-dev
    python benchmarks/evidence_probe.py fits --set dev
    python benchmarks/evidence_probe.py hulls --set dev
    python benchmarks/evidence_probe.py parts --set dev,hela-nuclei-dev,brain-multiclass-dev

`train` fits the default recipe (`TrainConfig`, automatic budget; `--folds K` cross-fits
K models so every image is predicted by one that never saw its label) on a real set and
caches, per image, the probabilities, the given and the correct mask and whether the
image was out of sample (`/tmp/ielstudio-evidence/<set>-<labels>-f<K>.npz`).
`score` reads those caches and prints, per cache, the Spearman correlation of several
label-quality scores with the true Dice of the given masks, split by in-sample and
out-of-sample images where both exist. `objects` prints the output Dice of the review's
gates with and without rule 3 (`review.remove_unsupported_objects`) at several settings:
the probe that chose its defaults. `adds` does the same for rule 4
(`review.add_supported_regions`: regions the label left out that the model and the
image support). `outlines` tries rule 3's per-image evidence on
outline moves (thick regions added or cut), with and without a test of the image,
which was not adopted. `edges` shows what rule 2's image check of outline moves
(`review.image_backs_outline_moves`) costs and saves at several margins. `reliability`
shows rule 1's verdict with the pixel bar alone and with the objects' way
(`review.ObjectsFound`), and the output of each; `weak` trains under-trained models
(20-80 steps) on the nuclei dev sets and shows what that verdict makes of them.
`objects-image` shows what the image's say on objects removed or added whole
(`review.image_backs_object_changes`, `review.object_contrast`) does at several
contrasts. `nudges` shows what taking rule 2's outline moves per object does at several
shares of an object they must change (`review.objects_moved_enough`). `fits` tries the
image alone as a correction where no model can be trusted: each mask replaced by its
best-fitting outline (`boundary_fit.best_fitting_outline`) where that outline separates
the image clearly better than the given one (not adopted). `hulls` tries the image
alone on bites: a thick part of an object's convex hull that the mask leaves out is
added where the image shows it as part of the object (not adopted). `parts` shows rule
2's object check before and after stop 39 took each changed region's removals and
additions apart (`review._removals_and_additions`). `--set` takes
several sets, comma-separated. Choosing is done on `dev`
sets only; the report sets are scored once with what was chosen (`realtable.py`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import realdata  # noqa: E402

CACHE = Path("/tmp/ielstudio-evidence")


def cache_path(set_name: str, labels: str, folds: int, seed: int = 0, noise_seed: int = 0) -> Path:
    return CACHE / (f"{set_name}-{labels}-f{folds}{f'-s{seed}' if seed else ''}"
                    f"{f'-n{noise_seed}' if noise_seed else ''}.npz")


def real_sets(noise_seed: int = 0) -> dict:
    """`realdata.build_sets` with the label noise drawn from ``noise_seed``: the same
    slices, other noisy masks (another draw of the mixture), in a cache folder of their own
    (``<cache>/noise-seed-N``, the downloaded scans shared)."""
    if not noise_seed:
        return realdata.build_sets()
    root = realdata.cache_root()
    own = root / f"noise-seed-{noise_seed}"
    own.mkdir(parents=True, exist_ok=True)
    if not (own / "raw").exists():
        realdata.fetch_pyradiomics(root)
        (own / "raw").symlink_to(root / "raw", target_is_directory=True)
    return realdata.build_sets(own, seed=noise_seed)


def sets(noise_seed: int = 0) -> dict:
    """The real-data sets of `realdata.py` (`real_sets`), the bundled samples (as
    `realtable.py` names them) and `lesions-dev`: the bundled lesion recipe with another
    seed (`harm_probe.py`)."""
    import harm_probe
    import realtable

    images, noisy, clean, n = harm_probe.folders("lesions-dev", CACHE)
    dev = realdata.RealSet("lesions-dev", "dev", images, clean, noisy, (), n)
    images, noisy, clean, n = harm_probe.folders("nuclei-mixture-dev", CACHE)
    nuclei = realdata.RealSet("nuclei-mixture-dev", "dev", images, clean, noisy, (), n)
    return {**real_sets(noise_seed), **realtable.bundled_sets(), "lesions-dev": dev, "nuclei-mixture-dev": nuclei}


def train_one(set_name: str, labels: str, folds: int, threads: int, seed: int = 0, noise_seed: int = 0) -> str:
    C.limit_threads(threads)
    from ielstudio.core.cleaning import CleanConfig, calibration_subset, load_dataset, thresholds_for
    from ielstudio.core.imageio import read_mask
    from ielstudio.core.training import CrossFitModel, TrainConfig, predict

    rs = sets(noise_seed)[set_name]
    loaded = load_dataset(rs.images, rs.noisy if labels == "noisy" else rs.clean)
    samples = loaded.samples
    enc = read_mask(rs.clean / samples[0].mask_path.name)[1]
    t0 = time.perf_counter()
    done = C.fit(samples, TrainConfig(folds=folds, seed=seed))
    train_s = time.perf_counter() - t0
    model = done.model
    crossfit = isinstance(model, CrossFitModel)
    held = set(done.history.get("holdout", [])) if not crossfit else {s.name for s in samples}
    probs = [predict(model.model_for(s.name) if crossfit else model, s.image) for s in samples]
    by = dict(zip([s.name for s in samples], probs))
    th = thresholds_for((by[s.name] for s in calibration_subset(list(samples))), CleanConfig())
    out = cache_path(set_name, labels, folds, seed, noise_seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, names=np.array([s.name for s in samples]), probs=np.stack(probs).astype(np.float16),
        given=np.stack([s.mask for s in samples]).astype(np.uint8),
        clean=np.stack([read_mask(rs.clean / s.mask_path.name, enc)[0] for s in samples]).astype(np.uint8),
        images=np.stack([np.asarray(s.image, np.float32)[0] for s in samples]),  # (N,H,W): the first channel
        oos=np.array([s.name in held for s in samples]), thresholds=np.asarray(th if th is not None else []),
        train_s=train_s, steps=done.steps)
    return f"{out.name}: {done.steps} steps, {train_s:.0f} s"


def load(path: Path) -> dict:
    z = np.load(path)
    d = {k: z[k] for k in z.files}
    d["probs"] = d["probs"].astype(np.float32)
    d["thresholds"] = d["thresholds"] if d["thresholds"].size else None
    if d["images"].shape != d["given"].shape:  # caches of the first version stored them wrongly: read them again
        from ielstudio.core.dataset import _load_image as load_image

        rs = sets(noise_seed_of(path.stem))[path.stem.split("-noisy")[0].split("-clean")[0]]
        d["images"] = np.stack([load_image(next(rs.images.glob(f"{n}.*")))[0] for n in d["names"]])
    return d


def _fg(probs: np.ndarray) -> np.ndarray:
    return 1.0 - probs[0]


def _band(mask: np.ndarray, r: int) -> np.ndarray:
    import cv2

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    m = (mask != 0).astype(np.uint8)
    return (cv2.dilate(m, k) - cv2.erode(m, k)).astype(bool)


def image_scores(d: dict, i: int) -> dict[str, float]:
    from ielstudio.core.boundary_fit import candidate_contrasts, outline_fit_dice
    from ielstudio.core.cleaning import label_quality
    from ielstudio.core.decision import decide
    from ielstudio.core.mask_prior import outline_smoothness
    from ielstudio.core.metrics import dice, solidity
    from ielstudio.core.review import tolerant_dice

    probs, g = d["probs"][i], d["given"][i].astype(np.int64)
    th = d["thresholds"]
    n = probs.shape[0]
    arg = decide(probs, th)
    p_given = np.take_along_axis(probs, np.clip(g, 0, n - 1)[None], 0)[0]
    fg, gf = _fg(probs), g != 0
    out = {"current": label_quality(probs, g, th)[0], "hard dice": dice(arg, g, n),
           "soft dice": float(2 * (fg * gf).sum() / max(fg.sum() + gf.sum(), 1e-6))}
    for r in (2, 4):
        band = _band(g, r)
        out[f"mean p(given) band {r}"] = float(p_given[band].mean()) if band.any() else 1.0
    union = gf | (arg != 0)
    out["mean p(given) union"] = float(p_given[union].mean()) if union.any() else 1.0
    for t in (1, 2, 3):
        out[f"tolerant dice {t}"] = tolerant_dice(arg, g, t)
    # cleanlab's image score (segmentation.rank.get_label_quality_scores, method "softmin",
    # temperature 0.1): a softmin-weighted mean of p(given) over every pixel
    x = p_given.ravel().astype(np.float64)
    w = np.exp(-(x - x.min()) / 0.1)
    out["softmin p(given) (cleanlab)"] = float((x * w).sum() / w.sum())
    # the share of the given foreground the model supports, and of the model's the label covers
    out["precision+recall soft"] = float(0.5 * (fg[gf].mean() if gf.any() else 1.0)
                                         + 0.5 * ((fg * gf).sum() / max(fg.sum(), 1e-6)))
    out["mask smoothness (no model)"] = outline_smoothness(g)
    out["mask smoothness per class (no model)"] = mask_smoothness_per_class(g, n)
    out["outline fit (no model)"] = outline_fit_dice(d["images"][i], g)
    # the first form tried, not adopted: the given outline's contrast over the best candidate's
    contrasts = [c for _, c in candidate_contrasts(d["images"][i], g)]
    out["contrast ratio (no model)"] = contrasts[0] / max(contrasts) if contrasts and max(contrasts) > 0 else 1.0
    # convexity, for the mixture's bites (a wedge cut away) and blobs beside the object (not adopted)
    sol = solidity(g)
    out["solidity (no model)"] = 1.0 if np.isnan(sol) else sol
    out["largest object's share (no model)"] = largest_share(g)
    return out


def largest_share(mask: np.ndarray) -> float:
    """The largest 8-connected foreground object's share of the foreground (1 when empty):
    spurious blobs beside an object lower it."""
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats((mask != 0).astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return float(areas.max() / areas.sum()) if n > 1 else 1.0


def mask_smoothness_per_class(mask: np.ndarray, n_classes: int) -> float:
    """`mask_prior.outline_smoothness` over every foreground class's outline together (a
    boundary between two classes counts for both): the summed smoothed outline over the
    summed outline. Measured against the foreground-as-one prior the review uses."""
    import cv2

    from ielstudio.core.mask_prior import SMOOTHING_SIGMA, outline_length

    num = den = 0.0
    for c in range(1, n_classes):
        m = (mask == c).astype(np.float32)
        if m.any():
            num += outline_length(cv2.GaussianBlur(m, (0, 0), SMOOTHING_SIGMA) > 0.5)
            den += outline_length(m)
    return float(num / den) if den > 0 else 1.0


def held_out_agreement(d: dict) -> tuple[list[float], bool]:
    """The review's reliability verdict on the cache (`review.assess_reliability` on the
    out-of-sample images): the held-out agreement of each labelled class, and whether the
    review's score includes the shape prior (`Reliability.uses_shape_prior`)."""
    from ielstudio.core.review import assess_reliability

    oos = d["oos"].astype(bool)
    idx = np.flatnonzero(oos) if oos.any() else np.arange(len(oos))
    rel = assess_reliability([(d["probs"][i], d["given"][i].astype(np.int64)) for i in idx],
                             d["probs"].shape[1], d["thresholds"], bool(oos.any()))
    return [a for a in rel.agreement[1:] if a is not None], rel.uses_shape_prior


def _ranks(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float)


def report(name: str, d: dict) -> dict[str, float] | None:
    """Print the Spearman of every score on one cache; {score: Spearman over all images}
    (None where every given mask is correct: nothing to rank)."""
    from ielstudio.core.metrics import dice
    from ielstudio.core.review import SHAPE_PRIOR_POWER

    n = d["probs"].shape[1]
    true = np.array([dice(g, c, n) for g, c in zip(d["given"], d["clean"])])
    rows = [image_scores(d, i) for i in range(len(true))]
    oos = d["oos"].astype(bool)
    from ielstudio.core.decision import decide

    own = np.mean([dice(decide(p, d["thresholds"]), c, n) for p, c in zip(d["probs"], d["clean"])])
    print(f"\n{name}: {len(true)} images ({oos.sum()} out of sample), given Dice {true.mean():.3f}, "
          f"the model's own decision {own:.3f} (against the correct masks), "
          f"{int(d['steps'])} steps, {float(d['train_s']):.0f} s")
    if np.allclose(true, 1):
        return None
    head = ["score", "Spearman all"] + (["out of sample", "in sample"] if 0 < oos.sum() < len(oos) else [])
    table = []
    agreement, with_prior = held_out_agreement(d)
    print("held-out agreement per class: " + ", ".join(f"{a:.3f}" for a in agreement)
          + (" (the review's score includes the shape prior)" if with_prior else ""))
    current = _ranks(np.array([r["current"] for r in rows]))
    smooth = _ranks(np.array([r["mask smoothness (no model)"] for r in rows]))
    for r, a, b in zip(rows, current, smooth):
        r["rank mean of current and smoothness"] = float(a + b)
        for k in (1, 2, 3):
            r[f"current x smoothness^{k}"] = r["current"] * r["mask smoothness (no model)"] ** k
        r["current x smoothness per class^2"] = r["current"] * r["mask smoothness per class (no model)"] ** 2
        r["smoothness x outline fit (no model)"] = r["mask smoothness (no model)"] * r["outline fit (no model)"]
        for k in (1, 2):
            r[f"current x smoothness^2 x outline fit^{k}"] = (
                r["current"] * r["mask smoothness (no model)"] ** 2 * r["outline fit (no model)"] ** k)
        r["current x smoothness^2 x contrast ratio"] = (
            r["current"] * r["mask smoothness (no model)"] ** 2 * r["contrast ratio (no model)"])
        r["the review's score (review.image_score)"] = (
            r["current"] * r["mask smoothness (no model)"] ** SHAPE_PRIOR_POWER * r["outline fit (no model)"]
            if with_prior else r["current"])
        # the model's factor in other forms, where a weak model that finds no object makes
        # the hard Dice 0 whatever the label's quality (stop 38)
        for k in ("soft dice", "tolerant dice 3", "mean p(given) union", "precision+recall soft"):
            r[f"{k} x smoothness^2 x outline fit"] = (
                r[k] * r["mask smoothness (no model)"] ** 2 * r["outline fit (no model)"])
        for k in ("solidity (no model)", "largest object's share (no model)"):
            r[f"the review's score x {k.removesuffix(' (no model)')}"] = (
                r["the review's score (review.image_score)"] * r[k])
    spearman = {}
    for k in rows[0]:
        v = np.array([r[k] for r in rows])
        spearman[k] = C.spearman(v, true)
        cells = [k, C.fmt(spearman[k])]
        if len(head) > 2:
            cells += [C.fmt(C.spearman(v[oos], true[oos])), C.fmt(C.spearman(v[~oos], true[~oos]))]
        table.append(cells)
    print(C.md_table(head, table))
    return spearman


def noise_seed_of(stem: str) -> int:
    """The label-noise draw of a cache (`cache_path`'s ``-nN``; 0 without)."""
    tail = stem.rsplit("-f", 1)[-1]
    return int(tail.rsplit("-n", 1)[1]) if "-n" in tail else 0


def summary(set_name: str, by_cache: dict[str, dict[str, float]]) -> None:
    """One table over the caches of a set: each score's Spearman per cache and its mean
    over the draws of the label noise (the trainings of one draw averaged first)."""
    if not by_cache:
        return
    stems = list(by_cache)
    draws: dict[int, list[str]] = {}
    for stem in stems:
        draws.setdefault(noise_seed_of(stem), []).append(stem)
    rows = []
    for k in by_cache[stems[0]]:
        mean = np.mean([np.mean([by_cache[s][k] for s in group]) for group in draws.values()])
        rows.append([k] + [C.fmt(by_cache[s][k]) for s in stems] + [C.fmt(mean)])
    print(f"\n{set_name}: Spearman per cache, and the mean over {len(draws)} draw(s) of the label noise")
    print(C.md_table(["score"] + stems + ["mean over noise draws"], rows))


def outline_moves(name: str, d: dict, confidence: float, kind: str, image_margin: float | None = None) -> list:
    """A row: output Dice after rules 1-3, and after also applying, in images whose mask
    the model reads right (`review.tolerant_dice` >= `review.IMAGE_AGREEMENT`), every
    region it would add to (`kind` "add") or cut from ("cut") a class that is at least
    5 px thick (survives an erosion by 2 px) and over which its mean (decision-weighted)
    probability is at least `confidence`: rule 3 widened to outlines, not adopted.
    With `image_margin` the image must agree too: the region's median intensity (first
    channel), placed on the scale from the unlabelled ring around the objects (0) to
    the pixels where mask and model agree on the class (1), must exceed 0.5 + margin
    for an add and stay below 0.5 - margin for a cut."""
    import cv2

    from ielstudio.core.cleaning import CleanConfig, propose
    from ielstudio.core.decision import decide
    from ielstudio.core.metrics import dice
    from ielstudio.core.review import (IMAGE_AGREEMENT, _grown, assess_reliability, decision_probabilities,
                                       gate_changes, remove_unsupported_objects, tolerant_dice)

    probs, given, clean, th = d["probs"], d["given"].astype(np.int64), d["clean"], d["thresholds"]
    n = probs.shape[1]
    oos = d["oos"].astype(bool)
    rel = assess_reliability([(probs[i], given[i]) for i in np.flatnonzero(oos)], n, th, True)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    before, after, moved = [], [], 0
    for i in range(len(given)):
        g = given[i]
        out = gate_changes(propose(probs[i], g, CleanConfig(), th), g, probs[i], rel.reliable, th)
        out = remove_unsupported_objects(out, g, probs[i], th, d["images"][i][None])[0]
        before.append(dice(out, clean[i], n))
        decided, weighed = decide(probs[i], th), decision_probabilities(probs[i], th)
        moved_out = out.copy()
        image = d["images"][i].astype(np.float32)
        for c in range(1, n):
            if tolerant_dice(decided == c, g == c) < IMAGE_AGREEMENT:
                continue
            both, anything = (decided == c) & (g == c), (g != 0) | (decided != 0)
            ring = _grown((g == c) | (decided == c), 5) & ~anything
            region = ((decided == c) & (g == 0)) if kind == "add" else ((g == c) & (decided == 0))
            count, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
            for k in range(1, count):
                r = labels == k
                p = (weighed[c] if kind == "add" else weighed[0])[r].mean()
                if p >= confidence and cv2.erode(r.astype(np.uint8), disk).any() and (out[r] == g[r]).all():
                    if image_margin is not None:
                        if not both.any() or not ring.any():
                            continue
                        lo, hi = np.median(image[ring]), np.median(image[both])
                        t = (np.median(image[r]) - lo) / (hi - lo) if hi != lo else 0.5
                        if not (t > 0.5 + image_margin if kind == "add" else t < 0.5 - image_margin):
                            continue
                    moved_out[r] = c if kind == "add" else 0
                    moved += 1
        after.append(dice(moved_out, clean[i], n))
    return [name, kind, confidence, C.fmt(np.mean(before)), f"{np.mean(after):.3f} ({moved})"]


PROBABILITIES = (0.02, 0.05, 0.1)
AGREEMENTS = (0.7, 0.8, 0.9)


def objects(name: str, d: dict) -> list:
    """A row: output Dice against the correct masks of rules 1-2 of `core.review` alone, and
    followed by `review.remove_unsupported_objects` at each (probability, agreement), with
    the number of objects it removed."""
    from ielstudio.core.cleaning import CleanConfig, propose
    from ielstudio.core.metrics import dice
    from ielstudio.core.review import assess_reliability, gate_changes, remove_unsupported_objects

    probs, given, clean, th = d["probs"], d["given"].astype(np.int64), d["clean"], d["thresholds"]
    images = d["images"][:, None]  # (N,1,H,W): the first channel of each image
    n = probs.shape[1]
    oos = d["oos"].astype(bool)
    rel = assess_reliability([(probs[i], given[i]) for i in np.flatnonzero(oos)], n, th, True)
    gated = [gate_changes(propose(probs[i], given[i], CleanConfig(), th), given[i], probs[i], rel.reliable, th)
             for i in range(len(given))]
    cells = [name, C.fmt(np.mean([dice(g, c, n) for g, c in zip(given, clean)])),
             C.fmt(np.mean([dice(o, c, n) for o, c in zip(gated, clean)]))]
    for p in PROBABILITIES:
        for agree in AGREEMENTS:
            outs = [remove_unsupported_objects(gated[i], given[i], probs[i], th, images[i], p, agree)
                    for i in range(len(given))]
            cells.append(f"{np.mean([dice(o, c, n) for (o, _), c in zip(outs, clean)]):.3f} "
                         f"({sum(k for _, k in outs)})")
    return cells


ADD_GRID = [(conf, thick, margin) for conf in (0.8, 0.9) for thick in (3, 5) for margin in (0.15, 0.25)]


def adds(name: str, d: dict) -> list:
    """A row: output Dice against the correct masks after rules 1-3 of `core.review`, and
    followed by rule 4 (`review.add_supported_regions`, on the classes of
    `review.rule_4_classes`) at each (confidence, thickness, image margin) of ADD_GRID,
    with the number of regions it added: the probe that chose rule 4's defaults."""
    from ielstudio.core.cleaning import CleanConfig, propose
    from ielstudio.core.metrics import dice
    from ielstudio.core.review import (add_supported_regions, assess_reliability, gate_changes,
                                       remove_unsupported_objects, rule_4_classes)

    probs, given, clean, th = d["probs"], d["given"].astype(np.int64), d["clean"], d["thresholds"]
    images = d["images"][:, None].astype(np.float32)  # (N,1,H,W): the first channel of each image
    n = probs.shape[1]
    oos = d["oos"].astype(bool)
    rel = assess_reliability([(probs[i], given[i]) for i in np.flatnonzero(oos)], n, th, True)
    before = [remove_unsupported_objects(gate_changes(propose(probs[i], given[i], CleanConfig(), th), given[i],
                                                      probs[i], rel.reliable, th), given[i], probs[i], th, images[i])[0]
              for i in range(len(given))]
    cells = [name, C.fmt(np.mean([dice(o, c, n) for o, c in zip(before, clean)]))]
    for conf, thick, margin in ADD_GRID:
        outs = [add_supported_regions(before[i], given[i], probs[i], th, images[i], conf, margin, thick,
                                      rule_4_classes(rel)) for i in range(len(given))]
        cells.append(f"{np.mean([dice(o, c, n) for (o, _), c in zip(outs, clean)]):.3f} ({sum(k for _, k in outs)})")
    return cells


EDGE_MARGINS = (None, 0.0, 0.15, 0.3)


def edges(name: str, d: dict) -> list:
    """A row: output Dice against the correct masks of the whole review (rules 1-4) without
    rule 2's image check of outline moves (`review.image_backs_outline_moves`), and with
    it at each margin of EDGE_MARGINS (None: without), with the pixels the output changed
    and the share of them that now agree with the correct mask. The adopted margin is
    rule 4's (0.15), not tuned here: this probe shows what it costs on the dev sets."""
    from ielstudio.core.cleaning import CleanConfig, propose
    from ielstudio.core.metrics import dice
    from ielstudio.core.review import apply_object_rules, assess_reliability, gate_changes, image_backs_outline_moves

    probs, given, clean, th = d["probs"], d["given"].astype(np.int64), d["clean"], d["thresholds"]
    images = d["images"][:, None].astype(np.float32)  # (N,1,H,W): the first channel of each image
    n = probs.shape[1]
    oos = d["oos"].astype(bool)
    rel = assess_reliability([(probs[i], given[i]) for i in np.flatnonzero(oos)], n, th, True)
    gated = [gate_changes(propose(probs[i], given[i], CleanConfig(), th), given[i], probs[i], rel.reliable, th)
             for i in range(len(given))]
    cells = [name, C.fmt(np.mean([dice(g, c, n) for g, c in zip(given, clean)]))]
    for margin in EDGE_MARGINS:
        outs = [apply_object_rules(o if margin is None else image_backs_outline_moves(o, g, im, margin), g, pr, th,
                                   im, rel)[0] for o, g, pr, im in zip(gated, given, probs, images)]
        changed = sum(int((o != g).sum()) for o, g in zip(outs, given))
        right = sum(int(((o != g) & (o == c)).sum()) for o, g, c in zip(outs, given, clean))
        cells.append(f"{np.mean([dice(o, c, n) for o, c in zip(outs, clean)]):.3f} "
                     f"({changed} px, {right / max(changed, 1):.0%})")
    return cells


def reliability(name: str, d: dict) -> list:
    """A row: rule 1's verdict with the held-out pixel bar alone (before stop 34) and as it
    is now: with the objects' way (`review.ObjectsFound`: how many of the held-out
    images' given objects the model finds, and its outline-tolerant agreement) and the
    check on images the model trained on (up to MAX_RELIABILITY_IMAGES, spread); and the
    output Dice of the whole review (rules 1-4) against the correct masks with each."""
    from ielstudio.core.cleaning import CleanConfig, propose
    from ielstudio.core.decision import decide
    from ielstudio.core.metrics import dice
    from ielstudio.core.review import (MAX_RELIABILITY_IMAGES, RELIABLE_AGREEMENT, Reliability, apply_object_rules,
                                       assess_reliability, gate_changes, spread)

    probs, given, clean, th = d["probs"], d["given"].astype(np.int64), d["clean"], d["thresholds"]
    images = d["images"][:, None].astype(np.float32)  # (N,1,H,W): the first channel of each image
    n = probs.shape[1]
    held = np.flatnonzero(d["oos"].astype(bool))
    trained = [] if held.size == len(given) else spread(np.flatnonzero(~d["oos"].astype(bool)), MAX_RELIABILITY_IMAGES)
    rel = assess_reliability([(probs[i], given[i], images[i]) for i in held], n, th, True,
                             [(probs[i], given[i], images[i]) for i in trained])
    pixels = Reliability(rel.agreement, [True] + [a is not None and a >= RELIABLE_AGREEMENT
                                                  for a in rel.agreement[1:]], True, rel.n_images)

    def output(r: Reliability) -> str:
        outs = []
        for pr, g, im in zip(probs, given, images):
            o = gate_changes(propose(pr, g, CleanConfig(), th), g, pr, r.reliable, th, image=im)
            outs.append(apply_object_rules(o, g, pr, th, im, r)[0])
        scores = [dice(o, c, n) for o, c in zip(outs, clean)]
        return f"{np.mean(scores):.3f} (min {np.min(scores):.3f})"

    def verdict(r: Reliability) -> str:
        return " ".join("yes" if ok else "no" for ok in r.reliable[1:])

    objects = " ".join("–" if o is None else f"{o.found}/{o.given}"
                       + (f" (+{o.background} background)" if o.background else "") + f", {o.tolerant_agreement:.2f}"
                       for o in rel.objects[1:])
    on_trained = " ".join("–" if a is None else f"{a:.2f}" for a in rel.trained_agreement[1:]) or "–"
    return [name, len(held), " ".join("–" if a is None else f"{a:.2f}" for a in rel.agreement[1:]), objects,
            on_trained, verdict(pixels), verdict(rel), C.fmt(np.mean([dice(g, c, n) for g, c in zip(given, clean)])),
            C.fmt(np.mean([dice(decide(pr, th), c, n) for pr, c in zip(probs, clean)])), output(pixels),
            output(rel)]


OBJECT_CONTRASTS = (None, 0.5, 1.0, 1.5, 2.0)
NUDGE_SHARES = (0.0, 0.02, 0.05, 0.1)


def _reviewed(d: dict):
    """What the whole review of a cache needs: (probs, given, clean, thresholds, images
    (N,1,H,W): the first channel of each), the number of classes and rule 1's verdict
    (held-out images, and the trained ones as `reliability` checks them)."""
    from ielstudio.core import review as R

    probs, given, clean, th = d["probs"], d["given"].astype(np.int64), d["clean"], d["thresholds"]
    images = d["images"][:, None].astype(np.float32)
    n = probs.shape[1]
    held = np.flatnonzero(d["oos"].astype(bool))
    trained = [] if held.size == len(given) else R.spread(np.flatnonzero(~d["oos"].astype(bool)),
                                                          R.MAX_RELIABILITY_IMAGES)
    rel = R.assess_reliability([(probs[i], given[i], images[i]) for i in held], n, th, True,
                               [(probs[i], given[i], images[i]) for i in trained])
    return probs, given, clean, th, images, n, rel


def _output_cell(outs: list, given: np.ndarray, clean: np.ndarray, n: int, digits: int = 3) -> str:
    """Output Dice against the correct masks: 'mean (min; pixels changed, share right)'."""
    from ielstudio.core.metrics import dice

    scores = [dice(o, c, n) for o, c in zip(outs, clean)]
    changed = sum(int((o != g).sum()) for o, g in zip(outs, given))
    right = sum(int(((o != g) & (o == c)).sum()) for o, g, c in zip(outs, given, clean))
    return f"{np.mean(scores):.{digits}f} (min {np.min(scores):.3f}; {changed} px, {right / max(changed, 1):.0%})"


def object_image(name: str, d: dict) -> list:
    """A row: output Dice against the correct masks (mean, min) of the whole review (rules
    1-4, as `reliability` runs it) without the image's say on objects removed or added
    whole, or on thick parts of them (`review.image_backs_object_changes` in rule 2,
    `review.object_contrast` in rule 3), and with it at each contrast of OBJECT_CONTRASTS
    (None: without), with the pixels the output changed and the share of them that now
    agree with the correct mask. The default, `review.OBJECT_CONTRAST` (1.0, one pooled
    standard deviation), was set by reasoning, not by this sweep, which shows what
    moving it would do on the dev sets."""
    from ielstudio.core import review as R
    from ielstudio.core.cleaning import CleanConfig, propose
    from ielstudio.core.metrics import dice

    probs, given, clean, th, images, n, rel = _reviewed(d)
    cells = [name, " ".join("yes" if ok else "no" for ok in rel.reliable[1:]),
             C.fmt(np.mean([dice(g, c, n) for g, c in zip(given, clean)]))]
    for t in OBJECT_CONTRASTS:
        outs = [R.apply_object_rules(R.gate_changes(propose(pr, g, CleanConfig(), th), g, pr, rel.reliable, th,
                                                    image=im, object_contrast=t),
                                     g, pr, th, im, rel, float("inf") if t is None else t)[0]
                for pr, g, im in zip(probs, given, images)]
        cells.append(_output_cell(outs, given, clean, n))
    return cells


def _pure_changed_regions(proposal, given, pad, slices=0):
    """Rule 2's object check before stop 39: only changed regions that are wholly a removal
    or wholly an addition were judged; one with both (an outline shifted, a part removed
    with a few pixels added beside it) passed unjudged."""
    from ielstudio.core import review as R

    for box, region in R._changed_regions(proposal, given, pad, slices):
        was, now = given[box][region], proposal[box][region]
        if ((now == 0) & (was != 0)).all() or ((was == 0) & (now != 0)).all():
            yield box, region


def parts(name: str, d: dict) -> list:
    """A row: output Dice against the correct masks of the whole review (rules 1-4) with
    rule 2's object check (`review.image_backs_object_changes`) as before stop 39 (mixed
    changed regions unjudged, `_pure_changed_regions`) and as now, with removals and
    additions taken apart (`review._removals_and_additions`)."""
    from unittest import mock

    from ielstudio.core import review as R
    from ielstudio.core.cleaning import CleanConfig, propose
    from ielstudio.core.metrics import dice

    probs, given, clean, th, images, n, rel = _reviewed(d)
    cells = [name, " ".join("yes" if ok else "no" for ok in rel.reliable[1:]),
             C.fmt(np.mean([dice(g, c, n) for g, c in zip(given, clean)]))]

    def outputs():
        return [R.apply_object_rules(R.gate_changes(propose(pr, g, CleanConfig(), th), g, pr, rel.reliable, th,
                                                    image=im), g, pr, th, im, rel)[0]
                for pr, g, im in zip(probs, given, images)]

    with mock.patch.object(R, "_removals_and_additions", _pure_changed_regions):
        cells.append(_output_cell(outputs(), given, clean, n))
    cells.append(_output_cell(outputs(), given, clean, n))
    return cells


def nudges(name: str, d: dict) -> list:
    """A row: output Dice against the correct masks (mean, min) of the whole review (rules
    1-4, as `object_image` runs it) with rule 2's outline moves kept whatever they change
    of their objects (0), and set back where, together, they change none of their
    objects by at least each share of NUDGE_SHARES (`review.objects_moved_enough`), with
    the pixels the output changed and the share of them that now agree with the correct
    mask."""
    from ielstudio.core import review as R
    from ielstudio.core.cleaning import CleanConfig, propose
    from ielstudio.core.metrics import dice

    probs, given, clean, th, images, n, rel = _reviewed(d)
    cells = [name, " ".join("yes" if ok else "no" for ok in rel.reliable[1:]),
             C.fmt(np.mean([dice(g, c, n) for g, c in zip(given, clean)]))]
    for share in NUDGE_SHARES:
        outs = [R.apply_object_rules(R.gate_changes(propose(pr, g, CleanConfig(), th), g, pr, rel.reliable, th,
                                                    image=im, min_change=share), g, pr, th, im, rel)[0]
                for pr, g, im in zip(probs, given, images)]
        cells.append(_output_cell(outs, given, clean, n, digits=4))
    return cells


FIT_GAINS = (1.0, 1.2, 1.5, 2.0, 3.0)


def fits(name: str, d: dict) -> list:
    """A row: output Dice against the correct masks (mean, min; pixels changed, share
    right) when each given mask is replaced by its best-fitting outline
    (`boundary_fit.best_fitting_outline`: grown, shrunk or shifted by a few px) wherever
    that outline's contrast exceeds the given outline's by at least each factor of
    FIT_GAINS. No model takes part: this asks whether the image alone is evidence enough
    to move an outline where the model is not reliable. Binary caches only."""
    from ielstudio.core.boundary_fit import best_fitting_outline, candidate_contrasts
    from ielstudio.core.metrics import dice

    given, clean, n = d["given"].astype(np.int64), d["clean"], d["probs"].shape[1]
    if n != 2:
        return [name, "–", "(binary masks only)"] + ["–"] * len(FIT_GAINS)
    best = []
    for img, g in zip(d["images"], given):
        contrasts = [c for _, c in candidate_contrasts(img, g)]
        best.append((contrasts[0], max(contrasts)) if contrasts else (0.0, 0.0))
    fitted = [best_fitting_outline(img, g).astype(np.int64) for img, g in zip(d["images"], given)]
    cells = [name, str(len(given)), C.fmt(np.mean([dice(g, c, n) for g, c in zip(given, clean)]))]
    for gain in FIT_GAINS:
        outs = [f if top > own and top >= gain * own else g for f, g, (own, top) in zip(fitted, given, best)]
        cells.append(_output_cell(outs, given, clean, n))
    return cells


HULL_MARGINS = (0.15, 0.3, 0.45)


def hull_bites(image: np.ndarray, given: np.ndarray, margin: float, thickness: int = 5) -> tuple[np.ndarray, int]:
    """(``given`` (binary) with its objects' bites filled, how many): a bite is a connected
    part of an object's convex hull that the mask leaves out, at least ``thickness`` px
    thick, whose median lies above 0.5 + ``margin`` on the image's line from the unlabelled
    ring around the hull (0) to the object (1), as rule 4 asks of a region it adds
    (`review.image_position`), but with no model. Objects under 20 px are left alone."""
    import cv2

    from ielstudio.core.review import SURROUNDING, _grown, _survives_erosion, image_position

    out, added = given.copy(), 0
    img = np.asarray(image, np.float32)[None]
    m = (given != 0).astype(np.uint8)
    n, labels = cv2.connectedComponents(m, connectivity=8)
    for k in range(1, n):
        obj = (labels == k).astype(np.uint8)
        if obj.sum() < 20:
            continue
        contours, _ = cv2.findContours(obj, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        hull = np.zeros_like(obj)
        cv2.fillPoly(hull, [cv2.convexHull(np.vstack(contours))], 1)
        hull = hull.astype(bool)
        ring = _grown(hull, SURROUNDING) & ~hull & (m == 0)
        nb, bites = cv2.connectedComponents((hull & (m == 0)).astype(np.uint8), connectivity=8)
        if nb <= 1 or not ring.any():
            continue
        for j in range(1, nb):
            bite = bites == j
            if (_survives_erosion(bite, thickness // 2)
                    and image_position(img, bite, ring, obj.astype(bool)) > 0.5 + margin):
                out[bite] = 1
                added += 1
    return out, added


def hulls(name: str, d: dict) -> list:
    """A row: output Dice against the correct masks (mean, min; pixels changed, share
    right; [bites filled]) when every binary mask's bites are filled by the image alone
    (`hull_bites`) at each margin of HULL_MARGINS."""
    from ielstudio.core.metrics import dice

    given, clean, n = d["given"].astype(np.int64), d["clean"], d["probs"].shape[1]
    if n != 2:
        return [name, "(binary masks only)"] + ["–"] * len(HULL_MARGINS)
    cells = [name, C.fmt(np.mean([dice(g, c, n) for g, c in zip(given, clean)]))]
    for margin in HULL_MARGINS:
        filled = [hull_bites(img, g, margin) for img, g in zip(d["images"], given)]
        cells.append(_output_cell([o for o, _ in filled], given, clean, n) + f" [{sum(a for _, a in filled)}]")
    return cells


def weak_models(set_name: str, labels: str, steps: int, seed: int) -> list:
    """A row: one under-trained model (`steps` optimiser steps, the automatic budget's
    hold-out) on a dev set, rule 1's verdict on it (`review.assess_reliability` with the
    trained images, as `review_samples` calls it) and the whole review's output Dice
    against the correct masks: does the objects' way trust a model whose outlines are
    still poor, and what does that do to correct masks?"""
    from ielstudio.core.cleaning import CleanConfig, calibration_subset, load_dataset, propose, thresholds_for
    from ielstudio.core.decision import decide
    from ielstudio.core.imageio import read_mask
    from ielstudio.core.metrics import dice
    from ielstudio.core.review import apply_object_rules, assess_reliability, gate_changes
    from ielstudio.core.training import TrainConfig, predict

    rs = sets()[set_name]
    loaded = load_dataset(rs.images, rs.noisy if labels == "noisy" else rs.clean)
    samples = loaded.samples
    done = C.fit(samples, TrainConfig(max_steps=steps, min_steps=0, seed=seed, eval_every=10))
    held = set(done.history.get("holdout", []))
    probs = {s.name: predict(done.model, s.image) for s in samples}
    th = thresholds_for((probs[s.name] for s in calibration_subset(list(samples))), CleanConfig())
    rel = assess_reliability([(probs[s.name], s.mask, s.image) for s in samples if s.name in held], 2, th, True,
                             [(probs[s.name], s.mask, s.image) for s in samples if s.name not in held])
    given, model, out = [], [], []
    for s in samples:
        truth = read_mask(rs.clean / s.mask_path.name, loaded.encoding)[0].astype(np.int64)
        p = probs[s.name]
        o = gate_changes(propose(p, s.mask, CleanConfig(), th), s.mask, p, rel.reliable, th, image=s.image)
        o = apply_object_rules(o, s.mask, p, th, s.image, rel)[0]
        given.append(dice(s.mask, truth, 2)), model.append(dice(decide(p, th), truth, 2)), out.append(dice(o, truth, 2))
    o = rel.objects[1]
    return [f"{set_name}, {labels}", steps, seed, C.fmt(rel.agreement[1]),
            "–" if o is None else f"{o.found}/{o.given}" + (f" (+{o.background})" if o.background else ""),
            C.fmt(rel.trained_agreement[1] if rel.trained_agreement else None), "yes" if rel.reliable[1] else "no",
            C.fmt(np.mean(given)), C.fmt(np.mean(model)), f"{np.mean(out):.3f} (min {np.min(out):.3f})"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["train", "score", "objects", "adds", "outlines", "edges", "reliability", "weak",
                                     "objects-image", "nudges", "fits", "hulls", "parts"])
    ap.add_argument("--set", default="dev")
    ap.add_argument("--labels", default="noisy,clean")
    ap.add_argument("--folds", default="1,3")
    ap.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1")
    ap.add_argument("--noise-seeds", default="0",
                    help="draws of the label noise (train: the same slices with other noisy masks), e.g. 0,1,2")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    if a.what == "train":
        if not (a.set.endswith("dev") or a.set == "nuclei-sample"):  # lesions-dev ends so too
            ap.error("probe development sets only (dev, brain-multiclass-dev; the bundled nuclei chose earlier "
                     "defaults too)")
        noise_seeds = [int(n) for n in a.noise_seeds.split(",")]
        for n in noise_seeds:
            real_sets(n)
        jobs = [(a.set, lab, int(k), int(seed), n) for lab in a.labels.split(",") for k in a.folds.split(",")
                for seed in a.seeds.split(",") for n in noise_seeds]
        threads = max(1, (os.cpu_count() or 1) // a.jobs)
        with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:  # no fork after building sets
            for line in pool.map(train_one, *list(zip(*jobs))[:3], [threads] * len(jobs), [j[3] for j in jobs],
                                 [j[4] for j in jobs]):
                print(line, flush=True)
        return 0
    if a.what == "weak":  # trains its own small models: no cache
        C.limit_threads(os.cpu_count() or 1)
        rows = [weak_models(name, labels, steps, seed) for name, labels in
                (("nuclei-sample", "clean"), ("nuclei-mixture-dev", "noisy"))
                for steps in (20, 40, 80) for seed in (0, 1)]
        print(C.md_table(["set, masks", "steps", "seed", "held-out agreement", "objects found (background-like)",
                          "on trained images", "reliable", "given", "model's decision", "output"], rows))
        return 0
    paths = sorted(path for name in a.set.split(",") for path in CACHE.glob(f"{name}-*.npz"))
    if a.what == "score":
        by_cache = {path.stem: report(path.stem, load(path)) for path in paths}
        summary(a.set, {k: v for k, v in by_cache.items() if v is not None})
    elif a.what == "outlines":
        rows = []
        for path in paths:
            d = load(path)
            for kind in ("add", "cut"):
                for conf in (0.8, 0.9, 0.95):
                    for margin in (None, 0.15):
                        row = outline_moves(path.stem, d, conf, kind, margin)
                        rows.append(row[:3] + [margin if margin is not None else "–"] + row[3:])
        print(C.md_table(["cache", "region", "mean p >=", "image margin", "rules 1-3", "with outline moves (regions)"],
                         rows))
    elif a.what == "reliability":
        print(C.md_table(["cache", "held-out images", "held-out agreement", "objects found / given, tolerant agreement",
                          "agreement on trained images", "reliable: held-out pixel bar (before)",
                          "reliable: with objects and trained images (default)", "given", "model's decision",
                          "output: before", "output: default"],
                         [reliability(path.stem, load(path)) for path in paths]))
    elif a.what == "objects-image":
        print(C.md_table(["cache", "reliable", "given", "without"] + [f"contrast {t}" for t in OBJECT_CONTRASTS[1:]],
                         [object_image(path.stem, load(path)) for path in paths]))
    elif a.what == "parts":
        print(C.md_table(["cache", "reliable", "given", "before stop 39 (mixed regions unjudged)",
                          "removals and additions taken apart (default)"],
                         [parts(path.stem, load(path)) for path in paths]))
    elif a.what == "nudges":
        print(C.md_table(["cache", "reliable", "given"] + [f"min change {t}" for t in NUDGE_SHARES],
                         [nudges(path.stem, load(path)) for path in paths]))
    elif a.what == "fits":
        print(C.md_table(["cache", "images", "given"] + [f"contrast x {g}" for g in FIT_GAINS],
                         [fits(path.stem, load(path)) for path in paths]))
    elif a.what == "hulls":
        print(C.md_table(["cache", "given"] + [f"margin {m}" for m in HULL_MARGINS],
                         [hulls(path.stem, load(path)) for path in paths]))
    elif a.what == "edges":
        print(C.md_table(["cache", "given", "no image check"] + [f"margin {m}" for m in EDGE_MARGINS[1:]],
                         [edges(path.stem, load(path)) for path in paths]))
    elif a.what == "adds":
        print(C.md_table(["cache", "rules 1-3"] + [f"p >= {p}, {t} px, margin {m}" for p, t, m in ADD_GRID],
                         [adds(path.stem, load(path)) for path in paths]))
    else:
        print(C.md_table(["cache", "given", "rules 1-2"] + [f"p < {p}, agreement >= {g}" for p in PROBABILITIES
                                                             for g in AGREEMENTS],
                         [objects(path.stem, load(path)) for path in paths]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
