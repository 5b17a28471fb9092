"""Shared harness of the benchmarks: data sets, training runs, metrics, baselines, output.

Everything here calls the public functions of `ielstudio.core` (training, noise,
synthetic, metrics, cleaning, dataset); it adds only what the app does not need:
the classical morphological baseline, the cleanlab peer, rank statistics and
Markdown/JSON/plot output. Functions take and return plain numpy arrays.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from a checkout without install
    sys.path.insert(0, str(ROOT))

from ielstudio.core import metrics  # noqa: E402
from ielstudio.core.cleaning import (  # noqa: E402
    CleanConfig,
    calibration_subset,
    label_quality,
    postprocess,
    propose,
    thresholds_for,
)
from ielstudio.core.dataset import Sample, image_to_chw, load_samples, scan_pairs  # noqa: E402
from ielstudio.core.imageio import MaskEncoding, atomic_write_bytes, atomic_write_text, normalize_intensity  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------- machine


def limit_threads(n: int = 1) -> None:
    """Pin torch/OpenCV to `n` threads (benchmarks run several workers side by side)."""
    import torch

    torch.set_num_threads(max(1, int(n)))
    cv2.setNumThreads(max(1, int(n)))


def machine_facts() -> dict[str, Any]:
    """CPU model, core count, torch/python versions and GPU (if any): printed with every result."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import cleanlab

        facts["cleanlab"] = cleanlab.__version__
    except ImportError:
        facts["cleanlab"] = None
    from importlib.metadata import PackageNotFoundError, version

    for package in IMAGE_LIBRARIES:  # the real-data images are resampled with these: a new version, other pixels
        try:
            facts[package] = version(package)
        except PackageNotFoundError:
            facts[package] = None
    return facts


#: libraries whose versions `machine_facts` records beside torch's
IMAGE_LIBRARIES = ("numpy", "opencv-python-headless", "nibabel", "pynrrd")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024**2 if sys.platform == "darwin" else r / 1024


# --------------------------------------------------------------------------- data


@dataclass
class DataSet:
    """Images (C_in,H,W) normalised like the app loads them, clean masks, and optionally given noisy masks."""

    name: str
    names: list[str]
    images: list[np.ndarray]
    clean: list[np.ndarray]
    n_classes: int
    convex_classes: tuple[int, ...] = ()
    given: list[np.ndarray] | None = None  # the bundled sample's own noisy masks
    meta: dict = field(default_factory=dict)


#: Per-kind settings: which classes are convex, and the IEL strength (iel-method.md: thin
#: structures need weaker heat; vessels must never get the curve-motion layer).
PROFILES: dict[str, dict[str, Any]] = {
    "nuclei": {"convex_classes": (1,), "heat_dt": 0.1, "heat_steps": 20, "fill_holes": True},
    # lesions: class 1 is the body *around* the core (a ring), only the core (2) is convex
    "lesions": {"convex_classes": (2,), "heat_dt": 0.1, "heat_steps": 20, "fill_holes": True},
    "vessels": {"convex_classes": (), "heat_dt": 0.1, "heat_steps": 10, "fill_holes": False},
}


def as_model_input(image: np.ndarray) -> np.ndarray:
    """A generator's (H,W) image in [0,1] -> (C_in,H,W) float32, normalised as `load_samples` does."""
    return image_to_chw(normalize_intensity(np.asarray(image, dtype=np.float32)))


def generated_set(kind: str, n: int, size: int, seed: int) -> DataSet:
    """`n` images of `core.synthetic.make_<kind>` at `size` px with their clean masks."""
    from ielstudio.core import synthetic

    make = {"nuclei": synthetic.make_nuclei, "lesions": synthetic.make_lesions, "vessels": synthetic.make_vessels}[kind]
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        img, mask = make(size, rng)
        images.append(as_model_input(img))
        masks.append(np.asarray(mask, dtype=np.int64))
    n_classes = 3 if kind == "lesions" else 2
    return DataSet(kind, [f"{kind}_{i:03d}" for i in range(n)], images, masks, n_classes,
                   PROFILES[kind]["convex_classes"], meta={"kind": kind, "size": size, "seed": seed})


def bundled_set(name: str) -> DataSet:
    """The bundled sample `resources/sample/<name>`: images, its noisy masks and its clean masks."""
    from ielstudio.core.paths import sample_dir

    root = sample_dir(name)
    noisy = load_samples(scan_pairs(root / "images", root / "masks"))
    clean = load_samples(scan_pairs(root / "images", root / "clean"))
    by_name = {s.name: s for s in clean.samples}
    keep = [s for s in noisy.samples if s.name in by_name]
    if not keep:
        raise RuntimeError(f"bundled sample {root} has no image with both a noisy and a clean mask")
    n_classes = max(noisy.n_classes, clean.n_classes)
    kind = "lesions" if "lesion" in name else "vessels" if "vessel" in name else "nuclei"
    return DataSet(f"sample-{name}", [s.name for s in keep], [s.image for s in keep],
                   [by_name[s.name].mask for s in keep], n_classes, PROFILES[kind]["convex_classes"],
                   given=[s.mask for s in keep], meta={"kind": kind, "path": str(root)})


def noise_types() -> list[str]:
    from ielstudio.core.noise import NOISE_TYPES

    return list(NOISE_TYPES)


def noised(clean: Sequence[np.ndarray], kind: str, level: int, seed: int, n_classes: int) -> list[np.ndarray]:
    """Every clean mask corrupted by `core.noise.apply_noise(kind, level)`, seeded."""
    from ielstudio.core.noise import apply_noise

    rng = np.random.default_rng(seed)
    return [np.asarray(apply_noise(m, kind, level, rng, n_classes), dtype=np.int64) for m in clean]


def mixed_noise(clean: Sequence[np.ndarray], seed: int, n_classes: int) -> tuple[list[np.ndarray], list[str]]:
    """Each mask gets its own noise type and level 0..3 (0 = left clean): a set whose labels
    range from perfect to bad, for testing how well scores rank the worst labels."""
    from ielstudio.core.noise import apply_noise

    rng = np.random.default_rng(seed)
    kinds = noise_types()
    out, desc = [], []
    for m in clean:
        level = int(rng.integers(0, 4))
        if level == 0:
            out.append(np.array(m, dtype=np.int64, copy=True))
            desc.append("clean")
            continue
        kind = kinds[int(rng.integers(len(kinds)))]
        out.append(np.asarray(apply_noise(m, kind, level, rng, n_classes), dtype=np.int64))
        desc.append(f"{kind}{level}")
    return out, desc


def make_samples(names: Sequence[str], images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 n_classes: int) -> list[Sample]:
    """`core.dataset.Sample`s (index-encoded masks) for `core.training.train`."""
    enc = MaskEncoding.gray(n_classes, 255 if n_classes == 2 else 1)
    return [Sample(n, np.asarray(i, dtype=np.float32), np.asarray(m, dtype=np.int64), enc)
            for n, i, m in zip(names, images, masks)]


# --------------------------------------------------------------------------- training


def fixed_budget(steps: int, **kw):
    """A TrainConfig that trains exactly `steps` optimiser steps (no automatic budget)."""
    from ielstudio.core.training import TrainConfig

    kw.setdefault("eval_every", max(1, steps))  # one agreement check at the end, not every 25 steps
    return TrainConfig(epochs=1e9, max_steps=steps, min_steps=min(steps, kw.pop("min_steps", 0)), **kw)


def fit(samples: Sequence[Sample], config, step_times: list[float] | None = None, max_seconds: float | None = None):
    """Run `core.training.train` to the end; return its DoneEvent. If `step_times` is a list,
    the wall time of each optimiser step (between consecutive StepEvents) is appended to it.
    `max_seconds` cancels training (through train's `cancel`) once that much time has passed."""
    from ielstudio.core.training import DoneEvent, StepEvent, train

    t0 = time.perf_counter()
    cancel = None if max_seconds is None else (lambda: time.perf_counter() - t0 > max_seconds)
    done, last = None, time.perf_counter()
    for ev in train(samples, config, cancel=cancel):
        now = time.perf_counter()
        if isinstance(ev, StepEvent) and step_times is not None:
            step_times.append(now - last)
        if isinstance(ev, DoneEvent):
            done = ev
        last = time.perf_counter()  # time spent in evaluations/snapshots is not a step
    if done is None:
        raise RuntimeError("training ended without a DoneEvent")
    return done


def drain(generator) -> tuple[list, Any]:
    """(every item a generator yields, the value it returns): e.g. a review's results and summary."""
    items = []
    try:
        while True:
            items.append(next(generator))
    except StopIteration as stop:
        return items, stop.value


def probabilities(done, samples: Sequence[Sample], out_of_sample: bool = True) -> list[np.ndarray]:
    """(C,H,W) probabilities per sample (`core.training.predict_dataset`), in sample order."""
    from ielstudio.core.training import predict_dataset

    probs = predict_dataset(done.model, samples, out_of_sample=out_of_sample)
    return [probs[s.name] for s in samples]


def thresholds(probs: Sequence[np.ndarray], config: CleanConfig) -> np.ndarray | None:
    """The data set's decision thresholds, chosen as `ielstudio clean` chooses them."""
    return thresholds_for(calibration_subset(list(probs)), config)


def proposals(probs: Sequence[np.ndarray], given: Sequence[np.ndarray], config: CleanConfig) -> list[np.ndarray]:
    """`core.cleaning.propose` per image, at the data set's thresholds (as `ielstudio clean`)."""
    t = thresholds(probs, config)
    return [propose(p, g, config, t) for p, g in zip(probs, given)]


def quality_scores(probs: Sequence[np.ndarray], given: Sequence[np.ndarray], config: CleanConfig) -> list[float]:
    """`core.cleaning.label_quality` per image, at the data set's thresholds (as `ielstudio clean`)."""
    t = thresholds(probs, config)
    return [label_quality(p, g, t)[0] for p, g in zip(probs, given)]


# --------------------------------------------------------------------------- baselines


@dataclass(frozen=True)
class Morphology:
    """Classical clean-up: per class opening then closing (elliptic kernels), then speck removal
    and hole filling (`core.cleaning.postprocess`). Radii 0 switch a step off."""

    open_r: int = 1
    close_r: int = 1
    min_area: int = 10

    def __call__(self, mask: np.ndarray, n_classes: int) -> np.ndarray:
        out = np.array(mask, dtype=np.int64, copy=True)
        for c in range(1, n_classes):
            m = (out == c).astype(np.uint8)
            if self.open_r:
                k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * self.open_r + 1,) * 2)
                opened = cv2.morphologyEx(m, cv2.MORPH_OPEN, k)
                out[(m == 1) & (opened == 0)] = 0
                m = opened
            if self.close_r:
                k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * self.close_r + 1,) * 2)
                closed = cv2.morphologyEx(m, cv2.MORPH_CLOSE, k)
                out[(closed == 1) & (out == 0)] = c
        return postprocess(out, CleanConfig(min_area=self.min_area, fill_holes=True))


def tune_morphology(given: Sequence[np.ndarray], clean: Sequence[np.ndarray], n_classes: int,
                    radii=(0, 1, 2, 3), areas=(0, 10, 30, 60)) -> tuple[Morphology, float]:
    """Grid-search the classical clean-up once (against clean masks; generous to the baseline)."""
    best, best_d = Morphology(0, 0, 0), -1.0
    for o in radii:
        for c in radii:
            for a in areas:
                m = Morphology(o, c, a)
                d = float(np.mean([metrics.dice(m(g, n_classes), t, n_classes) for g, t in zip(given, clean)]))
                if d > best_d + 1e-9:
                    best, best_d = m, d
    return best, best_d


def cleanlab_run(given: Sequence[np.ndarray], probs: Sequence[np.ndarray]) -> dict[str, Any]:
    """cleanlab's segmentation tools as its users run them: `filter.find_label_issues` flags
    pixels, flagged pixels take the model's argmax; `rank.get_label_quality_scores` scores images.

    Images of different sizes are padded (label 0, probability 1 on class 0) to one size,
    as cleanlab needs an (N,H,W) array; padded pixels are dropped again afterwards.
    """
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    n_cls = probs[0].shape[0]
    h = max(g.shape[0] for g in given)
    w = max(g.shape[1] for g in given)
    labels = np.zeros((len(given), h, w), np.int64)
    pp = np.zeros((len(given), n_cls, h, w), np.float32)
    pp[:, 0] = 1.0
    for i, (g, p) in enumerate(zip(given, probs)):
        labels[i, : g.shape[0], : g.shape[1]] = g
        pp[i, :, : g.shape[0], : g.shape[1]] = p
    pp /= pp.sum(1, keepdims=True)
    issues = find_label_issues(labels, pp, n_jobs=1, verbose=False)
    scores, _ = get_label_quality_scores(labels, pp, n_jobs=1, verbose=False)
    flags, fixed = [], []
    for i, (g, p) in enumerate(zip(given, probs)):
        f = issues[i, : g.shape[0], : g.shape[1]]
        flags.append(f)
        fixed.append(np.where(f, p.argmax(0), g).astype(np.int64))
    return {"flags": flags, "fixed": fixed, "scores": [float(s) for s in scores]}


# --------------------------------------------------------------------------- scoring


def mask_scores(preds: Sequence[np.ndarray], clean: Sequence[np.ndarray], n_classes: int,
                convex_classes: Sequence[int] = ()) -> dict[str, Any]:
    """Mean over images of Dice and IoU (foreground mean and per class), boundary F1 (2 px),
    and the mean solidity of the convex classes."""
    dice = np.array([metrics.dice(p, t, n_classes, per_class=True) for p, t in zip(preds, clean)])
    iou = np.array([metrics.iou(p, t, n_classes, per_class=True) for p, t in zip(preds, clean)])
    fg = slice(1, n_classes)
    out = {
        "dice": float(dice[:, fg].mean()),
        "iou": float(iou[:, fg].mean()),
        "dice_per_class": [float(x) for x in dice.mean(0)],
        "iou_per_class": [float(x) for x in iou.mean(0)],
        "bf1": float(np.mean([metrics.boundary_f1(p, t, tol=2, n_classes=n_classes) for p, t in zip(preds, clean)])),
    }
    if convex_classes:
        sol = [metrics.solidity(p, tuple(convex_classes)) for p in preds]
        sol = [s for s in sol if not math.isnan(s)]
        out["solidity"] = float(np.mean(sol)) if sol else float("nan")
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (NaN when either side is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def top_precision(scores: Sequence[float], truth: Sequence[float], share: float = 0.1) -> float:
    """Of the ceil(share*n) images a score ranks worst (lowest), the fraction that are among
    the ceil(share*n) truly worst (lowest true Dice; ties at the cut count as worst)."""
    scores, truth = np.asarray(scores, float), np.asarray(truth, float)
    k = max(1, math.ceil(share * len(scores)))
    flagged = np.argsort(scores, kind="stable")[:k]
    cut = np.sort(truth)[k - 1]
    return float(np.mean(truth[flagged] <= cut + 1e-12))


def ranking(scores: Sequence[float], true_dice: Sequence[float]) -> dict[str, float]:
    return {"spearman": spearman(scores, true_dice), "top10_precision": top_precision(scores, true_dice)}


def pixel_flag_quality(flags: Sequence[np.ndarray], given: Sequence[np.ndarray],
                       clean: Sequence[np.ndarray]) -> dict[str, float]:
    """Precision/recall of flagged pixels against the truly wrong pixels (given != clean)."""
    tp = fp = fn = 0
    for f, g, t in zip(flags, given, clean):
        wrong = g != t
        tp += int((f & wrong).sum())
        fp += int((f & ~wrong).sum())
        fn += int((~f & wrong).sum())
    return {"precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan")}


# --------------------------------------------------------------------------- output


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (floats with 3 decimals, NaN/None as '–')."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(data), indent=1) + "\n")


def write_text(path: str | Path, text: str) -> None:
    atomic_write_text(path, text)


def save_figure(fig, path: str | Path) -> None:
    """Save a matplotlib figure as PNG, atomically."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def rule_1_details(row: dict) -> str:
    """What else rule 1 weighed (stop 34): the held-out objects found where they were
    asked (and the missed ones the image shows as background, counted apart), and the
    agreement on the images the model trained on; empty for older rows."""
    objects = [o for o in row.get("objects") or [] if o]
    trained = [a for a in row.get("trained_agreement") or [] if a is not None]
    parts = ([", ".join(f"{o['found']}/{o['given']} objects"
                        + (f" (+{o['background']} background-like)" if o.get("background") else "")
                        + f", {o['tolerant_agreement']:.2f}" for o in objects)]
             if objects else []) + ([f"trained {max(trained):.3f}"] if trained else [])
    return f" ({'; '.join(parts)})" if parts else ""
