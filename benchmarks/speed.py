"""How fast is IEL Studio: IEL training overhead, inference, architectures, opening big folders.

    python benchmarks/speed.py                 # CPU (and CUDA when present), a few minutes
    python benchmarks/speed.py --quick         # fewer repeats (about a minute)
    python benchmarks/speed.py --out DIR --folder-cache /tmp/ielstudio-bench

Sections, each in a fresh subprocess so that its peak memory is its own:
- train: median optimiser-step time of `core.training.train` (real crops, augmentation,
  AdamW) without IEL, with the heat IEL at K = 10, 20, 30 and heat + curve motion at
  K = 20; the ratios to the plain step are the IEL overhead. Configurations are run in
  interleaved rounds so that load changes on a shared machine hit all of them alike.
- layout: median step time of the default recipe on 2 x 192 px in the memory layout
  `core.training.fast_layout` picks (channels-last on CPU and CUDA) against plain
  contiguous tensors, interleaved (`--sections layout`: speed-layout.md).
- infer: `core.training.predict` images/s at 256 px (one pass) and 1024 px (tiled).
- arch: parameter count and plain step time of every architecture in `ARCHITECTURES`.
- folder: opening a folder of 5,000 generated 512 px image/mask PNG pairs as the app
  does (`scan_pairs`, `session.Project.add_images`, one page of queue rows: names and
  status, no pixels): time and peak memory; plus the time eager pixel loading would take.
Writes <out>/speed.md and speed.json (speed-<sections>.* for other --sections). Last line of output: `iel_overhead=<CPU ratio at K=20>`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

TRAIN_CONFIGS = {  # name -> IELConfig kwargs (None = no IEL)
    "plain": None,
    "heat K=10": {"heat_steps": 10},
    "heat K=20": {"heat_steps": 20},
    "heat K=30": {"heat_steps": 30},
    "heat+convex K=20": {"heat_steps": 20, "convex_classes": (1,), "convex_steps": 20},
}
DEFAULT_SECTIONS = "train,layout,infer,arch,folder"
FOLDER_PAIRS = 5000
FOLDER_PX = 512
FOLDER_DISTINCT = 16


def _devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _cuda_peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _cuda_peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 1024**2 if device.startswith("cuda") else None


def _train_samples(n: int = 8, size: int = 128):
    ds = C.generated_set("nuclei", n, size, seed=1)
    return C.make_samples(ds.names, ds.images, ds.clean, ds.n_classes)


# --------------------------------------------------------------------------- sections (run in children)


def section_train(device: str, rounds: int, steps: int, n: int = 8, size: int = 128, **train_kw) -> dict:
    """Median step time per IEL configuration; `rounds` interleaved runs of `steps` steps each
    (default TrainConfig: the batch and crop the app trains with; `train_kw` overrides)."""
    from ielstudio.core.iel import IELConfig
    from ielstudio.core.training import TrainConfig

    samples = _train_samples(n, size)
    times: dict[str, list[float]] = {k: [] for k in TRAIN_CONFIGS}
    peaks: dict[str, float | None] = {}
    for r in range(rounds):
        for name, kw in TRAIN_CONFIGS.items():
            iel = IELConfig.none() if kw is None else IELConfig(**kw)
            st: list[float] = []
            _cuda_peak_reset(device)
            C.fit(samples, C.fixed_budget(steps, iel=iel, device=device, seed=r, **train_kw), step_times=st)
            times[name] += st[2:] if len(st) > 3 else st  # the first steps warm up allocators and caches
            peaks[name] = _cuda_peak_mb(device)
    med = {k: statistics.median(v) for k, v in times.items()}
    cfg = TrainConfig(**train_kw)
    return {"device": device, "median_step_s": med, "n_steps": {k: len(v) for k, v in times.items()},
            "ratio": {k: med[k] / med["plain"] for k in med}, "cuda_peak_mb": peaks,
            "batch_size": cfg.batch_size, "crop": cfg.crop, "width": cfg.width, "depth": cfg.depth,
            "threads": __import__("torch").get_num_threads()}


def section_infer(device: str, repeats: int) -> dict:
    from ielstudio.core.models import build_model
    from ielstudio.core.training import TrainConfig, predict

    cfg = TrainConfig()
    model = build_model("unet", 1, 2, **cfg.model_kwargs()).to(device).eval()
    out = {"device": device}
    for px, n in ((256, repeats), (1024, max(2, repeats // 4))):
        image = C.as_model_input(C.generated_set("nuclei", 1, px, seed=px).images[0][0])
        predict(model, image, device)  # warm-up
        _sync(device)
        _cuda_peak_reset(device)
        t = time.perf_counter()
        for _ in range(n):
            predict(model, image, device)
        _sync(device)
        dt = time.perf_counter() - t
        out[f"{px}px"] = {"images_per_s": n / dt, "s_per_image": dt / n, "n": n, "cuda_peak_mb": _cuda_peak_mb(device)}
    return out


def section_arch(device: str, steps: int, max_seconds: float = 60.0) -> dict:
    """Parameters and median plain step time per architecture (first step not counted);
    a slow one stops after `max_seconds` instead of `steps` steps."""
    from ielstudio.core.iel import IELConfig
    from ielstudio.core.models import ARCHITECTURES, build_model, count_parameters
    from ielstudio.core.training import TrainConfig

    samples = _train_samples()
    cfg = TrainConfig()
    out = {"device": device, "archs": {}}
    for arch in ARCHITECTURES:
        try:
            params = count_parameters(build_model(arch, 1, 2, **cfg.model_kwargs()))
            st: list[float] = []
            C.fit(samples, C.fixed_budget(steps, arch=arch, iel=IELConfig.none(), device=device), step_times=st,
                  max_seconds=max_seconds)
            out["archs"][arch] = {"params": params, "median_step_s": statistics.median(st[1:] if len(st) > 1 else st),
                                  "steps_timed": max(1, len(st) - 1)}
        except Exception as e:  # an architecture that is missing or broken is reported, not fatal
            out["archs"][arch] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    return out


def make_folder(root: Path) -> tuple[Path, Path]:
    """The cached folder of FOLDER_PAIRS 512 px pairs: FOLDER_DISTINCT generated pairs,
    hard-linked (copied where links fail) under 5,000 names. Built once, reused."""
    from ielstudio.core.imageio import atomic_write_image, atomic_write_text

    images, masks = root / "images", root / "masks"
    done = root / ".complete"
    if done.exists():
        return images, masks
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    ds = C.generated_set("nuclei", FOLDER_DISTINCT, FOLDER_PX, seed=5)
    src = []
    for i, (img, mask) in enumerate(zip(ds.images, ds.clean)):
        ip, mp = root / f"src_{i:02d}.png", root / f"src_{i:02d}_mask.png"
        atomic_write_image(ip, (img[0] * 255).astype(np.uint8))
        atomic_write_image(mp, (mask * 255).astype(np.uint8))
        src.append((ip, mp))
    for k in range(FOLDER_PAIRS):
        ip, mp = src[k % len(src)]
        for s, d in ((ip, images / f"img_{k:05d}.png"), (mp, masks / f"img_{k:05d}_mask.png")):
            if not d.exists():
                try:
                    os.link(s, d)
                except OSError:
                    d.write_bytes(s.read_bytes())
    atomic_write_text(done, f"{FOLDER_PAIRS} pairs of {FOLDER_PX} px\n")
    return images, masks


def section_folder(cache: str, page: int = 200) -> dict:
    from ielstudio.core.dataset import load_sample, scan_pairs
    from ielstudio.core.session import Project

    images, masks = make_folder(Path(cache) / f"folder-{FOLDER_PAIRS}-{FOLDER_PX}")
    rss0 = C.peak_rss_mb()
    tracemalloc.start()
    t0 = time.perf_counter()
    scan = scan_pairs(images, masks)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        project = Project.create(Path(tmp) / "bench.ielproj", images, masks)
        try:
            project.add_images(scan.pairs)
            t2 = time.perf_counter()
            first_page = [(r.name, r.status) for r in project.images(order_by="score", limit=page)]
            t3 = time.perf_counter()
            all_rows = [(r.name, r.status) for r in project.images(order_by="score")]
            t4 = time.perf_counter()
        finally:
            project.close()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = C.peak_rss_mb()
    t = time.perf_counter()
    n_eager = 40
    for p in scan.pairs[:n_eager]:
        load_sample(p)
    eager = (time.perf_counter() - t) / n_eager
    return {"pairs": len(scan.pairs), "skipped": len(scan.skipped), "px": FOLDER_PX,
            "scan_s": t1 - t0, "project_add_s": t2 - t1, "first_page_s": t3 - t2, "first_page_rows": len(first_page),
            "all_rows_s": t4 - t3, "all_rows": len(all_rows),
            "time_to_queue_s": (t1 - t0) + (t2 - t1) + (t4 - t3),
            "python_peak_mb": traced_peak / 1024**2, "rss_before_mb": rss0, "rss_peak_mb": rss1,
            "eager_load_s_per_pair": eager, "eager_load_all_s": eager * len(scan.pairs)}


def section_folder_make(cache: str) -> dict:
    t = time.perf_counter()
    images, _ = make_folder(Path(cache) / f"folder-{FOLDER_PAIRS}-{FOLDER_PX}")
    return {"path": str(images.parent), "seconds": time.perf_counter() - t}


def section_layout(device: str, rounds: int, steps: int, n: int = 8, size: int = 192) -> dict:
    """Median step time of the default recipe (heat IEL, Dice + CE, auto batch: 2 whole
    192 px images) in the layout `core.training.fast_layout` picks against plain
    contiguous tensors, in `rounds` interleaved runs of `steps` steps each."""
    import torch

    from ielstudio.core import training

    samples = _train_samples(n, size)
    chosen = training.fast_layout
    variants = {"contiguous": lambda model, dev: torch.contiguous_format, "fast_layout": chosen}
    times: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for r in range(rounds):
            for name, pick in variants.items():
                training.fast_layout = pick
                st: list[float] = []
                C.fit(samples, C.fixed_budget(steps, device=device, seed=r), step_times=st)
                times[name] += st[2:] if len(st) > 3 else st
    finally:
        training.fast_layout = chosen
    med = {k: statistics.median(v) for k, v in times.items()}
    picked = str(chosen(torch.nn.Conv2d(1, 1, 3), torch.device(device))).replace("torch.", "")
    return {"device": device, "median_step_s": med, "n_steps": {k: len(v) for k, v in times.items()},
            "ratio": med["fast_layout"] / med["contiguous"], "picked": picked, "size": size,
            "threads": torch.get_num_threads()}


SECTIONS = {"train": section_train, "layout": section_layout, "infer": section_infer, "arch": section_arch, "folder": section_folder,
            "folder_make": section_folder_make}


def run_child(section: str, kwargs: dict, timeout: float) -> dict:
    """Run one section in a fresh interpreter; its result (JSON) is the last stdout line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", section, "--child-args", json.dumps(kwargs)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t
    return res


# --------------------------------------------------------------------------- report


def report(facts: dict, res: dict, cmd: str) -> str:
    out = [f"# Speed benchmark\n\nCommand: `{cmd}`  \nMachine: {facts['cpu']}, {facts['nproc']} cores, torch "
           f"{facts['torch']}, GPU: {facts['cuda'] or 'none'}.\n"]
    for dev in res["devices"]:
        tr = res.get(f"train/{dev}", {})
        if "median_step_s" in tr:
            out.append(f"\n## Training step on {dev} (U-Net width {tr['width']}, depth {tr['depth']}, batch "
                       f"{tr['batch_size']} x {tr['crop']} px crops, {tr['threads']} threads)\n\n")
            rows = [[k, tr["median_step_s"][k] * 1000, tr["ratio"][k], tr["n_steps"][k],
                     tr["cuda_peak_mb"][k] if dev == "cuda" else None] for k in TRAIN_CONFIGS]
            out.append(C.md_table(["configuration", "median step (ms)", "× plain", "steps timed",
                                   "CUDA peak (MiB)"], rows))
            out.append(f"\nPeak RSS of this section: {tr.get('rss_peak_mb', float('nan')):.0f} MiB.\n")
        elif tr:
            out.append(f"\nTraining on {dev}: failed ({tr.get('error')})\n")
        inf = res.get(f"infer/{dev}", {})
        if "256px" in inf:
            out.append(f"\n## Inference on {dev} (`predict`, IEL off; 1024 px in 256 px tiles)\n\n")
            out.append(C.md_table(["image", "images/s", "ms/image", "CUDA peak (MiB)"],
                                  [[k, inf[k]["images_per_s"], inf[k]["s_per_image"] * 1000, inf[k]["cuda_peak_mb"]]
                                   for k in ("256px", "1024px")]))
            out.append(f"\nPeak RSS of this section: {inf.get('rss_peak_mb', float('nan')):.0f} MiB.\n")
        lay = res.get(f"layout/{dev}", {})
        if "median_step_s" in lay:
            out.append(f"\n## Memory layout on {dev} (default recipe, 2 x {lay['size']} px, {lay['threads']} threads; "
                       f"`fast_layout` picks {lay['picked']})\n\n")
            out.append(C.md_table(["layout", "median step (ms)", "steps timed"],
                                  [[k, v * 1000, lay["n_steps"][k]] for k, v in lay["median_step_s"].items()]))
            out.append(f"\nfast_layout / contiguous: {lay['ratio']:.2f}\n")
        ar = res.get(f"arch/{dev}", {})
        if "archs" in ar:
            out.append(f"\n## Architectures on {dev} (plain step, same data and batch)\n\n")
            rows = [[a, v.get("params"), v["median_step_s"] * 1000 if "median_step_s" in v else None,
                     v.get("steps_timed"), v.get("error", "")] for a, v in ar["archs"].items()]
            out.append(C.md_table(["architecture", "parameters", "median step (ms)", "steps timed", "note"], rows))
    fo = res.get("folder", {})
    if "pairs" in fo:
        out.append(f"\n## Opening a folder of {fo['pairs']} image/mask pairs ({fo['px']} px PNG)\n\n")
        out.append(C.md_table(["stage", "seconds"], [
            ["scan_pairs (names only)", fo["scan_s"]], ["project add_images (SQLite)", fo["project_add_s"]],
            [f"first queue page ({fo['first_page_rows']} rows)", fo["first_page_s"]],
            [f"all {fo['all_rows']} queue rows", fo["all_rows_s"]],
            ["**time until the queue shows**", fo["time_to_queue_s"]],
            ["(eager pixel loading of every pair would take)", fo["eager_load_all_s"]]]))
        out.append(f"\nPython heap peak while opening {fo['python_peak_mb']:.1f} MiB (tracemalloc); process peak RSS "
                   f"{fo['rss_peak_mb']:.0f} MiB (of which {fo['rss_before_mb']:.0f} MiB before opening: "
                   f"interpreter, numpy, OpenCV, torch imports).\n")
    elif fo:
        out.append(f"\nFolder section failed: {fo.get('error')}\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (about a minute on 2 cores)")
    ap.add_argument("--out", type=Path, default=C.RESULTS_DIR)
    ap.add_argument("--folder-cache", default=str(Path(tempfile.gettempdir()) / "ielstudio-bench"),
                    help="where the 5,000-pair folder is generated once and reused")
    ap.add_argument("--sections", default=DEFAULT_SECTIONS, help="any of train, layout, infer, arch, folder")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per section")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each section (0 = torch's default)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kw = json.loads(a.child_args)
        threads = kw.pop("threads", 0)
        if threads:
            C.limit_threads(threads)
        res = SECTIONS[a.child](**kw)
        import torch

        res["torch_threads"] = torch.get_num_threads()
        res["rss_peak_mb"] = C.peak_rss_mb()
        print(json.dumps(res))
        return 0

    rounds, steps, repeats, arch_steps = (2, 8, 6, 8) if a.quick else (4, 15, 20, 15)
    facts = C.machine_facts()
    cmd = ("python benchmarks/speed.py" + (" --quick" if a.quick else "")
           + ("" if a.sections == DEFAULT_SECTIONS else f" --sections {a.sections}"))
    wanted = a.sections.split(",")
    res: dict = {"facts": facts, "devices": _devices(), "command": cmd}
    for dev in res["devices"]:
        if "train" in wanted:
            res[f"train/{dev}"] = r = run_child("train", {"device": dev, "rounds": rounds, "steps": steps,
                                                           "threads": a.threads}, a.timeout)
            if "ratio" in r:
                print(f"[{dev}] step " + ", ".join(f"{k} {r['median_step_s'][k] * 1000:.0f} ms ({r['ratio'][k]:.2f}x)"
                                                   for k in TRAIN_CONFIGS), flush=True)
            else:
                print(f"[{dev}] train failed: {r.get('error')}", flush=True)
        if "layout" in wanted:
            res[f"layout/{dev}"] = r = run_child("layout", {"device": dev, "rounds": rounds, "steps": steps,
                                                             "threads": a.threads}, a.timeout)
            print(f"[{dev}] layout: " + (f"fast_layout / contiguous {r['ratio']:.2f}" if "ratio" in r
                                         else f"failed: {r.get('error')}"), flush=True)
        if "infer" in wanted:
            res[f"infer/{dev}"] = r = run_child("infer", {"device": dev, "repeats": repeats, "threads": a.threads},
                                                 a.timeout)
            print(f"[{dev}] inference " + ", ".join(f"{k} {r[k]['images_per_s']:.2f} img/s" for k in ("256px", "1024px")
                                                   if k in r), flush=True)
        if "arch" in wanted:
            res[f"arch/{dev}"] = r = run_child("arch", {"device": dev, "steps": arch_steps, "threads": a.threads},
                                                a.timeout)
            for k, v in r.get("archs", {}).items():
                print(f"[{dev}] {k}: " + (f"{v['params']} params, {v['median_step_s'] * 1000:.0f} ms/step"
                                          if "params" in v and "median_step_s" in v else v.get("error", "")), flush=True)
    if "folder" in wanted:
        run_child("folder_make", {"cache": a.folder_cache}, a.timeout)  # once; its memory is not counted
        res["folder"] = r = run_child("folder", {"cache": a.folder_cache}, a.timeout)
        if "pairs" in r:
            print(f"folder of {r['pairs']} pairs: queue after {r['time_to_queue_s']:.2f} s, peak RSS "
                  f"{r['rss_peak_mb']:.0f} MiB (eager loading would take {r['eager_load_all_s']:.0f} s)", flush=True)
        else:
            print(f"folder failed: {r.get('error')}", flush=True)

    a.out.mkdir(parents=True, exist_ok=True)
    name = ("speed-quick" if a.quick else "speed") + ("" if a.sections == DEFAULT_SECTIONS else
                                                       "-" + "-".join(wanted))
    C.write_json(a.out / f"{name}.json", res)
    text = report(facts, res, cmd)
    C.write_text(a.out / f"{name}.md", text)
    print(text)
    for dev in res["devices"][1:]:
        r = res.get(f"train/{dev}", {})
        if "ratio" in r:
            print(f"iel_overhead_{dev}={r['ratio']['heat K=20']:.3f}")
    r = res.get("train/cpu", {})
    print(f"iel_overhead={r['ratio']['heat K=20']:.3f}" if "ratio" in r else "iel_overhead=nan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
