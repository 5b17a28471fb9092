"""Scale-out benchmark: starting to train on a large data set, and 1 vs 2 processes.

1. **Start-up**: time and peak memory from `ielstudio train` being called to its first
   training step, on N generated pairs of 512 px (default 20,000; PNG images and 0/255
   masks written once into a cache folder), read lazily (`dataset.load_samples_lazily`,
   automatic above `cleaning.LAZY_ABOVE` pairs), and the same for 1,000 pairs read
   eagerly, for reference. Each run is its own process (peak memory is its own).
2. **Throughput**: training steps per second of one process and of two (torchrun,
   gloo on CPU; `core.distributed`), the same total batch, interleaved, `--repeats`
   times; medians. GPU numbers are measured only where a GPU is present.

    python benchmarks/scale.py [--pairs 20000] [--repeats 3] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 512


def cache_dir() -> Path:
    return Path(os.environ.get("IELSTUDIO_BENCH_CACHE") or Path.home() / ".cache" / "ielstudio-bench") / "scale"


def make_pairs(root: Path, n: int) -> tuple[Path, Path]:
    """n pairs of 512 px: a few bright discs on a smooth background, their 0/255 masks."""
    import cv2

    images, masks = root / f"images-{n}", root / f"masks-{n}"
    if masks.is_dir() and len(list(masks.glob("*.png"))) == n:
        return images, masks
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    background = (40 + 20 * np.sin(xx / 60.0) * np.cos(yy / 80.0)).astype(np.float32)
    for i in range(n):
        m = np.zeros((SIZE, SIZE), np.uint8)
        for _ in range(int(rng.integers(3, 8))):
            cv2.circle(m, (int(rng.integers(30, SIZE - 30)), int(rng.integers(30, SIZE - 30))),
                       int(rng.integers(10, 30)), 255, -1)
        img = np.clip(background + m * 0.5, 0, 255).astype(np.uint8)
        cv2.imwrite(str(images / f"p{i:05d}.png"), img)
        cv2.imwrite(str(masks / f"p{i:05d}.png"), m)
    return images, masks


def startup(images: Path, masks: Path, lazy: bool | None) -> dict:
    """In this process: seconds and peak RSS (MB) until the first training step."""
    import torch

    from ielstudio.core import cleaning
    from ielstudio.core.cleaning import ModelEvent, train_dataset
    from ielstudio.core.training import StepEvent, TrainConfig

    torch.set_num_threads(2)
    if lazy is not None:
        cleaning.LAZY_ABOVE = 0 if lazy else 10 ** 9
    t0 = time.perf_counter()
    loaded_s = None
    with tempfile.TemporaryDirectory() as tmp:
        for ev in train_dataset(images, masks, TrainConfig(max_steps=2, min_steps=1), Path(tmp) / "m.pt"):
            if isinstance(ev, ModelEvent) and loaded_s is None:
                loaded_s = time.perf_counter() - t0
            if isinstance(ev, StepEvent):
                first = time.perf_counter() - t0
                break
    return {"loaded_s": round(loaded_s, 1), "first_step_s": round(first, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def throughput_worker(images: Path, masks: Path, steps: int) -> None:
    """Under torchrun (or alone): train `steps` steps, rank 0 prints steps/s as JSON."""
    from ielstudio.core import distributed
    from ielstudio.core.cleaning import load_dataset
    from ielstudio.core.training import DoneEvent, StepEvent, TrainConfig, train

    w = distributed.init_from_env("cpu")
    samples = load_dataset(images, masks).samples
    config = TrainConfig(epochs=10 ** 6, max_steps=steps, min_steps=0, device="cpu", crop=256, batch_size=4)
    started = None
    for ev in train(samples, config):
        if isinstance(ev, StepEvent) and ev.step == 3:  # the first steps warm up
            started = time.perf_counter()
        if isinstance(ev, DoneEvent):
            elapsed = time.perf_counter() - started
    if w.is_main:
        print(json.dumps({"processes": w.size, "steps_per_s": (steps - 3) / elapsed,
                          "patches_per_s": 4 * (steps - 3) / elapsed}), flush=True)
    distributed.shutdown()


def run_throughput(images: Path, masks: Path, procs: int, steps: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           __file__, "--worker", str(images), str(masks), "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // procs))}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--worker", nargs=2, metavar=("IMAGES", "MASKS"), help=argparse.SUPPRESS)
    p.add_argument("--startup", nargs=3, metavar=("IMAGES", "MASKS", "LAZY"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        throughput_worker(Path(args.worker[0]), Path(args.worker[1]), args.steps)
        return 0
    if args.startup:
        print(json.dumps(startup(Path(args.startup[0]), Path(args.startup[1]), args.startup[2] == "lazy")))
        return 0
    import torch

    root = cache_dir()
    rows = []
    for n, mode in ((args.pairs, "lazy"), (1000, "eager")):
        images, masks = make_pairs(root, n)
        out = subprocess.run([sys.executable, __file__, "--startup", str(images), str(masks), mode],
                             capture_output=True, text=True, check=True).stdout
        rows.append({"pairs": n, "mode": mode, **json.loads(out.splitlines()[-1])})
        print(json.dumps(rows[-1]), flush=True)
    images, masks = make_pairs(root, 200)
    speed: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):  # interleaved
        for procs in (1, 2):
            speed[procs].append(run_throughput(images, masks, procs, args.steps)["steps_per_s"])
    print(json.dumps(speed))
    lines = ["| data set | read | pairs loaded after (s) | first training step after (s) | peak memory (MB) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['pairs']:,} pairs of 512 px | {r['mode']} | {r['loaded_s']} | {r['first_step_s']} | "
              f"{r['peak_rss_mb']:,} |" for r in rows]
    one, two = statistics.median(speed[1]), statistics.median(speed[2])
    lines += ["", f"Training throughput on this machine ({os.cpu_count()} CPU cores, gloo, 256 px patches, "
              f"total batch 4, {args.steps} steps, median of {args.repeats} interleaved runs):", "",
              "| processes | steps/s | ratio |", "|---|---|---|",
              f"| 1 | {one:.2f} | 1.00 |", f"| 2 | {two:.2f} | {two / one:.2f} |", "",
              "GPU: " + ("measured separately" if torch.cuda.is_available() else
                         "not measured (no GPU on this machine)")]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.md").write_text(table + "\n")
    (RESULTS / "scale.json").write_text(json.dumps({"startup": rows, "steps_per_s": speed}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
