"""Every segmenter architecture on the same cleaning cases: Dice, step time, parameter count.

    python benchmarks/architectures.py [--steps 150] [--quick] [--archs unet,pdegcnn]

Each architecture is trained with the heat IEL for the same fixed number of
steps (no automatic budget, so the comparison is at equal work) on
(1) the bundled nuclei sample with its noisy masks and (2) a generated set of
thin, elongated vessels with boundary jitter + specks; its proposals are
scored against the clean masks. Prints one Markdown table per case and writes
benchmarks/results/architectures.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common as C
from ielstudio.core.cleaning import CleanConfig
from ielstudio.core.iel import IELConfig
from ielstudio.core.models import ARCHITECTURES, count_parameters

VESSEL_NOISE = "jitter+specks"


def cases(quick: bool) -> list[C.DataSet]:
    nuclei = C.bundled_set("nuclei")
    vessels = C.generated_set("vessels", 6 if quick else 12, 96, seed=7)
    vessels.given = C.noised(vessels.clean, VESSEL_NOISE, 1, seed=8, n_classes=vessels.n_classes)
    vessels.name = f"vessels ({VESSEL_NOISE}, level 1)"
    return [nuclei, vessels]


def run(ds: C.DataSet, arch: str, steps: int, crop: int, batch: int) -> dict:
    profile = C.PROFILES[ds.meta["kind"]]
    iel = IELConfig(heat_dt=profile["heat_dt"], heat_steps=profile["heat_steps"])
    config = C.fixed_budget(steps, arch=arch, iel=iel, crop=crop, batch_size=batch, seed=0)
    samples = C.make_samples(ds.names, ds.images, ds.given, ds.n_classes)
    times: list[float] = []
    t0 = time.perf_counter()
    done = C.fit(samples, config, step_times=times)
    train_s = time.perf_counter() - t0
    probs = C.probabilities(done, samples, out_of_sample=False)
    clean_cfg = CleanConfig(fill_holes=profile["fill_holes"])
    scores = C.mask_scores(C.proposals(probs, ds.given, clean_cfg), ds.clean, ds.n_classes)
    return {
        "arch": arch,
        "params": count_parameters(done.model),
        "step_ms": 1000 * statistics.median(times[1:] or times),
        "train_s": train_s,
        "dice": scores["dice"],
        "bf1": scores["bf1"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150, help="training steps per architecture and case")
    ap.add_argument("--crop", type=int, default=64, help="training crop size (px)")
    ap.add_argument("--batch", type=int, default=4, help="batch size")
    ap.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated architectures")
    ap.add_argument("--quick", action="store_true", help="fewer steps and images (a few minutes)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args(argv)
    steps = min(args.steps, 40) if args.quick else args.steps
    C.limit_threads(args.threads)
    facts = C.machine_facts()
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    out = {"facts": facts, "steps": steps, "crop": args.crop, "batch": args.batch, "cases": []}
    text = [f"# Architectures: {steps} steps, crop {args.crop}, batch {args.batch}, heat IEL\n",
            f"Machine: {facts}\n"]
    for ds in cases(args.quick):
        noisy = C.mask_scores(ds.given, ds.clean, ds.n_classes)["dice"]
        rows = []
        for arch in archs:
            r = run(ds, arch, steps, args.crop, args.batch)
            rows.append(r)
            print(f"{ds.name:40s} {arch:13s} params={r['params']:>8d} step={r['step_ms']:8.1f} ms "
                  f"dice={r['dice']:.3f}", flush=True)
        table = C.md_table(
            ["architecture", "parameters", "step (ms, median)", "train (s)", "Dice", "boundary F1"],
            [[r["arch"], f"{r['params']:,}", C.fmt(r["step_ms"], 1), C.fmt(r["train_s"], 1), C.fmt(r["dice"]),
              C.fmt(r["bf1"])] for r in rows])
        section = f"\n## {ds.name} ({len(ds.names)} images; noisy masks: Dice {noisy:.3f})\n\n{table}\n"
        print(section, flush=True)
        text.append(section)
        out["cases"].append({"name": ds.name, "noisy_dice": noisy, "rows": rows})
    C.write_text(C.RESULTS_DIR / ("architectures-quick.md" if args.quick else "architectures.md"), "".join(text))
    C.write_json(C.RESULTS_DIR / ("architectures-quick.json" if args.quick else "architectures.json"), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
