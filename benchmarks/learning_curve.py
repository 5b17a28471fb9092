"""Does the lesion model learn more from more slices? A learning curve on a development set.

    python benchmarks/learning_curve.py [--set dev] [--sizes 6,12,18] [--steps 450] [--jobs 2]

A fixed quarter of the set's images (every 4th, by name) is the test set; the network
(default recipe, a fixed number of steps so that size alone varies) trains on the first
k of a seeded permutation of the rest, given their noisy and, separately, their correct
masks, and its own decision (argmax) is scored against the *correct* masks of the test
images (allowed: a development set), pooled and per scan. If the Dice rises steeply
with k the data set's size limits the model; if it is flat, more slices of the same
scans will not help. Only ever run on a `dev` set.
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


def split(names: list[str], k: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(the first k training names of a seeded permutation of the pool, the test names)."""
    names = sorted(names)
    test = names[::4]
    pool = [n for n in names if n not in test]
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:k]], test


def run(set_name: str, labels: str, k: int, steps: int, threads: int) -> dict:
    C.limit_threads(threads)
    from ielstudio.core.cleaning import load_dataset
    from ielstudio.core.imageio import read_mask
    from ielstudio.core.metrics import dice
    from ielstudio.core.training import TrainConfig, predict

    rs = realdata.build_sets()[set_name]
    loaded = load_dataset(rs.images, rs.noisy if labels == "noisy" else rs.clean)
    samples, n = loaded.samples, loaded.n_classes
    by = {s.name: s for s in samples}
    enc = read_mask(rs.clean / samples[0].mask_path.name)[1]
    train_names, test_names = split(list(by), k)
    config = TrainConfig()
    train_set = [by[t] for t in train_names]
    from ielstudio.core.patches import patch_and_batch

    _, batch = patch_and_batch(train_set, config)
    config = TrainConfig(epochs=steps * batch / len(train_set), max_steps=steps)
    t0 = time.perf_counter()
    done = C.fit(train_set, config)
    scores = {}
    for t in test_names:
        truth = read_mask(rs.clean / by[t].mask_path.name, enc)[0]
        scores[t] = dice(np.argmax(predict(done.model, by[t].image), 0), truth, n)
    per_scan: dict[str, list[float]] = {}
    for t, v in scores.items():
        per_scan.setdefault(t.split("_")[0], []).append(v)
    return {"labels": labels, "k": k, "steps": done.steps, "train_s": time.perf_counter() - t0,
            "test": float(np.mean(list(scores.values()))),
            "per_scan": {s: float(np.mean(v)) for s, v in sorted(per_scan.items())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="dev")
    ap.add_argument("--labels", default="noisy,clean")
    ap.add_argument("--sizes", default="6,12,18")
    ap.add_argument("--steps", type=int, default=450)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    if not a.set.endswith("dev"):
        ap.error("learning curves are drawn on development sets only")
    realdata.build_sets()
    jobs = [(a.set, labels, int(k), a.steps) for labels in a.labels.split(",") for k in a.sizes.split(",")]
    threads = max(1, (os.cpu_count() or 1) // a.jobs)
    with ProcessPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(run, *zip(*jobs), [threads] * len(jobs)))
    scans = sorted({s for r in rows for s in r["per_scan"]})
    print(f"Test: every 4th image of `{a.set}` by name; the model's argmax against the correct masks, "
          f"{a.steps} steps each\n")
    print(C.md_table(["masks trained on", "training slices", "steps", "train s", "test Dice (pooled mean)"]
                     + [f"{s} test Dice" for s in scans],
                     [[r["labels"], r["k"], r["steps"], f"{r['train_s']:.0f}", C.fmt(r["test"])]
                      + [C.fmt(r["per_scan"].get(s)) for s in scans] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
