"""The real-data results table: every method on the real sets, noisy and with correct masks.

    python benchmarks/realtable.py [--sets report,brain-multiclass-report,...] [--labels noisy,clean]
                                   [--methods no-iel,heat,heat+convex] [--tune-set dev] [--tag NAME]
                                   [--seed N] [--rows-from TAG]

Each trained method is one `ielstudio clean` run (`core.cleaning.clean_dataset`, the
function the command and the window call) with default settings except the IEL spec:
`heat` *is* the default (`ielstudio clean IMAGES MASKS --out X`), `no-iel` is
`--iel none`, `heat+convex` is `--iel heat,convex --convex-classes 1` (lesion and nuclei sets
only: brain tissue classes are not convex). The sets: the real-data `report`,
`brain-multiclass-report`, `mixed-scan` and `dsb-nuclei` sets of `realdata.py` and the
two bundled samples (`nuclei-sample`, `lesions-sample`). Also, without training: `noisy` (the masks as
given), `classical` (morphological opening/closing + speck removal + hole filling,
radii and minimum area grid-searched against the correct masks of `--tune-set`, never
of the reported set), and `cleanlab` (cleanlab 2.9's segmentation filter and image
scores on the default (heat) run's network).

Per row: mean foreground Dice of the output against the correct masks, the wall time
of the run, and the ranking's Spearman correlation between each image's label-quality
score and the true Dice of its given mask (NaN when the given masks are all correct:
there is nothing to rank). Results are appended to `results/realtable[-TAG].json` after
every run (a long run that is stopped keeps what it finished) and the table is written
to `results/realtable[-TAG].md`. One trained run takes 2-9 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import realdata  # noqa: E402

from ielstudio.core.cleaning import CleanConfig, CleanDone, clean_dataset, load_dataset  # noqa: E402
from ielstudio.core.iel import IELConfig  # noqa: E402
from ielstudio.core.imageio import read_mask  # noqa: E402
from ielstudio.core.metrics import dice  # noqa: E402
from ielstudio.core.review import SHAPE_PRIOR_POWER  # noqa: E402
from ielstudio.core.training import TrainConfig, load_checkpoint, predict  # noqa: E402

TRAINED = {
    "no-iel": lambda convex: IELConfig(heat=False),
    "heat": lambda convex: IELConfig(),
    "heat+convex": lambda convex: IELConfig(convex_classes=convex),
}
#: Lesion and nuclei sets have one convex class; brain tissue classes are not convex.
CONVEX = {"dev": (1,), "report": (1,), "mixed-scan": (1,), "lesions-sample": (1,), "dsb-nuclei": (1,),
          "cho-nuclei": (1,)}
SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "sample"


def bundled_sets() -> dict[str, realdata.RealSet]:
    """The bundled samples as sets of the table (their `masks` are the noisy ones)."""
    return {f"{name}-sample": realdata.RealSet(f"{name}-sample", "bundled", SAMPLE / name / "images",
                                               SAMPLE / name / "clean", SAMPLE / name / "masks", ())
            for name in ("nuclei", "lesions") if (SAMPLE / name / "clean").is_dir()}


def read_folder(folder: Path, names: list[str], enc=None) -> list[np.ndarray]:
    """Masks read as `ielstudio clean` reads them, in the value convention `enc` (None: found from the first)."""
    out = []
    for n in names:
        m, enc = read_mask(folder / n, enc)
        out.append(np.asarray(m, np.int64))
    return out


def run_clean(images: Path, masks: Path, out: Path, iel: IELConfig, model_path: Path | None,
              seed: int = 0) -> tuple[dict, float]:
    t0 = time.perf_counter()
    report = None
    for ev in clean_dataset(images, masks, out, TrainConfig(iel=iel, seed=seed), CleanConfig(), save_model=model_path):
        if isinstance(ev, CleanDone):
            report = ev.report
    if report is None:
        raise RuntimeError("clean_dataset ended without a report")
    return report, time.perf_counter() - t0


def cleanlab_row(images: Path, masks: Path, model_path: Path, clean: dict, given: dict, n_classes: int) -> dict:
    model, _, _ = load_checkpoint(model_path)
    loaded = load_dataset(images, masks)
    names = [s.mask_path.name for s in loaded.samples]
    t0 = time.perf_counter()
    probs = [predict(model, s.image) for s in loaded.samples]
    res = C.cleanlab_run([s.mask for s in loaded.samples], probs)
    seconds = time.perf_counter() - t0
    d = [dice(f, clean[n], n_classes) for f, n in zip(res["fixed"], names)]
    true = [dice(given[n], clean[n], n_classes) for n in names]
    return {"dice": float(np.mean(d)), "min": float(np.min(d)), "seconds": seconds,
            "spearman": C.spearman(res["scores"], true), "note": "+ the heat run's training time"}


def rows_to_take(earlier: list[dict], done: set, methods: list[str]) -> list[dict]:
    """The trained rows of an earlier run (`--rows-from`) that this run neither has nor
    trains itself: a method asked for with --methods (and cleanlab, which reads the heat
    run's network, where heat is asked for) is trained again, never copied."""
    here = set(methods) | ({"cleanlab"} if "heat" in methods else set())
    return [r for r in earlier if (r["method"] in TRAINED or r["method"] == "cleanlab")
            and r["method"] not in here and (r["set"], r["labels"], r["method"]) not in done]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="report,brain-multiclass-report,mixed-scan,dsb-nuclei,cho-nuclei,"
                                      "nuclei-sample,lesions-sample")
    ap.add_argument("--labels", default="noisy,clean", help="which masks are given: noisy (the mixture), clean")
    ap.add_argument("--methods", default="heat,no-iel,heat+convex")
    ap.add_argument("--tune-set", default="dev", help="set whose correct masks tune the classical baseline")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--tag", default="")
    ap.add_argument("--seed", type=int, default=0, help="training seed of every trained method (`clean --seed`)")
    ap.add_argument("--out", type=Path, default=C.RESULTS_DIR)
    ap.add_argument("--rows-from", metavar="TAG", default=None,
                    help="take the trained rows of methods this run does not train from results/realtable-TAG.json, "
                         "an earlier run of the same engine and seed (so that only new methods train); the table "
                         "marks them")
    a = ap.parse_args(argv)
    sets = {**realdata.build_sets(a.cache), **bundled_sets()}
    prefix = "realtable" + (f"-{a.tag}" if a.tag else "")
    json_path, md_path = a.out / f"{prefix}.json", a.out / f"{prefix}.md"
    data = json.loads(json_path.read_text()) if json_path.is_file() else {"facts": C.machine_facts(), "rows": []}
    if data.setdefault("seed", a.seed) != a.seed:
        ap.error(f"{json_path} holds rows trained with --seed {data['seed']}: another --tag for --seed {a.seed}")
    done = {(r["set"], r["labels"], r["method"]) for r in data["rows"]}
    if a.rows_from:
        earlier = json.loads((a.out / f"realtable-{a.rows_from}.json").read_text())
        if earlier.get("seed", 0) != a.seed:
            ap.error(f"realtable-{a.rows_from}.json was trained with --seed {earlier.get('seed', 0)}, not {a.seed}")
        taken = [{**r, "from": a.rows_from} for r in rows_to_take(earlier["rows"], done, a.methods.split(","))]
        data["rows"] += taken
        done |= {(r["set"], r["labels"], r["method"]) for r in taken}

    def add(row: dict) -> None:
        data["rows"] = [r for r in data["rows"] if (r["set"], r["labels"], r["method"]) !=
                        (row["set"], row["labels"], row["method"])] + [row]
        C.write_json(json_path, data)
        print(f"{row['set']:>24} {row['labels']:>5} {row['method']:>12}: Dice {row['dice']:.3f} "
              f"(min {row['min']:.3f})  Spearman {C.fmt(row.get('spearman'))}  {row['seconds']:.0f} s", flush=True)

    tune = sets[a.tune_set]
    names = sorted(p.name for p in tune.clean.iterdir())
    tenc = read_mask(tune.clean / names[0])[1]
    morph, morph_dice = C.tune_morphology(read_folder(tune.noisy, names, tenc), read_folder(tune.clean, names, tenc),
                                          tune.n_classes)
    data["classical"] = {"tuned_on": a.tune_set, "params": morph.__dict__, "tune_dice": morph_dice}
    print(f"classical tuned on {a.tune_set}: {morph} (Dice there {morph_dice:.3f})", flush=True)

    for set_name in a.sets.split(","):
        rs = sets[set_name]
        names = sorted(p.name for p in rs.clean.iterdir())
        enc = read_mask(rs.clean / names[0])[1]
        clean = dict(zip(names, read_folder(rs.clean, names, enc)))
        for labels in a.labels.split(","):
            masks = rs.noisy if labels == "noisy" else rs.clean
            given = dict(zip(names, read_folder(masks, names, enc)))
            true = [dice(given[n], clean[n], rs.n_classes) for n in names]
            base = {"set": set_name, "labels": labels, "n": len(names)}
            add({**base, "method": "noisy", "dice": float(np.mean(true)), "min": float(np.min(true)), "seconds": 0.0})
            t0 = time.perf_counter()
            fixed = [morph(given[n], rs.n_classes) for n in names]
            d = [dice(f, clean[n], rs.n_classes) for f, n in zip(fixed, names)]
            add({**base, "method": "classical", "dice": float(np.mean(d)), "min": float(np.min(d)),
                 "seconds": time.perf_counter() - t0})
            for method in a.methods.split(","):
                if method == "heat+convex" and set_name not in CONVEX:
                    continue
                if (set_name, labels, method) in done:
                    print(f"{set_name} {labels} {method}: already in {json_path}, skipped", flush=True)
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    out, model_path = Path(tmp) / "out", Path(tmp) / "model.pt"
                    report, seconds = run_clean(rs.images, masks, out, TRAINED[method](CONVEX.get(set_name, ())),
                                                model_path if method == "heat" else None, a.seed)
                    outs = dict(zip(names, read_folder(out, names, enc)))
                    d = [dice(outs[n], clean[n], rs.n_classes) for n in names]
                    changed = sum(int((outs[n] != given[n]).sum()) for n in names)
                    right = sum(int(((outs[n] != given[n]) & (outs[n] == clean[n])).sum()) for n in names)
                    score = {Path(im["mask"]).name: im["score"] for im in report["images"]}
                    prior = {Path(im["mask"]).name: im["outline_smoothness"] for im in report["images"]
                             if "outline_smoothness" in im}
                    fit = {Path(im["mask"]).name: im["outline_fit"] for im in report["images"] if "outline_fit" in im}
                    parts = {} if len(prior) != len(names) or len(fit) != len(names) else {
                        # the score's three factors, ranked alone
                        "spearman_model": C.spearman([score[n] / max(prior[n] ** SHAPE_PRIOR_POWER * fit[n], 1e-6)
                                                      for n in names], true),
                        "spearman_prior": C.spearman([prior[n] for n in names], true),
                        "spearman_fit": C.spearman([fit[n] for n in names], true)}
                    rel = report["reliability"]
                    add({**base, "method": method, "dice": float(np.mean(d)), "min": float(np.min(d)),
                         "seconds": seconds, "spearman": C.spearman([score[n] for n in names], true), **parts,
                         "agreement": rel["agreement"], "reliable": rel["reliable"],
                         "objects": rel.get("objects"), "trained_agreement": rel.get("trained_agreement"),
                         "kept_as_given": report["labels_kept_as_given"],
                         "objects_removed": report.get("objects_removed", 0),
                         "regions_added": report.get("regions_added", 0),
                         "changed_px": changed, "changed_right_px": right,
                         "steps": report["training"].get("steps"), "best_step": report["training"].get("best_step"),
                         "changed_images": sum(1 for im in report["images"] if im.get("changed_pixels", 0))})
                    if method == "heat":
                        add({**base, "method": "cleanlab", **cleanlab_row(rs.images, masks, model_path, clean,
                                                                           given, rs.n_classes)})
    write_table(data, md_path)
    print(md_path.read_text())
    return 0


ORDER = ["noisy", "classical", "cleanlab", "no-iel", "heat+convex", "heat"]


def write_table(data: dict, path: Path) -> None:
    rows = sorted(data["rows"], key=lambda r: (r["set"], r["labels"] != "noisy", ORDER.index(r["method"])))
    body = C.md_table(
        ["set", "masks given", "method", "Dice vs correct", "min", "Spearman", "held-out agreement",
         "changed px (right)", "objects removed / regions added", "time s"],
        [[r["set"], r["labels"], r["method"] + (" (default)" if r["method"] == "heat" else ""), C.fmt(r["dice"]),
          C.fmt(r["min"]), C.fmt(r.get("spearman")) + (
              f" (model {C.fmt(r['spearman_model'])}, prior {C.fmt(r['spearman_prior'])}"
              + (f", fit {C.fmt(r['spearman_fit'])})" if "spearman_fit" in r else ")")
              if C.fmt(r.get("spearman_model")) != "–" else ""),
          "" if "agreement" not in r else C.fmt(max((x for x in r["agreement"] if x is not None), default=None))
          + (" kept" if r.get("kept_as_given") else "") + C.rule_1_details(r),
          "" if "changed_px" not in r else f"{r['changed_px']} ({r['changed_right_px'] / max(r['changed_px'], 1):.0%})",
          "" if "objects_removed" not in r else f"{r['objects_removed']} / {r.get('regions_added', '–')}",
          f"{r['seconds']:.0f}" + (f" ({r['from']})" if "from" in r else "")] for r in rows])
    cl = data.get("classical", {})
    seed = f" --seed {data['seed']}" if data.get("seed") else ""
    C.write_text(path, f"# Real data: every method\n\nCommand: `python benchmarks/realtable.py{seed}` "
                 f"(classical tuned on `{cl.get('tuned_on')}`: {cl.get('params')}). Dice: mean foreground Dice "
                 "against the correct masks; Spearman: image score vs true Dice of the given mask (where the "
                 "score includes the shape prior, its two factors ranked alone in brackets); held-out "
                 "agreement: the model's pooled Dice with the given masks on images it did not train on "
                 "(`kept`: not reliable, every mask kept as given; in brackets, where recorded: the held-out objects "
                 "found (and, apart, the missed ones the image shows as background) and the outline-tolerant "
                 "agreement, and the agreement on trained images); changed px: pixels the output changed, and "
                 "the share of them that now agree with the correct mask; objects removed / regions added: "
                 "do-no-harm rules 3 and 4 (`core.review`)."
                 + ("".join(f" Rows marked ({t}) come from `realtable-{t}.json`, an earlier run of the same engine "
                            "and seed (`--rows-from`)." for t in sorted({r["from"] for r in rows if "from" in r})))
                 + "\n\n" + body)


if __name__ == "__main__":
    sys.exit(main())
