"""Does test-time mirroring (nnU-Net's default: the mean softmax over flipped copies of the
image) help a weak model rank and clean real labels? A development probe.

    python benchmarks/tta_probe.py --sets dev,lesions-dev,brain-multiclass-dev

Per set and label kind (the realistic noisy masks, and the correct ones), it trains the
default recipe once, then reviews every image (`core.review.review_samples`, the path of
`clean` and the window) with the model as it is and wrapped in `Mirrored` (4 or 8
transforms of the dihedral group), and prints: the model's own Dice against the correct
masks, the output Dice, the ranking's Spearman against the given masks' true Dice, and
the review's time. Choosing is done on dev sets only.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


def mirrored(model, transforms: int):
    import torch

    class Mirrored(torch.nn.Module):
        """log of the mean softmax of `model` over flipped (and, with 8, transposed) copies."""

        def __init__(self):
            super().__init__()
            self.inner = model
            self.model_spec = getattr(model, "model_spec", {})

        def forward(self, x):
            ops = [(), (-1,), (-2,), (-2, -1)]
            acc = 0
            for t in ([False, True] if transforms == 8 else [False]):
                y = x.transpose(-1, -2) if t else x
                for dims in ops:
                    p = self.inner(y.flip(dims) if dims else y).float().softmax(1)
                    p = p.flip(dims) if dims else p
                    acc = acc + (p.transpose(-1, -2) if t else p)
            return (acc / (len(ops) * (2 if transforms == 8 else 1))).clamp_min(1e-8).log()

    return Mirrored()


def run(set_name: str, labels: str, threads: int) -> dict:
    C.limit_threads(threads)
    import evidence_probe as E

    from ielstudio.core.cleaning import CleanConfig, load_dataset
    from ielstudio.core.imageio import read_mask
    from ielstudio.core.metrics import dice
    from ielstudio.core.decision import decide
    from ielstudio.core.review import review_samples
    from ielstudio.core.training import TrainConfig

    rs = E.sets()[set_name]
    samples = load_dataset(rs.images, rs.noisy if labels == "noisy" else rs.clean).samples
    enc = read_mask(rs.clean / samples[0].mask_path.name)[1]
    clean = {s.name: read_mask(rs.clean / s.mask_path.name, enc)[0] for s in samples}
    n = rs.n_classes
    t0 = time.perf_counter()
    done = C.fit(samples, TrainConfig())
    train_s = time.perf_counter() - t0
    held = list(done.history.get("holdout", []))
    true = np.array([dice(s.mask, clean[s.name], n) for s in samples])
    out = {"set": set_name, "labels": labels, "train_s": train_s, "given": float(true.mean()), "rows": []}
    for variant in ("plain", "mirror4", "mirror8"):
        model = done.model if variant == "plain" else mirrored(done.model, int(variant[-1]))
        t1 = time.perf_counter()
        results, summary = C.drain(review_samples(model, samples, CleanConfig(), held))
        review_s = time.perf_counter() - t1
        by = {r.name: r for r in results}
        own = np.mean([dice(decide(by[s.name].probs, summary.thresholds), clean[s.name], n) for s in samples])
        output = np.mean([dice(by[s.name].proposal, clean[s.name], n) for s in samples])
        scores = np.array([by[s.name].score for s in samples])
        rho = C.spearman(scores, true) if not np.allclose(true, 1) else float("nan")
        out["rows"].append({"variant": variant, "own": float(own), "output": float(output), "spearman": rho,
                            "reliable": summary.reliability.reliable, "removed": summary.objects_removed,
                            "review_s": review_s})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="dev,lesions-dev,brain-multiclass-dev")
    ap.add_argument("--labels", default="noisy,clean")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    tasks = [(s, lab) for s in args.sets.split(",") for lab in args.labels.split(",")]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run, s, lab, 1) for s, lab in tasks]
        results = [f.result() for f in futures]
    rows = []
    for r in results:
        for v in r["rows"]:
            rows.append([r["set"], r["labels"], v["variant"], C.fmt(r["given"]), C.fmt(v["own"]), C.fmt(v["output"]),
                         C.fmt(v["spearman"]), "".join("y" if x else "n" for x in v["reliable"][1:]), v["removed"],
                         f"{r['train_s']:.0f}", f"{v['review_s']:.1f}"])
    table = C.md_table(["set", "labels", "predict", "given Dice", "model's own Dice", "output Dice", "Spearman",
                        "reliable", "objects removed", "train s", "review s"], rows)
    print(table)
    C.write_text(C.RESULTS_DIR / "tta-probe.md", f"# Test-time mirroring\n\nCommand: `python benchmarks/tta_probe.py "
                 f"--sets {args.sets} --labels {args.labels}`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
