"""How well does IEL Studio clean noisy masks, against honest baselines?

    python benchmarks/quality.py --quick            # < 10 min on 2 CPU cores
    python benchmarks/quality.py                    # full grid (hours on 2 cores)
    python benchmarks/quality.py --quick --out DIR --jobs 2

Data: the bundled sample (its own noisy masks, and its clean masks re-noised by every
generator of `core.noise`) and generated sets from `core.synthetic` (nuclei: convex;
lesions: two foreground classes; vessels: thin), each noised by every noise type at
several levels, plus a "mixed" case (each image its own noise type and level 0..3).

Methods on the same data with the same fixed training budget: the noisy masks as given;
a classical clean-up (opening/closing + speck removal + hole filling, tuned once);
the network's proposal trained without IEL, with the heat IEL, and with heat +
curve-motion IEL on convex classes; cleanlab (find_label_issues + flip to the heat
network's argmax). Metrics against the clean masks: Dice, IoU per class, boundary
F1 (2 px), solidity of convex classes; label-quality ranking (Spearman with the true
Dice of the given mask, precision of the worst 10 %); cleanlab's pixel flags.

Also: the issue-2 table (noisy / no-IEL / heat-IEL Dice per noise type at two levels
on the sample), at the fixed budget and, over several seeds, at the automatic budget
that `ielstudio clean` uses by default (task kind "auto"); the automatic training budget against a fixed sweep of budgets across
dataset sizes, and k-fold (out-of-sample) against in-sample proposals.

Writes <out>/quality[-quick].md (summary), quality[-quick]_<dataset>.md (all rows),
quality[-quick].json (raw) and quality[-quick]_dice_vs_level.png.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

METHODS = ["noisy", "classical", "no-IEL", "heat", "heat+convex", "cleanlab"]
BASELINES = ["noisy", "classical", "no-IEL", "cleanlab"]
IEL_METHODS = ["heat", "heat+convex"]
GENERATED = ["nuclei", "lesions", "vessels"]
SAMPLES = ["nuclei", "lesions"]


@dataclass(frozen=True)
class Settings:
    quick: bool
    gen_n: int          # images per generated set
    gen_size: int       # px
    levels: tuple       # noise levels of the generated sets (empty: only the "mixed" case)
    sample_levels: tuple  # noise levels on the bundled sample (issue-2 table: at least two)
    steps: int          # fixed training budget of every network method
    crop: int
    batch_size: int
    width: int
    budget_sizes: tuple  # dataset sizes for the automatic-budget check
    sweep: tuple        # fixed budgets it is compared with
    kfold_sizes: tuple
    budget_size_px: int
    sample_noised: tuple = ("nuclei", "lesions")  # bundled sets whose clean masks are re-noised
    auto_seeds: tuple = (0, 1, 2)  # training seeds of the issue-2 table at the automatic budget

    @staticmethod
    def make(quick: bool) -> "Settings":
        if quick:  # < 10 min on 2 quiet CPU cores
            return Settings(True, 8, 96, (), (1, 3), 300, 64, 4, 8, (8, 16), (100, 200, 400, 800), (8, 16), 96,
                            ("nuclei",), (0, 1))
        return Settings(False, 24, 128, (1, 2, 3), (1, 2, 3), 300, 96, 8, 16, (8, 16, 32),
                        (100, 200, 400, 800, 1600), (8, 16, 32), 128)

    def train_kw(self) -> dict:
        return {"crop": self.crop, "batch_size": self.batch_size, "width": self.width}


def seed_of(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


# --------------------------------------------------------------------------- data (cached per worker)


@lru_cache(maxsize=8)
def dataset(source: str, kind: str, n: int = 0, size: int = 0) -> C.DataSet:
    if source == "sample":
        return C.bundled_set(kind)
    return C.generated_set(kind, n, size, seed_of("data", kind, n, size))


def given_masks(ds: C.DataSet, noise: str, level: int) -> tuple[list[np.ndarray], list[str] | None]:
    if noise == "given":
        return ds.given, None
    if noise == "mixed":
        return C.mixed_noise(ds.clean, seed_of("mixed", ds.name), ds.n_classes)
    return C.noised(ds.clean, noise, level, seed_of("noise", ds.name, noise, level), ds.n_classes), None


def iel_variants(kind: str):
    from ielstudio.core.iel import IELConfig

    p = C.PROFILES[kind]
    out = [("no-IEL", IELConfig.none()), ("heat", IELConfig(heat_dt=p["heat_dt"], heat_steps=p["heat_steps"]))]
    if p["convex_classes"]:
        out.append(("heat+convex", IELConfig(heat_dt=p["heat_dt"], heat_steps=p["heat_steps"],
                                             convex_classes=p["convex_classes"])))
    return out


def clean_config(kind: str):
    from ielstudio.core.cleaning import CleanConfig

    return CleanConfig(fill_holes=C.PROFILES[kind]["fill_holes"])


# --------------------------------------------------------------------------- tasks


def _init_worker(threads: int) -> None:
    C.limit_threads(threads)


def run_case(s: Settings, source: str, kind: str, noise: str, level: int, morph: C.Morphology) -> dict:
    """Every method on one (dataset, noise, level)."""
    from ielstudio.core import metrics

    t0 = time.perf_counter()
    ds = dataset(source, kind, s.gen_n, s.gen_size) if source == "generated" else dataset(source, kind)
    pkind = ds.meta["kind"]
    given, desc = given_masks(ds, noise, level)
    samples = C.make_samples(ds.names, ds.images, given, ds.n_classes)
    score = lambda preds: C.mask_scores(preds, ds.clean, ds.n_classes, ds.convex_classes)  # noqa: E731
    res: dict[str, Any] = {"dataset": ds.name, "kind": pkind, "noise": noise, "level": level, "n_images": len(given),
                           "n_classes": ds.n_classes, "convex_classes": list(ds.convex_classes),
                           "methods": {}, "seconds": {}, "steps": s.steps}
    res["methods"]["clean"] = score(ds.clean)  # reference (solidity of the truth)
    res["methods"]["noisy"] = score(given)
    res["methods"]["classical"] = score([morph(g, ds.n_classes) for g in given])
    probs_by = {}
    for name, iel in iel_variants(pkind):
        t = time.perf_counter()
        done = C.fit(samples, C.fixed_budget(s.steps, iel=iel, seed=seed_of("train", ds.name), **s.train_kw()))
        probs = C.probabilities(done, samples)
        props = C.proposals(probs, given, clean_config(pkind))
        res["methods"][name] = score(props)
        res["seconds"][name] = time.perf_counter() - t
        probs_by[name] = (probs, props)
    heat_probs, heat_props = probs_by["heat"]
    true_dice = [metrics.dice(g, c, ds.n_classes) for g, c in zip(given, ds.clean)]
    ours = C.quality_scores(heat_probs, given, clean_config(pkind))
    res["true_dice"] = true_dice
    res["scores"] = {"ours": ours}
    res["ranking"] = {"ours": C.ranking(ours, true_dice)}
    if "heat+convex" in probs_by:
        ours_c = C.quality_scores(probs_by["heat+convex"][0], given, clean_config(pkind))
        res["ranking"]["ours (heat+convex)"] = C.ranking(ours_c, true_dice)
    # ours: the pixels the heat proposal changes, judged like cleanlab's flags
    res["pixel_flags"] = {"ours": C.pixel_flag_quality([p != g for p, g in zip(heat_props, given)], given, ds.clean)}
    t = time.perf_counter()
    try:
        cl = C.cleanlab_run(given, heat_probs)
    except ImportError as e:  # optional peer (pip install -e ".[bench]")
        res["missing"] = {"cleanlab": str(e)}
    else:
        res["seconds"]["cleanlab"] = time.perf_counter() - t
        res["methods"]["cleanlab"] = score(cl["fixed"])
        res["scores"]["cleanlab"] = cl["scores"]
        res["ranking"]["cleanlab"] = C.ranking(cl["scores"], true_dice)
        res["pixel_flags"]["cleanlab"] = C.pixel_flag_quality(cl["flags"], given, ds.clean)
    if desc is not None:
        res["mixed"] = desc
    res["seconds"]["total"] = time.perf_counter() - t0
    return res


def run_auto(s: Settings, kind: str, noise: str, level: int, seed: int) -> dict:
    """No IEL and heat IEL on a sample case, both at the automatic budget (`ielstudio clean`'s
    default): Dice of the cleaned masks, the step kept and the steps run, for one training seed."""
    from ielstudio.core.training import TrainConfig

    ds = dataset("sample", kind)
    given, _ = given_masks(ds, noise, level)
    samples = C.make_samples(ds.names, ds.images, given, ds.n_classes)
    res: dict[str, Any] = {"dataset": ds.name, "noise": noise, "level": level, "seed": seed,
                           "noisy_dice": C.mask_scores(given, ds.clean, ds.n_classes)["dice"], "methods": {}}
    for name, iel in iel_variants(ds.meta["kind"])[:2]:  # no-IEL, heat
        done = C.fit(samples, TrainConfig(epochs=None, iel=iel, seed=seed, **s.train_kw()))
        props = C.proposals(C.probabilities(done, samples), given, clean_config(ds.meta["kind"]))
        res["methods"][name] = {"dice": C.mask_scores(props, ds.clean, ds.n_classes)["dice"],
                                "kept_step": done.history["best_step"], "steps_run": done.steps}
    return res


def run_budget(s: Settings, size: int) -> dict:
    """Automatic budget (heat IEL, no clean labels) against a fixed sweep of budgets, with and
    without IEL, on generated nuclei with mixed noise: shows where memorisation sets in."""
    from ielstudio.core.iel import IELConfig
    from ielstudio.core.training import TrainConfig

    ds = dataset("generated", "nuclei", size, s.budget_size_px)
    given, _ = C.mixed_noise(ds.clean, seed_of("budget-noise", size), ds.n_classes)
    samples = C.make_samples(ds.names, ds.images, given, ds.n_classes)
    seed = seed_of("budget", size)

    def dice_of(done) -> float:
        props = C.proposals(C.probabilities(done, samples), given, clean_config("nuclei"))
        return C.mask_scores(props, ds.clean, ds.n_classes)["dice"]

    t = time.perf_counter()
    auto = C.fit(samples, TrainConfig(epochs=None, iel=IELConfig(), seed=seed, **s.train_kw()))
    out = {"size": size, "auto": {"steps_run": auto.steps, "picked": auto.history.get("best_step"),
                                  "reason": auto.reason, "budget": auto.history.get("budget"),
                                  "dice": dice_of(auto), "seconds": time.perf_counter() - t},
           "noisy_dice": C.mask_scores(given, ds.clean, ds.n_classes)["dice"], "sweep": {}, "sweep_no_iel": {}}
    for steps in s.sweep:
        for key, iel in (("sweep", IELConfig()), ("sweep_no_iel", IELConfig.none())):
            done = C.fit(samples, C.fixed_budget(steps, iel=iel, seed=seed, **s.train_kw()))
            out[key][steps] = dice_of(done)
    return out


def run_kfold(s: Settings, size: int) -> dict:
    """Out-of-sample (2-fold) against in-sample heat-IEL proposals and scores, same budget per model."""
    from ielstudio.core import metrics
    from ielstudio.core.iel import IELConfig

    ds = dataset("generated", "nuclei", size, s.budget_size_px)
    given, _ = C.mixed_noise(ds.clean, seed_of("kfold-noise", size), ds.n_classes)
    samples = C.make_samples(ds.names, ds.images, given, ds.n_classes)
    true_dice = [metrics.dice(g, c, ds.n_classes) for g, c in zip(given, ds.clean)]
    out = {"size": size, "noisy_dice": float(np.mean(true_dice))}
    for label, folds in (("in-sample", 1), ("2-fold", 2)):
        done = C.fit(samples, C.fixed_budget(s.steps, iel=IELConfig(), folds=folds, seed=seed_of("kfold", size),
                                             **s.train_kw()))
        probs = C.probabilities(done, samples, out_of_sample=True)
        props = C.proposals(probs, given, clean_config("nuclei"))
        scores = C.quality_scores(probs, given, clean_config("nuclei"))
        out[label] = {"dice": C.mask_scores(props, ds.clean, ds.n_classes)["dice"], **C.ranking(scores, true_dice)}
    return out


# --------------------------------------------------------------------------- report


def best_of(methods: dict, names, key="dice") -> tuple[str, float]:
    have = [(m, methods[m][key]) for m in names if m in methods and not math.isnan(methods[m].get(key, math.nan))]
    return max(have, key=lambda x: x[1]) if have else ("–", math.nan)


def dataset_table(cases: list[dict]) -> str:
    n_classes = cases[0]["n_classes"]
    convex = bool(cases[0]["convex_classes"])
    headers = ["noise", "level", "method", "Dice", *[f"IoU c{c}" for c in range(1, n_classes)], "BF1 (2px)"]
    if convex:
        headers.append("solidity")
    rows = []
    for r in cases:
        for m in ["clean", *METHODS]:
            if m not in r["methods"]:
                continue
            x = r["methods"][m]
            row = [r["noise"], r["level"] if r["noise"] not in ("given", "mixed") else "–", m if m != "clean" else "(clean masks)",
                   x["dice"], *x["iou_per_class"][1:], x["bf1"]]
            if convex:
                row.append(x.get("solidity", math.nan))
            rows.append(row)
    return C.md_table(headers, rows)


def verdicts(cases: list[dict]) -> list[list]:
    rows = []
    for r in cases:
        m = r["methods"]
        iel, d_iel = best_of(m, IEL_METHODS)
        base, d_base = best_of(m, BASELINES)
        row = [r["dataset"], r["noise"], r["level"] if r["noise"] not in ("given", "mixed") else "–",
               m["noisy"]["dice"], d_base, base, d_iel, iel, d_iel - d_base,
               "IEL" if d_iel > d_base else f"{base}"]
        if r["convex_classes"]:
            si, sb = best_of(m, IEL_METHODS, "solidity")[1], best_of(m, BASELINES, "solidity")[1]
            row += [m["clean"].get("solidity", math.nan), sb, si]
        else:
            row += [math.nan, math.nan, math.nan]
        rows.append(row)
    return rows


def plot(cases: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["dataset"] for r in cases if r["noise"] not in ("given", "mixed")})
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [r for r in cases if r["dataset"] == name and r["noise"] not in ("given", "mixed")]
        levels = sorted({r["level"] for r in rows})
        for m in METHODS:
            ys = [np.mean([r["methods"][m]["dice"] for r in rows if r["level"] == lv and m in r["methods"]] or [np.nan])
                  for lv in levels]
            if not np.all(np.isnan(ys)):
                ax.plot(levels, ys, marker="o", label=m)
        ax.set_title(name)
        ax.set_xlabel("noise level (mean over noise types)")
        ax.set_xticks(levels)
        ax.set_ylabel("Dice vs clean masks")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    C.save_figure(fig, path)
    plt.close(fig)


def auto_table(auto: list[dict]) -> str:
    """The issue-2 table at the automatic budget: per case, means over the training seeds."""
    order = {n: i for i, n in enumerate(["given", *C.noise_types()])}
    keys = sorted({(r["dataset"], r["noise"], r["level"]) for r in auto}, key=lambda k: (k[0], order.get(k[1], 99), k[2]))
    rows = []
    for key in keys:
        rs = [r for r in auto if (r["dataset"], r["noise"], r["level"]) == key]
        d0 = [r["methods"]["no-IEL"]["dice"] for r in rs]
        d1 = [r["methods"]["heat"]["dice"] for r in rs]
        noisy = rs[0]["noisy_dice"]
        rows.append([key[0], key[1], key[2] if key[1] != "given" else "–", noisy, np.mean(d0),
                     f"{min(d0):.3f}-{max(d0):.3f}", np.mean(d1), f"{min(d1):.3f}-{max(d1):.3f}",
                     f"{np.mean([r['methods']['no-IEL']['kept_step'] for r in rs]):.0f} / "
                     f"{np.mean([r['methods']['heat']['kept_step'] for r in rs]):.0f}",
                     "yes" if min(min(d0), min(d1)) > noisy else "NO",
                     "yes" if np.mean(d1) > np.mean(d0) else "no", f"{sum(b > a for a, b in zip(d0, d1))}/{len(rs)}"])
    return C.md_table(["data set", "noise", "level", "noisy", "no IEL (mean)", "no IEL (range)", "heat IEL (mean)",
                       "heat IEL (range)", "step kept (no IEL / heat)", "all beat noisy", "heat > no-IEL (mean)",
                       "seeds heat wins"], rows)


def case_sections(cases: list[dict]) -> list[str]:
    """The report's sections about the fixed-budget cases (task kind "case")."""
    out: list[str] = []
    out.append("\n## Mean Dice per method (over all noise cases of each data set)\n\n")
    names = sorted({r["dataset"] for r in cases})
    rows = []
    for n in names:
        rs = [r for r in cases if r["dataset"] == n]
        rows.append([n, len(rs), *[np.mean([r["methods"][m]["dice"] for r in rs]) if all(m in r["methods"] for r in rs)
                                   else math.nan for m in METHODS]])
    out.append(C.md_table(["data set", "cases", *METHODS], rows))
    out.append("\n## Best IEL variant against the best baseline, per case\n\n")
    out.append("Baselines: noisy, classical, no-IEL, cleanlab. Δ = best IEL Dice − best baseline Dice. "
               "Solidity (convex classes only): of the clean masks, the most convex baseline, the most convex IEL variant.\n\n")
    vrows = verdicts(cases)
    out.append(C.md_table(["data set", "noise", "level", "noisy Dice", "best baseline", "which", "best IEL", "which",
                           "Δ", "winner", "solidity clean", "solidity base", "solidity IEL"], vrows))
    paper = [r for r in vrows if r[1] in ("block", "specks", "holes")]
    sol = [r for r in vrows if not math.isnan(r[11]) and not math.isnan(r[12])]
    out.append(f"\nIEL wins {sum(r[9] == 'IEL' for r in vrows)} of {len(vrows)} cases; on the noise the paper targets "
               f"(block, specks, holes) {sum(r[9] == 'IEL' for r in paper)} of {len(paper)}; the most convex IEL "
               f"variant is more convex than the most convex baseline in {sum(r[12] > r[11] for r in sol)} of "
               f"{len(sol)} cases with convex classes.\n")
    out.append("\n## Label-quality ranking (image scores vs true Dice of the given mask)\n\n")
    out.append("ours = `cleaning.label_quality` on the heat-IEL network; cleanlab = "
               "`segmentation.rank.get_label_quality_scores` on the same probabilities. "
               "Spearman: higher is better; top-10 %: share of the images ranked worst that are truly worst.\n\n")
    rows = []
    for r in cases:
        if r["noise"] in ("given", "mixed") or len(cases) <= 12:
            rk, pf, nan = r["ranking"], r["pixel_flags"], {}
            rows.append([r["dataset"], r["noise"], r["level"] if r["noise"] not in ("given", "mixed") else "–",
                         rk["ours"]["spearman"], rk.get("cleanlab", nan).get("spearman"), rk["ours"]["top10_precision"],
                         rk.get("cleanlab", nan).get("top10_precision"),
                         pf.get("cleanlab", nan).get("precision"), pf.get("cleanlab", nan).get("recall"),
                         pf["ours"]["precision"], pf["ours"]["recall"],
                         r["methods"].get("cleanlab", nan).get("dice"), r["methods"]["heat"]["dice"]])
    out.append(C.md_table(["data set", "noise", "level", "Spearman ours", "Spearman cleanlab", "top-10% ours",
                           "top-10% cleanlab", "cleanlab flag P", "cleanlab flag R", "ours change P", "ours change R",
                           "cleanlab flip Dice", "heat proposal Dice"], rows))
    allr = [r for r in cases]
    mean = lambda xs: float(np.nanmean(xs)) if len(xs) else math.nan  # noqa: E731
    cl = [r for r in allr if "cleanlab" in r["ranking"]]
    out.append(f"\nOver all {len(allr)} cases: mean Spearman ours {mean([r['ranking']['ours']['spearman'] for r in allr]):.3f}"
               f" (top-10 % {mean([r['ranking']['ours']['top10_precision'] for r in allr]):.3f}), "
               f"pixels our proposal changes: precision {mean([r['pixel_flags']['ours']['precision'] for r in allr]):.3f}"
               f" recall {mean([r['pixel_flags']['ours']['recall'] for r in allr]):.3f}.\n")
    if cl:
        out.append(f"cleanlab over {len(cl)} cases: mean Spearman {mean([r['ranking']['cleanlab']['spearman'] for r in cl]):.3f}"
                   f" (top-10 % {mean([r['ranking']['cleanlab']['top10_precision'] for r in cl]):.3f}), pixel flags "
                   f"precision {mean([r['pixel_flags']['cleanlab']['precision'] for r in cl]):.3f} recall "
                   f"{mean([r['pixel_flags']['cleanlab']['recall'] for r in cl]):.3f}.\n")
    else:
        out.append("cleanlab is not installed (`pip install -e \".[bench]\"`): its columns are empty.\n")

    out.append("\n## Issue-2 table: the bundled sample, each noise type at two levels\n\n")
    out.append("Dice against the clean masks of the noisy masks, of the cleaned masks from the same training "
               "without IEL, and with the heat IEL.\n\n")
    rows = []
    for r in cases:
        if r["dataset"].startswith("sample-") and r["noise"] != "mixed":
            m = r["methods"]
            rows.append([r["dataset"], r["noise"], r["level"] if r["noise"] != "given" else "–", m["noisy"]["dice"],
                         m["no-IEL"]["dice"], m["heat"]["dice"],
                         "yes" if min(m["no-IEL"]["dice"], m["heat"]["dice"]) > m["noisy"]["dice"] else "NO",
                         "yes" if m["heat"]["dice"] > m["no-IEL"]["dice"] else "no"])
    if rows:
        out.append(C.md_table(["data set", "noise", "level", "noisy", "cleaned, no IEL", "cleaned, heat IEL",
                               "both beat noisy", "heat > no-IEL"], rows))
    return out


def report(s: Settings, facts: dict, morph: C.Morphology, morph_dice: float, cases: list[dict], budget: list[dict],
           kfold: list[dict], elapsed: float, cmd: str, prefix: str, auto: list[dict] | None = None) -> str:
    out = [f"# Quality benchmark{' (quick)' if s.quick else ''}\n\n",
           f"Command: `{cmd}`  \nMachine: {facts['cpu']}, {facts['nproc']} cores, torch {facts['torch']}, "
           f"cleanlab {facts['cleanlab']}, GPU: {facts['cuda'] or 'none'}. Wall time {elapsed / 60:.1f} min.  \n"
           f"Settings: {s.gen_n} generated images of {s.gen_size} px per set, every network trained "
           f"{s.steps} steps unless a section says otherwise (crop {s.crop}, batch {s.batch_size}, U-Net width "
           f"{s.width}); classical clean-up "
           f"tuned once on generated nuclei with mixed noise: opening r={morph.open_r}, closing r={morph.close_r}, "
           f"min area {morph.min_area} (Dice {morph_dice:.3f} there).\n"]
    if cases:
        out += case_sections(cases)
    if auto:
        seeds = sorted({r["seed"] for r in auto})
        out.append("\n## Issue-2 table at the automatic budget (what `ielstudio clean` does by default)\n\n")
        out.append(f"Both networks trained with the automatic budget (`TrainConfig(epochs=None)`: 20 % held out, "
                   f"agreement with their given labels every 25 steps, patience 4, never stopping before step 100 "
                   f"nor after 600, keeping the weights of the best evaluation) and the same given masks as the "
                   f"fixed-budget issue-2 table; training seeds {', '.join(map(str, seeds))}. Dice of the cleaned "
                   f"masks against the clean masks: mean and range over the seeds.\n\n")
        out.append(auto_table(auto))

    if budget:
        out.append("\n## Automatic training budget vs a fixed sweep (generated nuclei, mixed noise, heat IEL)\n\n")
        out.append("The automatic rule holds out images and stops when agreement with their *given* labels stops "
                   "improving (no clean labels). Dice against the clean masks.\n\n")
        rows = []
        for b in sorted(budget, key=lambda b: b["size"]):
            sw = {int(k): v for k, v in b["sweep"].items()}
            sw0 = {int(k): v for k, v in b.get("sweep_no_iel", {}).items()}
            best = max(sw.items(), key=lambda kv: kv[1])
            rows.append([b["size"], b["noisy_dice"], b["auto"]["picked"], b["auto"]["steps_run"], b["auto"]["dice"],
                         *[sw.get(k) for k in s.sweep], f"{best[0]}", best[1] - b["auto"]["dice"],
                         *[sw0.get(k) for k in s.sweep]])
        out.append(C.md_table(["images", "noisy", "auto: best step", "auto: steps run", "auto Dice",
                               *[f"heat {k}" for k in s.sweep], "best fixed", "regret",
                               *[f"no-IEL {k}" for k in s.sweep]], rows))
        out.append("\nregret = best fixed heat budget's Dice − auto Dice (> 0: the rule left Dice on the table). "
                   "The no-IEL columns show whether plain training memorises the noise as it trains longer.\n")
    if kfold:
        out.append("\n## Out-of-sample (2-fold) vs in-sample proposals (generated nuclei, mixed noise, heat IEL)\n\n")
        rows = []
        for k in sorted(kfold, key=lambda k: k["size"]):
            a, b = k["in-sample"], k["2-fold"]
            rows.append([k["size"], k["noisy_dice"], a["dice"], b["dice"], a["spearman"], b["spearman"],
                         a["top10_precision"], b["top10_precision"],
                         "in-sample" if a["dice"] >= b["dice"] else "2-fold",
                         "in-sample" if (a["spearman"] or -2) >= (b["spearman"] or -2) else "2-fold"])
        out.append(C.md_table(["images", "noisy", "Dice in-sample", "Dice 2-fold", "Spearman in-sample",
                               "Spearman 2-fold", "top-10% in", "top-10% 2-fold", "better proposals",
                               "better ranking"], rows))
    out.append(f"\nAll rows per data set: `{prefix}_<data set>.md`; raw numbers: `{prefix}.json`; "
               f"plot: `{prefix}_dice_vs_level.png`.\n" if cases else f"\nRaw numbers: `{prefix}.json`.\n")
    return "".join(x if x.endswith("\n") else x + "\n" for x in out)


# --------------------------------------------------------------------------- main


def plan(s: Settings) -> list[tuple]:
    """(function name, args) of every task, longest first."""
    tasks: list[tuple] = [("budget", (n,)) for n in s.budget_sizes] + [("kfold", (n,)) for n in s.kfold_sizes]
    for kind in SAMPLES:
        tasks.append(("case", ("sample", kind, "given", 0)))
        for noise in C.noise_types() if kind in s.sample_noised else ():
            for lv in s.sample_levels:
                tasks.append(("case", ("sample", kind, noise, lv)))
    for kind in SAMPLES:
        for seed in s.auto_seeds:
            tasks.append(("auto", (kind, "given", 0, seed)))
            for noise in C.noise_types() if kind in s.sample_noised else ():
                for lv in s.sample_levels:
                    tasks.append(("auto", (kind, noise, lv, seed)))
    for kind in GENERATED:
        tasks.append(("case", ("generated", kind, "mixed", 0)))
        for noise in C.noise_types():
            for lv in s.levels:
                tasks.append(("case", ("generated", kind, noise, lv)))
    return tasks


def run_task(s: Settings, morph: C.Morphology, name: str, args: tuple) -> tuple[str, dict]:
    if name == "case":
        return name, run_case(s, *args, morph)
    if name == "budget":
        return name, run_budget(s, *args)
    if name == "auto":
        return name, run_auto(s, *args)
    return name, run_kfold(s, *args)


def rewrite_summary(path: Path) -> int:
    """The .md summary of a finished run, rendered again from its .json (e.g. after a report fix)."""
    import json

    d = json.loads(Path(path).read_text())
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["settings"].items()})
    text = report(s, d["facts"], C.Morphology(**d["classical"]), d["classical_tune_dice"], d["cases"], d["budget"],
                  d["kfold"], d["elapsed_s"], d["command"], Path(path).stem, d.get("auto", []))
    C.write_text(Path(path).with_suffix(".md"), text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small grid that finishes in < 10 min on 2 CPU cores")
    ap.add_argument("--out", type=Path, default=C.RESULTS_DIR, help="folder for tables, plot and JSON")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--only", default="", help="comma list of task kinds to run: case,auto,budget,kfold "
                    "(default: all but auto)")
    ap.add_argument("--no-samples", action="store_true", help="skip the bundled sample (e.g. not built yet)")
    ap.add_argument("--train", default="", help="override settings, e.g. 'width=16,crop=96,batch_size=8,steps=300,sweep=100/300/600'")
    ap.add_argument("--cases", default="", help="comma list of case filters 'dataset:noise[:level]' (default: all)")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--from-json", type=Path, metavar="FILE", help="write FILE's summary (.md next to it) again "
                    "from its raw numbers, without running anything")
    a = ap.parse_args(argv)
    if a.from_json:
        return rewrite_summary(a.from_json)
    s = Settings.make(a.quick)
    if a.train:
        s = replace(s, **{k: tuple(int(x) for x in v.split("/")) if "/" in v else int(v)
                          for k, v in (kv.split("=") for kv in a.train.split(","))})
    prefix = ("quality-quick" if a.quick else "quality") + (f"-{a.tag}" if a.tag else "")
    cmd = "python benchmarks/quality.py" + "".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:])
                                                  if not x.startswith("--out"))
    facts = C.machine_facts()
    t0 = time.perf_counter()
    threads = max(1, (os.cpu_count() or 1) // max(1, a.jobs))
    C.limit_threads(threads)

    # Classical clean-up tuned once (on data no case uses), then frozen for every case.
    tune = C.generated_set("nuclei", 8, s.gen_size, seed_of("tune"))
    tune_given, _ = C.mixed_noise(tune.clean, seed_of("tune-noise"), tune.n_classes)
    morph, morph_dice = C.tune_morphology(tune_given, tune.clean, tune.n_classes)
    print(f"classical clean-up tuned once: {morph} (Dice {morph_dice:.3f})", flush=True)

    tasks = plan(s)
    only = {x for x in a.only.split(",") if x}
    if only:
        tasks = [t for t in tasks if t[0] in only]
    else:  # "auto" trains 2 networks per case and seed to the automatic budget: only when asked for
        tasks = [t for t in tasks if t[0] != "auto"]
    if a.cases:
        want = [c.split(":") for c in a.cases.split(",")]

        def chosen(args: tuple) -> bool:
            name = f"{'sample-' if args[0] == 'sample' else ''}{args[1]}"
            return any(w[0] == name and w[1] == args[2] and (len(w) < 3 or int(w[2]) == args[3]) for w in want)

        tasks = [t for t in tasks if t[0] != "case" or chosen(t[1])]
        tasks = [t for t in tasks if t[0] != "auto" or chosen(("sample", *t[1][:3]))]
    if a.no_samples:
        tasks = [t for t in tasks if not (t[0] == "case" and t[1][0] == "sample") and t[0] != "auto"]
    cases, budget, kfold, auto = [], [], [], []
    print(f"{len(tasks)} tasks on {a.jobs} worker(s) x {threads} thread(s)", flush=True)
    with ProcessPoolExecutor(a.jobs, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(run_task, s, morph, n, args): (n, args) for n, args in tasks}
        for i, fut in enumerate(as_completed(futures), 1):
            n, args = futures[fut]
            try:
                kind, res = fut.result()
            except Exception as e:  # one broken task must not lose the others
                print(f"[{i}/{len(tasks)}] {n} {args}: FAILED {type(e).__name__}: {e}", flush=True)
                continue
            if kind == "case":
                cases.append(res)
                m = res["methods"]
                print(f"[{i}/{len(tasks)}] {res['dataset']:>15} {res['noise']:>8} {res['level']}  "
                      + "  ".join(f"{k} {m[k]['dice']:.3f}" for k in METHODS if k in m)
                      + f"  ({res['seconds']['total']:.0f}s)", flush=True)
            elif kind == "auto":
                auto.append(res)
                m = res["methods"]
                print(f"[{i}/{len(tasks)}] auto {res['dataset']:>15} {res['noise']:>8} {res['level']} seed {res['seed']}: "
                      f"noisy {res['noisy_dice']:.3f}  no-IEL {m['no-IEL']['dice']:.3f} (step {m['no-IEL']['kept_step']})  "
                      f"heat {m['heat']['dice']:.3f} (step {m['heat']['kept_step']})", flush=True)
            elif kind == "budget":
                budget.append(res)
                print(f"[{i}/{len(tasks)}] budget n={res['size']}: auto picked {res['auto']['picked']} "
                      f"Dice {res['auto']['dice']:.3f}; heat sweep " +
                      ", ".join(f"{k}:{v:.3f}" for k, v in res["sweep"].items()) + "; no-IEL sweep " +
                      ", ".join(f"{k}:{v:.3f}" for k, v in res["sweep_no_iel"].items()), flush=True)
            else:
                kfold.append(res)
                print(f"[{i}/{len(tasks)}] kfold n={res['size']}: in-sample {res['in-sample']['dice']:.3f} "
                      f"2-fold {res['2-fold']['dice']:.3f}", flush=True)
    elapsed = time.perf_counter() - t0
    order = {n: i for i, n in enumerate(["given", "mixed", *C.noise_types()])}
    cases.sort(key=lambda r: (r["dataset"], order.get(r["noise"], 99), r["level"]))

    a.out.mkdir(parents=True, exist_ok=True)
    C.write_json(a.out / f"{prefix}.json", {"facts": facts, "settings": asdict(s), "command": cmd,
                                            "classical": asdict(morph), "classical_tune_dice": morph_dice,
                                            "elapsed_s": elapsed, "cases": cases, "budget": budget, "kfold": kfold,
                                            "auto": auto})
    for name in sorted({r["dataset"] for r in cases}):
        rs = [r for r in cases if r["dataset"] == name]
        C.write_text(a.out / f"{prefix}_{name}.md", f"# {name}: every method on every noise case\n\n"
                     f"Command: `{cmd}`. Dice/IoU/BF1 against the clean masks, mean over {rs[0]['n_images']} "
                     f"images.\n\n" + dataset_table(rs))
    if cases:
        plot(cases, a.out / f"{prefix}_dice_vs_level.png")
    text = report(s, facts, morph, morph_dice, cases, budget, kfold, elapsed, cmd, prefix, auto)
    C.write_text(a.out / f"{prefix}.md", text)
    print(text)
    print(f"wrote {a.out / prefix}.md, .json, _<dataset>.md, _dice_vs_level.png in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
