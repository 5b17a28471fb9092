"""Micro-benchmark of the IEL layers: forward + backward time per training step.

Batch B x C x 128 x 128 of logits shaped like masks of dented discs added to the
output of a tiny conv net (1 -> 16 -> 16 -> C), so ratios are relative to a real
(if small) network step. Two inputs: "heavy" (5% of 2x2 blocks flipped, logit
noise 0.3: many concave spots, hundreds of mask flips per step) and "light"
(clean dented discs, logit noise 0.05). Prints measured medians.

    python benchmarks/iel_micro.py [--repeat 15] [--threads 1] [--device cpu] [--clock cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ielstudio.core import iel


def noisy_masks(b: int, size: int, rng: np.random.Generator, flip: float = 0.05) -> np.ndarray:
    """Masks with several dented discs each, 2x2 blocks flipped with probability ``flip``, (b, size, size)."""
    y, x = np.mgrid[:size, :size]
    out = np.zeros((b, size, size), np.int64)
    for i in range(b):
        for _ in range(6):
            cy, cx, r = rng.uniform(16, size - 16, 2).tolist() + [rng.uniform(8, 16)]
            d2 = (y - cy) ** 2 + (x - cx) ** 2
            disc = d2 <= r * r
            ang = np.arctan2(y - cy, x - cx)
            a0 = rng.uniform(-np.pi, np.pi)
            dent = (np.abs(np.angle(np.exp(1j * (ang - a0)))) < 0.4) & (d2 > (0.4 * r) ** 2)
            out[i][disc & ~dent] = 1
        blocks = rng.random((size // 2, size // 2)) < flip
        out[i] ^= np.kron(blocks, np.ones((2, 2), np.int64)).astype(np.int64)
    return out


def tiny_net(c_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, c_out, 3, padding=1),
    )


def naive_heat(u: torch.Tensor, dt: float, steps: int) -> torch.Tensor:
    """Direct K-step loop: replicate pad + depthwise 3x3 conv per step."""
    c = u.shape[1]
    k = torch.tensor([[0, 0.25, 0], [0.25, -1.0, 0.25], [0, 0.25, 0]], dtype=u.dtype, device=u.device)
    k = k.expand(c, 1, 3, 3)
    for _ in range(steps):
        u = u - dt * F.conv2d(F.pad(u, (1, 1, 1, 1), mode="replicate"), k, groups=c)
    return u


def median_ms(fns: dict, repeat: int, device: torch.device, clock=time.perf_counter) -> dict:
    """Median time (ms) of each callable; runs are interleaved so that load drift hits all alike."""
    times: dict = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up (caches, allocator)
    for _ in range(repeat):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = clock()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(clock() - t)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--scenarios", default="heavy,light")
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="cpu: process CPU time (steadier on a shared machine; CPU device only)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    b, c, s = args.batch, args.classes, args.size
    print(
        f"device {dev}, threads {torch.get_num_threads()}, B={b} C={c} {s}x{s}, "
        f"median of {args.repeat}, {args.clock} clock"
    )
    for scenario in args.scenarios.split(","):
        flip, noise = {"heavy": (0.05, 0.3), "light": (0.0, 0.05)}[scenario]
        run_scenario(scenario, flip, noise, b, c, s, dev, clock, args.repeat, args.naive)


def run_scenario(scenario, flip, noise, b, c, s, dev, clock, repeat, with_naive) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(noisy_masks(b, s, rng, flip)).to(dev)
    prior = F.one_hot(masks, c).permute(0, 3, 1, 2).float() * 4.0 - 2.0
    prior = F.avg_pool2d(prior, 3, 1, 1) + noise * torch.randn_like(prior)
    images = (masks.float()[:, None] + 0.3 * torch.randn(b, 1, s, s, device=dev)).contiguous()
    net = tiny_net(c).to(dev)

    def step(layer) -> None:
        net.zero_grad(set_to_none=True)
        logits = net(images) + prior
        out = layer(logits) if layer is not None else logits
        F.cross_entropy(out, masks).backward()

    def layer_only(layer):
        x = prior.clone().requires_grad_(True)

        def run() -> None:
            layer(x).square().mean().backward()

        return run

    heat = {k: iel.HeatIEL(0.1, k).to(dev) for k in (10, 20, 30)}
    convex = iel.ConvexIEL(0.1, 20, (1,))
    convex4 = iel.ConvexIEL(0.1, 20, (1,), update_every=4)

    def naive_stack(u):
        return iel.reference_convex(naive_heat(u, 0.1, 20), 0.1, 20, (1,))[0]

    def fast_stack(u):
        return convex(heat[20](u))

    def approx_stack(u):
        return convex4(heat[20](u))

    # how the fast convex layer updated its region on this input
    stats: dict = {}
    with torch.no_grad():
        logits = heat[20](net(images) + prior)
        exact, support = convex.forward_with_region(logits, stats=stats)
        approx, support4 = convex4.forward_with_region(logits)
        change = (exact - logits).abs().max().item()
        dev4 = (approx - exact).abs().max().item()

    rows = [
        ("tiny net, no IEL", None),
        ("heat K=10 (DCT)", heat[10]),
        ("heat K=20 (DCT)", heat[20]),
        ("heat K=30 (DCT)", heat[30]),
        ("heat K=20 naive conv loop", lambda u: naive_heat(u, 0.1, 20)),
        ("heat+convex K=20 naive", naive_stack),
        ("heat+convex K=20 fast", fast_stack),
        ("  same, S every 4 steps", approx_stack),
    ]
    if not with_naive:
        rows = [r for r in rows if "naive" not in r[0]]
    print(f"\n[{scenario}] flipped blocks {flip:.0%}, logit noise {noise}")
    print(
        f"convex region S: {support.float().mean().item() * 100:.2f}% of pixels; "
        f"region updates after mask changes (of 19 steps): {stats} (naive: full recompute at all 20)"
    )
    print(
        f"S every 4 steps (approximate): S {support4.sum().item()} vs {support.sum().item()} px, "
        f"max |output - exact| {dev4:.3g} (the layer itself changes logits by up to {change:.3g})"
    )
    print(f"{'variant':28s} {'layer fwd+bwd ms':>17s} {'train step ms':>14s} {'x no IEL':>9s} {'x heat20':>9s}")
    layer_ms = median_ms({n: layer_only(f) for n, f in rows if f is not None}, repeat, dev, clock)
    step_ms = median_ms({n: (lambda f=f: step(f)) for n, f in rows}, repeat, dev, clock)
    results = {n: (layer_ms.get(n, 0.0), step_ms[n]) for n, _ in rows}
    base = results["tiny net, no IEL"][1]
    h20 = results["heat K=20 (DCT)"][1]
    for name, (lt, st) in results.items():
        print(f"{name:28s} {lt:17.2f} {st:14.2f} {st / base:9.2f} {st / h20:9.2f}")


if __name__ == "__main__":
    main()
