"""Heat IEL across slices: does coupling neighbouring slices help volume cleaning?

Volumes are cleaned today (`core.volume_clean.clean_volumes`) by training the 2-D
segmenter on every slice with the 2-D heat IEL in the loss, then deciding,
post-processing (3-D) and gating each volume. The heat equation and its DCT solution
(`core.iel.HeatIEL`) extend to 3-D; this script measures whether using that helps,
at the same settings and seeds as today's per-slice recipe. Nothing here changes the
library: the variants live in this file.

Arms (all trained by `core.training.train` with the same TrainConfig, seed, hold-out
and automatic-budget logic; only the named piece differs):

- ``base``: today's recipe, unchanged (2-D heat IEL per slice, the library's patch
  sampler), proposals as `review_volumes` makes them.
- ``infz``: (b) inference time. The ``base`` model (the very same weights), but
  each volume's per-slice probability volume (C,D,H,W) is diffused along the slice
  axis before the decision: the exact solution ``exp(t L_z)`` of the forward heat
  equation with ``L_z = w Delta_z / 4`` (Neumann ends, one DCT along z), ``w =
  (in-plane spacing / slice spacing)^2``. ``t`` is in the IEL's units (the 2-D IEL's
  in-plane operator is ``Delta_xy / 4``; its defaults dt 0.1, K 20 span t = dt*K = 2),
  so a 5 mm gap couples far less than a 1 mm gap. The Gaussian width across slices
  is sigma = sqrt(w t / 2) slices. Thresholds, reliability and the gate all see the
  diffused probabilities, as they would if this were part of prediction.
- ``slab3d``: (a) training time. Patches are drawn as slabs of k neighbouring
  slices of one volume at the same crop window and the same augmentation; the 2-D
  network predicts each slice; the heat IEL acts on the slab's logits as one 3-D
  field: ``T = (I - dt L)^K`` with ``L = (Delta_x + Delta_y + w Delta_z) / 4``
  (replicate/Neumann boundaries), computed exactly in the 3-D DCT basis (a third DCT
  along the slab, lambda = ((1 - cos a) + (1 - cos b) + w (1 - cos c)) / 2). With w = 0
  this is exactly the library's 2-D HeatIEL on every slice (checked by --selftest).
  The IEL acts on logits, as the library's does (iel-method.md), not on probabilities.
- ``slab2d``: the control for ``slab3d``: the same slab sampler (so the same batch
  composition), the library's 2-D IEL (w = 0). ``slab3d - slab2d`` isolates the
  across-slice coupling; ``slab2d - base`` the sampler.

Protocol: every variant parameter (t of ``infz``, k of ``slab3d``, and whether
``slab3d`` couples at the spacing's w or as if isotropic, w = 1) is chosen on a DEV set
(generated volumes made with other seeds than the report set) by the median over
seeds of the mean raw-proposal Dice; the REPORT sets (the generated set of
`benchmarks/volumes.py`, seed 0, and the five pyradiomics scans) are only scored.
Each run is scored given the noisy labels and (do no harm) given the correct ones.
Dice is foreground Dice per volume against the correct labels, averaged over the
volumes of a set; "raw" is the model's 3-D post-processed decision before the
do-no-harm gate, "out" what `ielstudio clean` would write (after the gate).

    python benchmarks/heat3d.py --selftest
    python benchmarks/heat3d.py [--steps 200] [--width 16] [--seeds 0,1] [--seeds-pyradiomics 0,1] [--tag NAME]

The recorded run (results/heat3d.md): --seeds 0,1,2 --seeds-pyradiomics 0,1 (about 28 min on 2 cores).

Runs are cached in results/heat3d[-TAG]-runs.json (a rerun skips finished runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import common  # noqa: E402
import volumes as vbench  # noqa: E402
from ielstudio.core import training  # noqa: E402
from ielstudio.core.cleaning import CleanConfig, calibration_subset, keep_given_edges, thresholds_for  # noqa: E402
from ielstudio.core.dataset import augment_pair  # noqa: E402
from ielstudio.core.decision import decide  # noqa: E402
from ielstudio.core.iel import _dct_matrix  # noqa: E402
from ielstudio.core.patches import MAX_CENTRES  # noqa: E402
from ielstudio.core.review import MAX_RELIABILITY_IMAGES, assess_reliability, gate_changes  # noqa: E402
from ielstudio.core.training import DoneEvent, TrainConfig, predict  # noqa: E402
from ielstudio.core.volume_clean import load_volumes, postprocess_volume, review_volumes  # noqa: E402
from ielstudio.core.volume_data import SLICE_SEP  # noqa: E402

RESULTS = HERE / "results"


# --------------------------------------------------------------------------- 3-D heat


def coupling(spacing, axis: int) -> float:
    """w = (in-plane spacing / slice spacing)^2 (the finer in-plane spacing)."""
    sp = [float(s) for s in spacing]
    inplane = min(s for a, s in enumerate(sp) if a != axis)
    return (inplane / sp[axis]) ** 2


def _lap3(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """4 L u = Delta_x u + Delta_y u + w Delta_z u for u (N, C, Z, H, W), w (N,); replicate padding."""
    p = torch.nn.functional.pad(u, (1, 1, 1, 1, 1, 1), mode="replicate")
    c = p[:, :, 1:-1]
    inplane = torch.add((c[..., :-2, 1:-1] + c[..., 2:, 1:-1]) + (c[..., 1:-1, :-2] + c[..., 1:-1, 2:]), u, alpha=-4.0)
    dz = p[:, :, :-2, 1:-1, 1:-1] + p[:, :, 2:, 1:-1, 1:-1] - 2.0 * u
    return inplane + w.view(-1, 1, 1, 1, 1).to(u.dtype) * dz


def _axis_lambda(n: int) -> torch.Tensor:
    return 1.0 - torch.cos(math.pi * torch.arange(n, dtype=torch.float64) / n)


def heat3d_inverse(u: torch.Tensor, w: torch.Tensor, dt: float, steps: int) -> torch.Tensor:
    """K inverse heat steps ``u <- u - dt L u`` on (N, C, Z, H, W), L = (Dx + Dy + w Dz)/4,
    computed exactly in the DCT-II basis (as core.iel.HeatIEL does in 2-D); differentiable."""
    n, c, z, h, wd = u.shape
    dev, dtype = u.device, u.dtype
    lam = (_axis_lambda(z)[None, :, None, None] * w.double().cpu().view(-1, 1, 1, 1)
           + _axis_lambda(h)[None, None, :, None] + _axis_lambda(wd)[None, None, None, :]) / 2.0  # (N,Z,H,W)
    grow = torch.expm1(steps * torch.log1p(dt * lam))
    q = torch.where(lam > 0, -grow / lam.clamp_min(1e-300), torch.full_like(lam, -dt * steps)) / 4.0
    q = q.to(device=dev, dtype=dtype)[:, None]
    dz_, dh, dw = (_dct_matrix(m).to(device=dev, dtype=dtype) for m in (z, h, wd))
    lap = _lap3(u, w.to(dev))
    coef = torch.matmul(dh, torch.matmul(lap, dw.T))
    coef = torch.einsum("az,nczhw->ncahw", dz_, coef) * q
    back = torch.einsum("az,ncahw->nczhw", dz_, coef)
    return u + torch.matmul(dh.T, torch.matmul(back, dw))


def heat3d_loop(u: torch.Tensor, w: torch.Tensor, dt: float, steps: int) -> torch.Tensor:
    """The same by K explicit steps (oracle for --selftest)."""
    for _ in range(steps):
        u = u - dt / 4.0 * _lap3(u, w)
    return u


def diffuse_z(probs: np.ndarray, w: float, t: float) -> np.ndarray:
    """Forward heat along the slice axis for time t: exp(t L_z) p, L_z = w Dz / 4, Neumann,
    on (C, D, H, W) probabilities (exact via one DCT; keeps sums and positivity)."""
    if t <= 0 or w <= 0 or probs.shape[1] < 2:
        return probs
    d = probs.shape[1]
    m = _dct_matrix(d).numpy()
    factor = np.exp(-t * w * _axis_lambda(d).numpy() / 2.0)
    op = (m.T * factor[None, :]) @ m  # (D, D), symmetric, rows sum to 1
    out = np.einsum("ab,cbhw->cahw", op, probs.astype(np.float64))
    out = np.clip(out, 0.0, None)
    out /= np.maximum(out.sum(0, keepdims=True), 1e-12)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- slab training


class _SlabState:
    """What the slab sampler tells the slab IEL about the batch it just made."""

    k = 3
    w = None  # (N,) tensor of couplings, one per slab
    couple = "spacing"  # "spacing" | "iso" | "none"
    spacing_w: dict = {}  # volume name -> w from its spacing


STATE = _SlabState()


class SlabStream:
    """Batches of slabs: k neighbouring slices of one volume, the same crop window and the
    same augmentation on each; n_slabs = round(batch / k). A share `foreground_crops` of
    the slabs is centred (in plane and across slices) on a labelled voxel of a random
    foreground class, as the library's CropStream does for 2-D patches."""

    def __init__(self, samples, config, seed: int, crop: int, batch: int):
        self.k, self.crop = STATE.k, crop
        self.n = max(1, round(batch / self.k))
        self.rng = np.random.default_rng(seed)
        self.augment = config.augment
        self.foreground = float(config.foreground_crops)
        vols: dict[str, list] = {}
        for s in samples:
            vols.setdefault(s.name.split(SLICE_SEP)[0], []).append(s)
        self.names = sorted(vols)
        self.vols = {v: sorted(ss, key=lambda s: int(s.name.split(SLICE_SEP)[1])) for v, ss in vols.items()}
        self.units = [(v, z) for v in self.names for z in range(len(self.vols[v]))]
        self.queue: list = []
        self.centres: dict[int, list] = {}
        for v in self.names:
            for z, s in enumerate(self.vols[v]):
                for c in np.unique(s.mask):
                    if c == 0:
                        continue
                    flat = np.flatnonzero(s.mask == c)
                    if len(flat) > MAX_CENTRES:
                        flat = np.sort(self.rng.choice(flat, MAX_CENTRES, replace=False))
                    self.centres.setdefault(int(c), []).append((v, z, flat))
        self.classes = sorted(self.centres)

    def _slab(self, v: str, z: int, flat: np.ndarray | None):
        ss = self.vols[v]
        d = len(ss)
        z0 = min(max(0, z - self.k // 2), max(0, d - self.k))
        idx = [min(d - 1, z0 + i) for i in range(self.k)]
        seed = int(self.rng.integers(2**63))
        images, masks = [], []
        box = None
        if flat is not None:
            h, wd = ss[z].mask.shape
            y, x = divmod(int(flat[int(self.rng.integers(len(flat)))]), wd)
            j = self.crop // 4
            y0 = min(max(0, y - self.crop // 2 + int(self.rng.integers(-j, j + 1))), max(0, h - self.crop))
            x0 = min(max(0, x - self.crop // 2 + int(self.rng.integers(-j, j + 1))), max(0, wd - self.crop))
            box = (slice(y0, y0 + self.crop), slice(x0, x0 + self.crop))
        for i in idx:
            s = ss[i]
            image, mask = s.image, s.mask
            if box is not None:
                image, mask = image[:, box[0], box[1]], mask[box]
            # the same seed for every slice: the same crop, flips, rotation and jitter
            image, mask = augment_pair(image, mask, np.random.default_rng(seed), self.crop, self.augment)
            images.append(torch.from_numpy(image))
            masks.append(torch.from_numpy(mask))
        if STATE.couple == "iso":
            w = 1.0
        elif STATE.couple == "none":
            w = 0.0
        else:
            w = STATE.spacing_w[v]
        return images, masks, w

    def next(self):
        images, masks, ws = [], [], []
        for _ in range(self.n):
            if self.classes and self.rng.random() < self.foreground:
                cls = self.classes[int(self.rng.integers(len(self.classes)))]
                v, z, flat = self.centres[cls][int(self.rng.integers(len(self.centres[cls])))]
            else:
                if not self.queue:
                    self.queue = [self.units[int(i)] for i in self.rng.permutation(len(self.units))]
                v, z = self.queue.pop()
                flat = None
            im, ma, w = self._slab(v, z, flat)
            images += im
            masks += ma
            ws.append(w)
        STATE.w = torch.tensor(ws, dtype=torch.float64)
        return torch.stack(images), torch.stack(masks)


def slab_batches(samples, config, seed, crop, batch):
    stream = SlabStream(samples, config, seed, crop, batch)
    while True:
        yield stream.next()


class SlabHeatIEL(torch.nn.Module):
    """The heat IEL on a batch of slabs (N*k, C, H, W) as N 3-D fields (N, C, k, H, W)."""

    def __init__(self, config):
        super().__init__()
        self.dt, self.steps = config.heat_dt, config.heat_steps
        if config.convex_on or config.heat_classes is not None:
            raise ValueError("slab3d: only the heat IEL on every class is implemented here")

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        k = STATE.k
        n = logits.shape[0] // k
        u = logits.view(n, k, *logits.shape[1:]).transpose(1, 2)  # (N, C, k, H, W)
        out = heat3d_inverse(u, STATE.w, self.dt, self.steps)
        return out.transpose(1, 2).reshape(logits.shape)


@contextlib.contextmanager
def slab_training(k: int, couple: str, spacing_w: dict):
    """Within: `training.train` draws slabs; couple "none" keeps the library's 2-D IEL."""
    STATE.k, STATE.couple, STATE.spacing_w = k, couple, dict(spacing_w)
    saved = training.patch_batches, training.IELStack
    training.patch_batches = slab_batches
    if couple != "none":
        training.IELStack = SlabHeatIEL
    try:
        yield
    finally:
        training.patch_batches, training.IELStack = saved


# --------------------------------------------------------------------------- review


def slice_probs(model, ds) -> dict[str, np.ndarray]:
    device = next(model.parameters()).device
    return {s.name: predict(model, s.image, device) for s in ds.samples}


def review(ds, probs_by_name, config: CleanConfig, holdout, transform=None):
    """`volume_clean.review_volumes` on given probabilities, each volume's (C,D,H,W)
    probabilities first passed through `transform(case, probs)`; returns per volume
    (raw proposal before the gate, gated proposal) and the reliability."""
    vol_probs = {}
    for case in ds.cases:
        p = np.stack([probs_by_name[s.name] for s in ds.slices_of(case)], axis=1)
        vol_probs[case.name] = p if transform is None else transform(case, p)
    by_slice = {}
    for case in ds.cases:
        for k, s in enumerate(ds.slices_of(case)):
            by_slice[s.name] = vol_probs[case.name][:, k]
    thresholds = thresholds_for([by_slice[s.name] for s in calibration_subset(ds.samples)], config)
    held = set(holdout)
    oos = [s for s in ds.samples if s.name in held]
    judged = oos or ds.samples
    step = max(1, len(judged) // MAX_RELIABILITY_IMAGES)
    pairs = [(by_slice[s.name], s.mask) for s in judged[::step][:MAX_RELIABILITY_IMAGES]]
    reliability = assess_reliability(pairs, ds.n_classes, thresholds, out_of_sample=bool(oos))
    out = {}
    for case in ds.cases:
        slices = ds.slices_of(case)
        probs = vol_probs[case.name]
        given = np.stack([s.mask for s in slices])
        decided = np.stack([decide(probs[:, k], thresholds) for k in range(len(slices))])
        if config.confident_only:
            decided = np.where(probs.max(axis=0) >= config.threshold, decided, given)
        raw = postprocess_volume(decided, config)
        raw = np.stack([keep_given_edges(raw[k], given[k], config.edge_tolerance) for k in range(len(slices))])
        out[case.name] = (raw, gate_changes(raw, given, probs, reliability.reliable, thresholds))
    return out, reliability


# --------------------------------------------------------------------------- data sets


def dev_cases():
    return list(vbench.generated_cases(n=4, seed=100))


def report_generated_cases():
    return list(vbench.generated_cases())  # the set benchmarks/volumes.py reports (seed 0)


def build_set(tmp: Path, name: str, cases, noise_seed: int):
    """Write the volumes as files (as a user's folders), load them as clean_volumes does."""
    images, noisy, clean, _ = vbench.write_set(tmp / name, cases, seed=noise_seed)
    sets = {}
    for given_name, folder in (("noisy", noisy), ("correct", clean)):
        ds = load_volumes(images, folder)
        sets[given_name] = ds
    truth = {}
    spacing_w = {}
    for c in sets["correct"].cases:
        truth[c.name] = np.stack([s.mask for s in sets["correct"].slices_of(c)]) > 0
        sp = dict((n, s) for n, _, _, s in cases)[c.name]
        spacing_w[c.name] = coupling(sp, c.axis)
    return sets, truth, spacing_w


def volume_dice(results: dict, truth: dict, which: int) -> list[float]:
    return [vbench.dice(results[n][which] > 0, truth[n]) for n in sorted(truth)]


# --------------------------------------------------------------------------- runs


def train_config(args, seed: int) -> TrainConfig:
    return TrainConfig(max_steps=args.steps, min_steps=args.steps, width=args.width, seed=seed)


def train_model(ds, cfg: TrainConfig, arm: dict, spacing_w: dict):
    ctx = contextlib.nullcontext() if arm["kind"] == "base" else slab_training(arm["k"], arm["couple"], spacing_w)
    done = None
    with ctx:
        for ev in training.train(ds.samples, cfg, groups=ds.groups()):
            if isinstance(ev, DoneEvent):
                done = ev
    return done


def run_one(ds, truth, spacing_w, cfg, arm, t_grid, check_library=False) -> dict:
    """Train one arm, score its proposals (for base also every infz t of `t_grid`)."""
    t0 = time.perf_counter()
    done = train_model(ds, cfg, arm, spacing_w)
    train_s = time.perf_counter() - t0
    holdout = list(done.history.get("holdout", []))
    t1 = time.perf_counter()
    probs = slice_probs(done.model, ds)
    clean_cfg = CleanConfig()
    scored = {}
    ts = [0.0] + (list(t_grid) if arm["kind"] == "base" else [])
    for t in ts:
        t2 = time.perf_counter()
        tr = None if t == 0 else (lambda case, p, t=t: diffuse_z(p, spacing_w[case.name], t))
        res, rel = review(ds, probs, clean_cfg, holdout, tr)
        scored[str(t)] = {
            "raw": volume_dice(res, truth, 0), "out": volume_dice(res, truth, 1),
            "agreement": rel.agreement[1], "reliable": bool(rel.any_reliable),
            "review_s": time.perf_counter() - t2,
        }
    predict_s = time.perf_counter() - t1
    if check_library:  # my review at t = 0 must be the library's review_volumes exactly
        lib = {}
        gen = review_volumes(done.model, ds, clean_cfg, holdout)
        with contextlib.suppress(StopIteration):
            while True:
                r = next(gen)
                lib[r.case.name] = r.proposal
        mine, _ = review(ds, probs, clean_cfg, holdout)
        same = all(np.array_equal(lib[n], mine[n][1]) for n in lib)
        if not same:
            raise AssertionError("review() differs from volume_clean.review_volumes")
        print("  check: review() == volume_clean.review_volumes", flush=True)
    return {"train_s": train_s, "predict_s": predict_s, "steps": done.steps, "scores": scored,
            "holdout_volumes": sorted({h.split(SLICE_SEP)[0] for h in holdout})}


def arm_key(arm: dict) -> str:
    return arm["kind"] if arm["kind"] == "base" else f"{arm['kind']}-k{arm['k']}-{arm['couple']}"


class Cache:
    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        self.data[key] = value
        common.write_json(self.path, self.data)


def run_grid(cache, set_name, plan, sets, truth, spacing_w, seeds, args, t_grid):
    """`plan`: [(given, [arms])]. Interleaved: every (given, arm) of a seed before the next seed."""
    out = {}
    checked = False
    for seed in seeds:
        for given, arms in plan:
            for arm in arms:
                key = f"{set_name}|{given}|{arm_key(arm)}|seed{seed}|steps{args.steps}|w{args.width}"
                r = cache.get(key)
                old = r
                if r is not None and arm["kind"] == "base" and any(str(t) not in r["scores"] for t in t_grid):
                    r = None  # a cached base run without the diffusion time now asked for: train it again
                if r is None:
                    print(f"run {key} ...", flush=True)
                    r = run_one(sets[given], truth, spacing_w, train_config(args, seed), arm, t_grid,
                                check_library=(arm["kind"] == "base" and not checked and args.check))
                    checked = checked or arm["kind"] == "base"
                    if old is not None:  # training on the CPU is reproducible: the same model again
                        same = old["scores"]["0.0"]["raw"] == r["scores"]["0.0"]["raw"]
                        print(f"  rerun for t {t_grid}: t=0 scores identical to the cached run: {same}", flush=True)
                        r["scores"] = {**old["scores"], **r["scores"]}
                        r["rerun_identical"] = same
                    cache.put(key, r)
                    s0 = r["scores"]["0.0"]
                    print(f"  raw {np.mean(s0['raw']):.4f} out {np.mean(s0['out']):.4f} "
                          f"agree {s0['agreement']} train {r['train_s']:.0f}s", flush=True)
                out[(given, arm_key(arm), seed)] = r
    return out


def summarise(runs, given, akey, seeds, t="0.0", which="raw"):
    if (given, akey, seeds[0]) not in runs:
        return float("nan"), []
    per_seed = [float(np.mean(runs[(given, akey, s)]["scores"][t][which])) for s in seeds]
    return float(np.median(per_seed)), per_seed


# --------------------------------------------------------------------------- self-test


def selftest() -> None:
    torch.manual_seed(0)
    from ielstudio.core.iel import HeatIEL

    u = torch.randn(2, 3, 5, 12, 10, dtype=torch.float64)
    w = torch.tensor([0.3, 0.07], dtype=torch.float64)
    fast, slow = heat3d_inverse(u, w, 0.1, 20), heat3d_loop(u, w, 0.1, 20)
    err = float((fast - slow).abs().max() / slow.abs().max())
    assert err < 1e-10, err
    zero = heat3d_inverse(u, torch.zeros(2, dtype=torch.float64), 0.1, 20)
    ref = HeatIEL(0.1, 20)(u.transpose(1, 2).reshape(10, 3, 12, 10)).reshape(2, 5, 3, 12, 10).transpose(1, 2)
    err0 = float((zero - ref).abs().max())
    assert err0 < 1e-10, err0
    const = heat3d_inverse(torch.full((1, 2, 3, 8, 8), 0.7), torch.tensor([0.5]), 0.1, 20)
    assert float((const - 0.7).abs().max()) < 1e-5
    # the across-slice checkerboard grows by (1 + dt * w * 2 / 2)^K
    zc = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64).view(1, 1, 4, 1, 1).expand(1, 1, 4, 6, 6)
    g = float(heat3d_inverse(zc.contiguous(), torch.tensor([0.25], dtype=torch.float64), 0.1, 20)[0, 0, 0, 0, 0])
    lam = 0.25 * (1 - math.cos(math.pi * 3 / 4)) / 2
    # (the 4-slice alternating vector is not one DCT mode; check the operator against the loop instead)
    g_loop = float(heat3d_loop(zc.contiguous(), torch.tensor([0.25], dtype=torch.float64), 0.1, 20)[0, 0, 0, 0, 0])
    assert abs(g - g_loop) < 1e-9, (g, g_loop, lam)
    # gradients through the fast path equal those of the loop
    a = torch.randn(1, 2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    ww = torch.tensor([0.2], dtype=torch.float64)
    ga, = torch.autograd.grad((heat3d_inverse(a, ww, 0.1, 20) ** 2).sum(), a)
    gb, = torch.autograd.grad((heat3d_loop(a, ww, 0.1, 20) ** 2).sum(), a)
    assert float((ga - gb).abs().max() / gb.abs().max()) < 1e-10
    # diffuse_z: keeps a constant-in-z volume, sums to one, matches explicit small steps
    p = np.random.default_rng(0).dirichlet([1, 1], size=(7, 5, 5)).transpose(3, 0, 1, 2).astype(np.float32)
    q = diffuse_z(p, 0.1, 30.0)
    assert np.allclose(q.sum(0), 1, atol=1e-5)
    x = torch.from_numpy(p.astype(np.float64))[None]  # (1, C, D, H, W)
    for _ in range(3000):  # explicit forward steps of L_z only, dt = 0.01
        pz = torch.cat([x[:, :, :1], x, x[:, :, -1:]], 2)
        x = x + 0.01 / 4 * 0.1 * (pz[:, :, :-2] + pz[:, :, 2:] - 2 * x)
    assert np.abs(x[0].numpy() - q).max() < 1e-4, np.abs(x[0].numpy() - q).max()
    flat = np.repeat(p[:, :1], 7, axis=1)
    assert np.allclose(diffuse_z(flat, 0.1, 30.0), flat, atol=1e-6)
    # the slab sampler gives identical windows/augmentations on the slices of a slab
    from ielstudio.core.dataset import Sample
    from ielstudio.core.imageio import MaskEncoding

    enc = MaskEncoding.gray(2, 1)
    vol = np.random.default_rng(1).random((6, 40, 40)).astype(np.float32)
    lab = (vol > 0.7).astype(np.int64)
    same = np.repeat(vol[:1], 6, 0)
    samples = [Sample(f"v{SLICE_SEP}{k:04d}", same[k][None], lab[0], enc) for k in range(6)]
    STATE.k, STATE.couple, STATE.spacing_w = 3, "spacing", {"v": 0.1}
    xb, yb = SlabStream(samples, TrainConfig(), 0, 32, 8).next()
    assert xb.shape == (9, 1, 32, 32) and STATE.w.shape == (3,)
    for i in range(3):
        assert torch.equal(xb[3 * i], xb[3 * i + 1]) and torch.equal(xb[3 * i], xb[3 * i + 2])
        assert torch.equal(yb[3 * i], yb[3 * i + 2])
    print(f"selftest ok (3-D DCT vs loop rel err {err:.1e}; w=0 vs HeatIEL {err0:.1e})")


# --------------------------------------------------------------------------- main


def fmt_seeds(vals) -> str:
    return "/".join(f"{v:.3f}" for v in vals)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="training steps per run (fixed: min = max)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--seeds-pyradiomics", default="", help="seeds on the pyradiomics scans (default: --seeds)")
    p.add_argument("--dev-arms", default="3:spacing,5:spacing,3:iso",
                   help="slab3d settings tried on the dev set, k:coupling (spacing = the spacing's w, iso = w 1)")
    p.add_argument("--t-grid", default="2,8,32,128,512", help="infz diffusion times tried on the dev set")
    p.add_argument("--sets", default="generated,pyradiomics", help="report sets")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip checking review() against volume_clean.review_volumes once")
    p.add_argument("--selftest", action="store_true")
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    common.limit_threads(1)
    torch.set_num_threads(1)
    if args.selftest:
        selftest()
        return 0
    selftest()
    seeds = [int(s) for s in args.seeds.split(",")]
    t_grid = [float(t) for t in args.t_grid.split(",")]
    tag = f"-{args.tag}" if args.tag else ""
    cache = Cache(RESULTS / f"heat3d{tag}-runs.json")
    started = time.perf_counter()
    summary = {"args": vars(args), "machine": common.machine_facts()}

    # ---- DEV: choose k, coupling and t
    dev_arms = [{"kind": "base"}] + [{"kind": "slab3d", "k": int(a.split(":")[0]), "couple": a.split(":")[1]}
                                     for a in args.dev_arms.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        sets, truth, spacing_w = build_set(Path(tmp), "dev", dev_cases(), noise_seed=101)
        dev = run_grid(cache, "dev", [("noisy", dev_arms)], sets, truth, spacing_w, seeds, args, t_grid)
        dev_noisy_in = float(np.mean([vbench.dice(np.stack([s.mask for s in sets["noisy"].slices_of(c)]) > 0,
                                                  truth[c.name]) for c in sets["noisy"].cases]))
    dev_rows = []
    base_med, _ = summarise(dev, "noisy", "base", seeds)
    best_t, best_t_val = None, -1.0
    for t in t_grid:
        med, vals = summarise(dev, "noisy", "base", seeds, t=str(t))
        dev_rows.append([f"infz t={t:g}", med, fmt_seeds(vals)])
        if med > best_t_val + 1e-9:
            best_t, best_t_val = t, med
    best_arm, best_arm_val = None, -1.0
    for arm in dev_arms[1:]:
        med, vals = summarise(dev, "noisy", arm_key(arm), seeds)
        dev_rows.append([arm_key(arm), med, fmt_seeds(vals)])
        if med > best_arm_val + 1e-9:
            best_arm, best_arm_val = arm, med
    dev_rows.insert(0, ["base", base_med, fmt_seeds(summarise(dev, "noisy", "base", seeds)[1])])
    summary["dev"] = {"noisy_dice": dev_noisy_in, "rows": dev_rows, "chosen_t": best_t, "chosen_arm": best_arm,
                      "spacing_w": spacing_w}
    print(f"DEV chose infz t={best_t:g} ({best_t_val:.4f}) and {arm_key(best_arm)} ({best_arm_val:.4f}); "
          f"base {base_med:.4f}", flush=True)

    # ---- REPORT
    report_arms = [{"kind": "base"}, dict(best_arm), {"kind": "slab2d", "k": best_arm["k"], "couple": "none"}]
    report = {}
    for set_name in args.sets.split(","):
        cases = report_generated_cases() if set_name == "generated" else list(vbench.pyradiomics_cases())
        with tempfile.TemporaryDirectory() as tmp:
            sets, truth, spacing_w = build_set(Path(tmp), set_name, cases, noise_seed=1)
            # the slab2d control only where it can explain a difference: given the noisy labels
            plan = [("noisy", report_arms), ("correct", report_arms[:2])]
            set_seeds = seeds if set_name == "generated" or not args.seeds_pyradiomics else \
                [int(x) for x in args.seeds_pyradiomics.split(",")]
            runs = run_grid(cache, set_name, plan, sets, truth, spacing_w, set_seeds, args, [best_t])
            noisy_in = float(np.mean([vbench.dice(np.stack([s.mask for s in sets["noisy"].slices_of(c)]) > 0,
                                                  truth[c.name]) for c in sets["noisy"].cases]))
        rows = []
        variants = [("base (2-D IEL per slice, today)", "base", "0.0"),
                    (f"(b) infz t={best_t:g}", "base", str(best_t)),
                    (f"(a) {arm_key(best_arm)}", arm_key(best_arm), "0.0"),
                    (f"control {arm_key(report_arms[2])}", arm_key(report_arms[2]), "0.0")]
        for label, akey, t in variants:
            row = {"variant": label, "key": akey, "t": float(t), "noisy_in": noisy_in}
            for given in ("noisy", "correct"):
                for which in ("raw", "out"):
                    med, vals = summarise(runs, given, akey, set_seeds, t, which)
                    row[f"{given}_{which}"], row[f"{given}_{which}_seeds"] = med, vals
            done = [runs[(g, akey, s)] for g in ("noisy", "correct") for s in set_seeds if (g, akey, s) in runs]
            row["time_s"] = float(np.median([r["train_s"] + r["predict_s"] for r in done]))
            row["agreement"] = [runs[("noisy", akey, s)]["scores"][t]["agreement"] for s in set_seeds]
            row["runs"] = len(done)
            rows.append(row)
        report[set_name] = {"rows": rows, "spacing_w": spacing_w, "volumes": len(truth), "seeds": set_seeds,
                            "slices": len(sets["noisy"].samples)}
    summary["report"] = report
    summary["elapsed_s"] = time.perf_counter() - started
    summary["compute_s"] = float(sum(r["train_s"] + r["predict_s"] for r in cache.data.values()))
    summary["n_runs"] = len(cache.data)
    common.write_json(RESULTS / f"heat3d{tag}.json", summary)
    write_md(RESULTS / f"heat3d{tag}.md", summary, args, seeds)
    print((RESULTS / f"heat3d{tag}.md").read_text())
    return 0


def write_md(path: Path, s: dict, args, seeds) -> None:
    L = ["# Heat IEL across slices (benchmarks/heat3d.py)", ""]
    L.append(f"Settings: {args.steps} training steps per run (fixed), U-Net width {args.width}, seeds "
             f"{', '.join(map(str, seeds))} (pyradiomics: as its heading says; every variant on the same seeds, "
             "interleaved), CPU, 1 torch thread. "
             "Dice: foreground, per volume vs the correct labels, mean over the set's volumes; the median over "
             "seeds (per-seed values after it). raw = the model's 3-D post-processed decision before the "
             "do-no-harm gate; out = what `ielstudio clean` writes (after the gate).")
    L.append("")
    d = s["dev"]
    L.append("## Dev set (choices only): 4 generated volumes (seed 100, noise seed 101), "
             f"noisy Dice {d['noisy_dice']:.3f}")
    L.append("")
    L.append(common.md_table(["variant", "raw Dice (median)", "per seed"], d["rows"]))
    L.append(f"Chosen on dev: (b) t = {d['chosen_t']:g}; (a) {arm_key(d['chosen_arm'])}. "
             "(infz t: diffusion time in the IEL's units, sigma across slices = sqrt(w t / 2) slices; "
             "slab3d-kK-spacing: slabs of K slices coupled at w = (in-plane / slice spacing)^2, -iso: at w = 1 "
             "whatever the spacing.)")
    L.append("")
    for name, r in s["report"].items():
        ws = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["spacing_w"].items()))
        L.append(f"## Report: {name} ({r['volumes']} volumes, {r['slices']} slices; seeds "
                 f"{', '.join(map(str, r['seeds']))}; w = {ws})")
        L.append("")
        head = ["variant", "noisy given", "cleaned raw", "paired Δ raw vs base", "cleaned out",
                "correct given -> raw", "correct -> out", "held-out agreement", "time/run (s)", "runs"]
        base = r["rows"][0]
        rows = []

        def cell(x, key):
            return "–" if x[key] is None or math.isnan(x[key]) else f"{x[key]:.3f} ({fmt_seeds(x[key + '_seeds'])})"

        for x in r["rows"]:
            delta = [a - b for a, b in zip(x["noisy_raw_seeds"], base["noisy_raw_seeds"])]
            dcell = "–" if x is base else f"{np.median(delta):+.4f} ({'/'.join(f'{d:+.4f}' for d in delta)})"
            rows.append([x["variant"], x["noisy_in"], cell(x, "noisy_raw"), dcell, cell(x, "noisy_out"),
                         cell(x, "correct_raw"), cell(x, "correct_out"),
                         "/".join("-" if a is None else f"{a:.2f}" for a in x["agreement"]),
                         f"{x['time_s']:.0f}", x["runs"]])
        L.append(common.md_table(head, rows))
        spread = max(base["noisy_raw_seeds"]) - min(base["noisy_raw_seeds"])
        for x in r["rows"][1:]:
            delta = [a - b for a, b in zip(x["noisy_raw_seeds"], base["noisy_raw_seeds"])]
            wins = sum(d > 0 for d in delta)
            verdict = ("helps" if wins == len(delta) and np.median(delta) > 0.01 else "does not help")
            L.append(f"- {x['variant']}: paired Δ raw {np.median(delta):+.4f} (better in {wins} of {len(delta)} "
                     f"seeds; today's seeds span {spread:.3f}): {verdict} (rule: better in every seed and by > 0.01)")
        L.append("")
    L.append(f"Compute: {s['n_runs']} training runs in the run cache, {s['compute_s'] / 60:.1f} min of training "
             f"and scoring in all (this invocation: {s['elapsed_s'] / 60:.1f} min; cached runs are not redone).")
    L.append("")
    common.write_text(path, "\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
