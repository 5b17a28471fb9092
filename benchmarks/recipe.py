"""Compare training recipes on a real development set (choose defaults here, report elsewhere).

    python benchmarks/recipe.py [--set dev] [--labels noisy] [--jobs 2]
        --variant default --variant "crop=96,batch_size=8,foreground_crops=0.5" ...

Each variant is a `TrainConfig` override of the defaults (automatic budget; `iel.<field>`
sets a field of its `IELConfig`, e.g. `iel.heat=0` for no heat IEL). Variants run
in parallel worker processes (cores / jobs torch threads each), so they share the
machine's load alike. Per variant: steps, wall time, the budget's held-out agreement
with the given masks, the in-sample agreement, and against the correct masks of the set
(allowed: this is a development set) the mean Dice of the model's raw decision on the
held-out images and on all images, and of the default `ielstudio clean` output
(after the do-no-harm gates). Only ever run on a `dev` set.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import realdata  # noqa: E402


def parse_variant(text: str) -> dict:
    if text == "default":
        return {}
    out = {}
    for kv in text.split(","):
        k, v = kv.split("=")
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def train_config(values: dict):
    """The TrainConfig of a variant; ``iel.<field>`` keys set the IELConfig's fields, a
    number taking the type of the field's default (``iel.heat=0``: no heat IEL)."""
    from ielstudio.core.iel import IELConfig
    from ielstudio.core.training import TrainConfig

    defaults = IELConfig()

    def typed(field: str, value):
        default = getattr(defaults, field)
        return type(default)(value) if isinstance(default, (bool, int, float)) else value

    iel = {k[4:]: typed(k[4:], v) for k, v in values.items() if k.startswith("iel.")}
    rest = {k: v for k, v in values.items() if not k.startswith("iel.")}
    return TrainConfig(**rest, iel=IELConfig(**iel)) if iel else TrainConfig(**rest)


def run_variant(set_name: str, labels: str, text: str, threads: int) -> dict:
    C.limit_threads(threads)
    from ielstudio.core.cleaning import CleanConfig, load_dataset
    from ielstudio.core.decision import decide
    from ielstudio.core.imageio import read_mask
    from ielstudio.core.metrics import dice
    from ielstudio.core.review import review_samples
    from ielstudio.core.training import predict

    rs = realdata.build_sets()[set_name]
    loaded = load_dataset(rs.images, rs.noisy if labels == "noisy" else rs.clean)
    samples, n = loaded.samples, loaded.n_classes
    enc = read_mask(rs.clean / samples[0].mask_path.name)[1]
    clean = {s.name: read_mask(rs.clean / s.mask_path.name, enc)[0] for s in samples}
    t0 = time.perf_counter()
    done = C.fit(samples, train_config(parse_variant(text)))
    train_s = time.perf_counter() - t0
    held = set(done.history.get("holdout", []))
    results, summary = C.drain(review_samples(done.model, samples, CleanConfig(), list(held)))
    by = {r.name: r for r in results}
    raw = {s.name: dice(decide(by[s.name].probs, summary.thresholds), clean[s.name], n) for s in samples}
    out = {s.name: dice(by[s.name].proposal, clean[s.name], n) for s in samples}
    given = {s.name: dice(s.mask, clean[s.name], n) for s in samples}
    train_agree = np.mean([dice(decide(predict(done.model, s.image), summary.thresholds), s.mask, n)
                           for s in samples if s.name not in held])
    return {"variant": text, "steps": done.steps, "train_s": train_s, "reason": done.reason,
            "best_step": done.history.get("best_step"),
            "heldout_agreement": summary.reliability.agreement, "train_agreement": float(train_agree),
            "raw_heldout": float(np.mean([raw[k] for k in held])) if held else float("nan"),
            "raw_all": float(np.mean(list(raw.values()))), "given": float(np.mean(list(given.values()))),
            "output": float(np.mean(list(out.values()))),
            "spearman": C.spearman([by[s.name].score for s in samples], [given[s.name] for s in samples])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="dev")
    ap.add_argument("--labels", default="noisy")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    if not a.set.endswith("dev"):
        ap.error("recipes are chosen on development sets only (dev, brain-multiclass-dev)")
    variants = a.variant or ["default"]
    threads = max(1, (os.cpu_count() or 1) // a.jobs)
    realdata.build_sets()
    with ProcessPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(run_variant, [a.set] * len(variants), [a.labels] * len(variants), variants,
                             [threads] * len(variants)))
    print(C.md_table(["variant", "steps", "best", "train s", "held-out agr", "train agr", "raw Dice held-out",
                      "raw Dice all", "given", "output", "Spearman"],
                     [[r["variant"], r["steps"], r["best_step"], f"{r['train_s']:.0f}",
                       C.fmt(max((x for x in r["heldout_agreement"] if x is not None), default=None)),
                       C.fmt(r["train_agreement"]), C.fmt(r["raw_heldout"]), C.fmt(r["raw_all"]), C.fmt(r["given"]),
                       C.fmt(r["output"]), C.fmt(r["spearman"])] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
