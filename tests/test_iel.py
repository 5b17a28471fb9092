"""Inverse evolution layers: exact amplification factors, fixed points, fast path = naive loop."""

from __future__ import annotations

import inspect
import math
from dataclasses import fields

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ielstudio.core import iel
from ielstudio.core.iel import (
    ConvexIEL,
    HeatIEL,
    IELConfig,
    IELStack,
    concave_support,
    defect_maps,
    heat_loop,
    one_hot,
    reference_convex,
)


def naive_heat(u: torch.Tensor, dt: float, steps: int) -> torch.Tensor:
    """The method as written: replicate pad + 5-point stencil / 4, K explicit steps."""
    c = u.shape[1]
    k = torch.tensor([[0, 0.25, 0], [0.25, -1.0, 0.25], [0, 0.25, 0]], dtype=u.dtype).expand(c, 1, 3, 3)
    for _ in range(steps):
        u = u - dt * F.conv2d(F.pad(u, (1, 1, 1, 1), mode="replicate"), k, groups=c)
    return u


def disc_mask(n: int = 64, r: float = 14.0, notch_deg: float = 0.0) -> np.ndarray:
    """Disc of radius r centred in an n x n image; a wedge of half-angle notch_deg cut on the right."""
    y, x = np.mgrid[:n, :n].astype(float) - n / 2
    d2 = y * y + x * x
    m = d2 <= r * r
    if notch_deg:
        ang = np.degrees(np.arctan2(y, x))
        m &= ~((np.abs(ang) < notch_deg) & (d2 > (0.3 * r) ** 2))
    return m.astype(np.int64)


def logits_of(mask: np.ndarray, n_classes: int = 2, scale: float = 4.0) -> torch.Tensor:
    return torch.from_numpy(one_hot(mask, n_classes))[None].double() * scale - scale / 2


# ----------------------------------------------------------------------------- config


def test_config_spec_none_and_validation():
    assert IELConfig.none().is_identity and IELConfig(heat_classes=()).is_identity
    cfg = IELConfig.from_spec("heat,convex", convex_classes=(1, 2), heat_steps=30)
    assert cfg.heat and cfg.heat_steps == 30 and cfg.convex_classes == (1, 2)
    assert IELConfig.from_spec("convex").convex_classes == (1,) and not IELConfig.from_spec("convex").heat
    assert IELConfig.from_spec(" Heat ").convex_classes == ()
    assert IELConfig.from_spec("none") == IELConfig.none()
    assert IELConfig.from_dict(cfg.to_dict()) == cfg
    assert math.isclose(IELConfig().heat_gain, 1.2**20)
    assert "heat dt=0.1 K=20" in IELConfig().describe() and "38.3x" in IELConfig().describe()
    assert IELConfig.none().describe() == "no IEL"
    for bad, msg in [
        (dict(heat_dt=0.0), "heat_dt must be > 0"),
        (dict(convex_dt=-1), "convex_dt must be > 0"),
        (dict(heat_steps=-1), "heat_steps must be an integer >= 0"),
        (dict(convex_steps=2.5), "convex_steps must be an integer >= 0"),
        (dict(convex_radii=(3, 0)), "convex_radii must be positive"),
        (dict(convex_radii=()), "convex_radii must be positive"),
        (dict(convex_classes=(1, 1)), "repeated class"),
    ]:
        with pytest.raises(ValueError, match=msg):
            IELConfig(**bad)
    with pytest.raises(ValueError, match="IEL spec must be"):
        IELConfig.from_spec("heta")
    with pytest.raises(ValueError, match="has no 'convex'"):
        IELConfig.from_spec("heat", convex_classes=(1,))
    with pytest.raises(ValueError, match="unknown IEL setting"):
        IELConfig.from_spec("heat", dt=0.1)


# ----------------------------------------------------------------------------- heat


def test_constant_map_is_exact_fixed_point():
    u = torch.full((2, 3, 20, 17), 0.37)
    assert torch.equal(HeatIEL(0.1, 20)(u), u)
    assert torch.equal(IELStack(IELConfig(convex_classes=(1,)))(u), u)
    assert torch.equal(heat_loop(u, 0.2, 10), u)


def test_checkerboard_gain_is_exact():
    n, k, dt = 64, 20, 0.1
    y, x = np.mgrid[:n, :n]
    cb = torch.from_numpy(np.where((x + y) % 2 == 0, 1.0, -1.0))[None, None].float()
    out = HeatIEL(dt, k)(cb)
    gain = (1 + 2 * dt) ** k
    assert math.isclose(gain, 38.3376, rel_tol=1e-5)
    inner = out[0, 0, k + 1 : n - k - 1, k + 1 : n - k - 1] / cb[0, 0, k + 1 : n - k - 1, k + 1 : n - k - 1]
    assert torch.allclose(inner, torch.full_like(inner, gain), rtol=1e-5)


def test_smooth_maps_barely_change():
    n = 96
    y, x = np.mgrid[:n, :n].astype(float)
    ramp = torch.from_numpy(x / n + 0.5 * y / n)[None, None]
    out = HeatIEL(0.1, 20)(ramp)
    # interior of a linear ramp: L u = 0 exactly; only the Neumann border bends it
    assert (out - ramp)[0, 0, 21:-21, 21:-21].abs().max() < 1e-12
    sine = torch.from_numpy(np.sin(2 * np.pi * x / n) * np.cos(2 * np.pi * y / n))[None, None]
    rel = ((HeatIEL(0.1, 20)(sine) - sine).norm() / sine.norm()).item()
    assert rel < 0.03


def test_fourier_mode_factor():
    # DCT mode (k, l) is an exact eigenvector of the Neumann Laplacian
    h, w, k, l, dt, steps = 32, 24, 5, 9, 0.15, 12
    a, b = math.pi * k / h, math.pi * l / w
    i, j = np.mgrid[:h, :w].astype(float)
    mode = torch.from_numpy(np.cos(a * (i + 0.5)) * np.cos(b * (j + 0.5)))[None, None]
    lam = 1 - (math.cos(a) + math.cos(b)) / 2
    factor = (1 + dt * lam) ** steps
    assert torch.allclose(HeatIEL(dt, steps)(mode), factor * mode, atol=1e-12)
    assert torch.allclose(naive_heat(mode, dt, steps), factor * mode, atol=1e-12)


def test_fast_path_equals_naive_loop_float64():
    torch.manual_seed(0)
    u = torch.randn(1, 2, 30, 27, dtype=torch.float64)
    for dt, k in [(0.1, 20), (0.2, 10), (0.1, 1), (0.05, 35)]:
        ref = naive_heat(u, dt, k)
        assert torch.allclose(HeatIEL(dt, k)(u), ref, rtol=1e-11, atol=1e-11)
        assert torch.allclose(heat_loop(u, dt, k), ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(HeatIEL(0.1, 0)(u), u)


def test_unselected_classes_pass_through():
    torch.manual_seed(1)
    u = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    out = HeatIEL(0.1, 20, classes=(1,))(u)
    assert torch.equal(out[:, 0], u[:, 0]) and torch.equal(out[:, 2], u[:, 2])
    assert torch.allclose(out[:, 1:2], naive_heat(u[:, 1:2], 0.1, 20), atol=1e-11)
    with pytest.raises(ValueError, match="class 3 does not exist"):
        HeatIEL(0.1, 20, classes=(3,))(u)


def test_gradients_flow_and_half_precision():
    torch.manual_seed(2)
    logits = torch.randn(2, 2, 32, 32, requires_grad=True)
    target = torch.randint(0, 2, (2, 32, 32))
    stack = IELStack(IELConfig(convex_classes=(1,)))
    F.cross_entropy(stack(logits), target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert list(stack.parameters()) == []
    out = HeatIEL(0.1, 20)(logits.detach().half())
    assert out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision must not reach the IEL maths
        mixed = stack(logits.detach())
    assert mixed.dtype == torch.float32 and torch.equal(mixed, stack(logits.detach()))


# ----------------------------------------------------------------------------- convex


def test_convex_deepens_dent_and_leaves_disc():
    layer = ConvexIEL(0.1, 20, classes=(1,), radii=(3, 6, 9), band=2)
    dented = logits_of(disc_mask(64, 14, notch_deg=25))
    out, region = layer.forward_with_region(dented)
    delta = (out - dented)[0, 1]
    assert torch.equal(out[:, 0], dented[:, 0])  # background logit untouched
    ys, xs = np.nonzero(region[0, 0].numpy())
    # the notch opens to the right of the centre (32, 32): rows 32 +- 8, columns 34..46
    assert 90 <= region.sum() <= 130
    assert ys.min() >= 24 and ys.max() <= 40 and xs.min() >= 32 and xs.max() <= 46
    fg = dented[0, 1] > dented[0, 0]
    # the boundary moves inward: the foreground logit drops on the object's side of the dent ...
    assert delta.max() <= 0 and delta.min() < -5
    assert torch.equal(delta != 0, region[0, 0] & fg)  # ... and nowhere else:
    assert (region[0, 0] & ~fg).sum() > 20  # background pixels of the dent are in S but keep their logits
    assert (out[0, 1] <= out[0, 0])[region[0, 0] & fg].sum() > 10  # the dent got deeper

    disc = logits_of(disc_mask(64, 14))
    out, region = layer.forward_with_region(disc)
    assert region.sum() == 0 and torch.equal(out, disc)


@pytest.mark.parametrize("update", ["sparse", "full"])
def test_convex_fast_equals_reference(update, monkeypatch):
    # both ways of updating S after mask changes must give the direct loop's numbers
    monkeypatch.setattr(iel, "SPARSE_UPDATE_BUDGET", 1e9 if update == "sparse" else 0.0)
    torch.manual_seed(3)
    x = F.avg_pool2d(torch.randn(2, 3, 36, 32, dtype=torch.float64), 5, 1, 2) * 5
    # the last case has a band wider than the largest radius
    for classes, radii, band in [((1,), (3, 6, 9), 2), ((1, 2), (2, 5), 1), ((2,), (2, 4), 7)]:
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        stats = {}
        out, s = ConvexIEL(0.1, 20, classes, radii, band).forward_with_region(xa, stats=stats)
        assert stats[update] > 0 and len(stats) == 1
        ref, s_ref = reference_convex(xb, 0.1, 20, classes, radii, band)
        assert torch.equal(s, s_ref)
        assert torch.allclose(out, ref, atol=1e-12)
        assert s.sum() > 0
        # the hand-written backward equals autograd through the direct loop
        weight = torch.randn_like(x)
        (out * weight).sum().backward()
        (ref * weight).sum().backward()
        assert torch.allclose(xa.grad, xb.grad, atol=1e-10)
        assert (xa.grad - weight).abs().max() > 0.1  # the layer really changes the gradient


def _smooth_logits(seed: int, b: int = 1, h: int = 36, w: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.randn(b, 2, h, w, dtype=torch.float64, generator=g), 5, 1, 2) * 5


@pytest.mark.parametrize("update", ["sparse", "full"])
@pytest.mark.parametrize("radii, band", [((3,), 4), ((2,), 6), ((1, 3), 9), ((1,), 40)])
def test_convex_band_wider_than_largest_radius_single_map(update, radii, band, monkeypatch):
    # S's band window reaches further than the padding sized for the radii alone: this
    # used to raise IndexError (or read pixels of the next row); band 40 exceeds the image
    monkeypatch.setattr(iel, "SPARSE_UPDATE_BUDGET", 1e9 if update == "sparse" else 0.0)
    maps = [_smooth_logits(3), logits_of(disc_mask(40, 12, notch_deg=30))]
    for x in maps:
        stats = {}
        out, s = ConvexIEL(0.1, 20, (1,), radii, band).forward_with_region(x, stats=stats)
        ref, s_ref = reference_convex(x, 0.1, 20, (1,), radii, band)
        assert stats.get(update, 0) > 0  # the mask changed, so S was updated that way
        assert torch.equal(s, s_ref) and s.sum() > 0
        assert torch.allclose(out, ref, atol=1e-12)


@pytest.mark.parametrize("update", ["sparse", "full"])
@pytest.mark.parametrize("radii, band", [((3,), 4), ((2, 3), 8), ((1,), 20), ((3, 6, 9), 2)])
def test_convex_batch_equals_per_sample(update, radii, band, monkeypatch):
    # each sample of a batch gets the S (and the output) it gets alone, also when the band
    # is wider than the largest radius (the band window used to reach into the neighbouring
    # sample: a wrong S, or IndexError at the ends of the batch)
    monkeypatch.setattr(iel, "SPARSE_UPDATE_BUDGET", 1e9 if update == "sparse" else 0.0)
    maps = [_smooth_logits(5), logits_of(disc_mask(36, 12, notch_deg=30))[..., :32], _smooth_logits(11)]
    batch = torch.cat(maps)
    layer = ConvexIEL(0.1, 20, (1,), radii, band)
    out, s = layer.forward_with_region(batch)
    for i, x in enumerate(maps):
        out_i, s_i = layer.forward_with_region(x)
        assert s_i.sum() > 0
        assert torch.equal(s[i : i + 1], s_i)
        assert torch.allclose(out[i : i + 1], out_i, atol=1e-12)
        assert torch.equal(s_i, reference_convex(x, 0.1, 20, (1,), radii, band)[1])
    assert not torch.equal(s[0], s[2])  # three different maps


def dented_disc(n: int, cy: float, cx: float, r: float, notch_deg: float) -> np.ndarray:
    """Like ``disc_mask`` but centred at (cy, cx) (the disc may leave the image)."""
    y, x = np.mgrid[:n, :n].astype(float)
    y, x = y - cy, x - cx
    d2 = y * y + x * x
    ang = np.degrees(np.arctan2(y, x))
    return ((d2 <= r * r) & ~((np.abs(ang) < notch_deg) & (d2 > (0.3 * r) ** 2))).astype(np.int64)


def test_convex_batch_band_does_not_leak_into_neighbour_samples():
    # objects touching the bottom of sample 0 and the top of sample 1: with a band (10)
    # wider than the radius (1) the band windows of one sample used to read the next one
    # and the batch returned a wrong S without any error
    n, radii, band = 38, (1,), 10
    maps = [logits_of(dented_disc(n, *p)) for p in ((34, 18, 16, 20), (4, 26, 17, 30), (26, 2, 18, 30))]
    layer = ConvexIEL(0.1, 20, (1,), radii, band)
    out, s = layer.forward_with_region(torch.cat(maps))
    for i, x in enumerate(maps):
        out_i, s_i = layer.forward_with_region(x)
        ref, s_ref = reference_convex(x, 0.1, 20, (1,), radii, band)
        assert torch.equal(s_i, s_ref) and torch.allclose(out_i, ref, atol=1e-12)
        assert torch.equal(s[i : i + 1], s_i)
        assert torch.allclose(out[i : i + 1], out_i, atol=1e-12)
    # sample 0 has no dent: its S is empty (the leak used to put some 240 of its pixels in S)
    assert s[0].sum() == 0 and s[1].sum() > 0


def test_convex_band_zero_is_refused():
    # band 0 leaves S with background pixels only, which keep their logits: a silent no-op
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"convex_band must be an integer >= 1"):
            IELConfig(convex_band=bad)
    with pytest.raises(ValueError, match=r"convex_band must be an integer >= 1.*got 0"):
        IELConfig.from_spec("convex", convex_band=0)
    with pytest.raises(ValueError, match="convex_band"):
        IELConfig.from_dict({**IELConfig().to_dict(), "convex_band": 0})
    with pytest.raises(ValueError, match="convex_band"):
        ConvexIEL(band=0)
    assert IELConfig(convex_band=1).convex_band == 1 and IELConfig(convex_band=50.0).convex_band == 50


def test_layer_defaults_equal_config_defaults():
    # one source of defaults: the IELConfig fields
    d = {f.name: f.default for f in fields(IELConfig)}
    heat = inspect.signature(HeatIEL).parameters
    assert (heat["dt"].default, heat["steps"].default, heat["classes"].default) == (
        d["heat_dt"], d["heat_steps"], d["heat_classes"]
    )
    conv = inspect.signature(ConvexIEL).parameters
    assert (conv["dt"].default, conv["steps"].default, conv["radii"].default, conv["band"].default) == (
        d["convex_dt"], d["convex_steps"], d["convex_radii"], d["convex_band"]
    )
    # a bare ConvexIEL is the layer of the plain "convex" spec
    cfg = IELConfig.from_spec("convex")
    layer = ConvexIEL()
    assert (layer.dt, layer.steps, layer.classes, layer.radii, layer.band) == (
        cfg.convex_dt, cfg.convex_steps, cfg.convex_classes, cfg.convex_radii, cfg.convex_band
    )
    h = HeatIEL()
    assert (h.dt, h.steps, h.classes) == (cfg.heat_dt, cfg.heat_steps, cfg.heat_classes)
    for fn in (iel.concave_support, iel.convex_evolve, reference_convex):
        p = inspect.signature(fn).parameters
        assert (p["radii"].default, p["band"].default) == (d["convex_radii"], d["convex_band"])
    # the stack builds its layers from the config it is given
    custom = IELConfig(heat_dt=0.07, heat_steps=9, convex_classes=(1,), convex_dt=0.02, convex_steps=5,
                       convex_radii=(2, 4), convex_band=3)
    stack = IELStack(custom)
    assert (stack.heat.dt, stack.heat.steps) == (0.07, 9)
    c = stack.convex
    assert (c.dt, c.steps, c.classes, c.radii, c.band) == (0.02, 5, (1,), (2, 4), 3)


def test_concave_support_counts_in_image_pixels_only():
    # a 3x3 foreground block in the corner: background pixel (0, 3) sees 3 of 4x... windows
    m = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    m[0, 0, :3, :3] = True
    m[0, 0, 1, 1] = False  # a one-pixel hole: background with 8/9 foreground around it
    s = concave_support(m, radii=(1,), band=0)[0, 0]
    assert s[1, 1] and s.sum() == 1
    s = concave_support(m, radii=(1,), band=1)[0, 0]
    assert s.sum() == 9  # the hole plus the 8 foreground pixels around it


# ----------------------------------------------------------------------------- stack + display


def test_stack_identity():
    stack = IELStack(IELConfig.none())
    assert stack.is_identity and not IELStack(IELConfig()).is_identity
    u = torch.randn(1, 2, 8, 8)
    assert stack(u) is u


def test_defect_maps_light_up_specks():
    n = 80
    mask = np.zeros((n, n), np.int64)
    mask[32:] = 1  # foreground: lower half
    specks = [(10, 20), (60, 40)]  # a foreground speck in the background and a hole in the foreground
    for y, x in specks:
        mask[y, x] = 1 - mask[y, x]
    cfg = IELConfig()
    dm = defect_maps(one_hot(mask, 2), cfg)
    assert dm.amplification.shape == (n, n) and dm.per_class.shape == (2, n, n)
    assert dm.steps.shape == (21, n, n) and list(dm.step_index) == list(range(21))
    assert not dm.convex_region.any()
    for y, x in specks:
        assert dm.amplification[y, x] > 3.0
        assert np.all(np.diff(dm.steps[:, y, x]) > 0)  # grows at every step
    # flat regions more than K = 20 px (L1) from any edge or speck: exactly unchanged
    assert dm.amplification[0:8, 50:80].max() == 0.0
    assert dm.amplification[72:80, 0:15].max() == 0.0
    assert np.array_equal(dm.steps[0], np.zeros((n, n), np.float32))
    assert np.allclose(dm.steps[-1], dm.amplification)
    # the same numbers as the training-time layer
    ref = HeatIEL(0.1, 20)(torch.from_numpy(one_hot(mask, 2))[None].double())[0].numpy()
    assert np.allclose(dm.output, ref, atol=1e-4)
    few = defect_maps(torch.from_numpy(one_hot(mask, 2)), cfg, n_steps_record=4)
    assert list(few.step_index) == [0, 5, 10, 15, 20] and np.allclose(few.steps, dm.steps[::5])


def test_defect_maps_convex_region_and_errors():
    mask = disc_mask(64, 14, notch_deg=25)
    dm = defect_maps(one_hot(mask, 2), IELConfig(heat=False, convex_classes=(1,)))
    assert dm.convex_region.sum() > 50 and dm.steps.shape == (21, 64, 64)
    assert dm.amplification[~dm.convex_region].max() == 0.0
    assert dm.amplification[dm.convex_region].max() > 1.0
    with pytest.raises(ValueError, match="outside 0..1"):
        one_hot(np.array([[0, 2]]), 2)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        defect_maps(np.zeros((4, 4)), IELConfig())


def test_convex_update_every_is_a_close_approximation():
    dented = logits_of(disc_mask(64, 14, notch_deg=25))
    exact, s1 = ConvexIEL(0.1, 20, (1,)).forward_with_region(dented)
    approx, s4 = ConvexIEL(0.1, 20, (1,), update_every=4).forward_with_region(dented)
    assert torch.equal(ConvexIEL(0.1, 20, (1,), update_every=1)(dented), exact)
    # S grows later, so it is no larger; the dent is still deepened in the same place
    assert s4.sum() <= s1.sum() and (s4 & ~s1).sum() == 0
    assert (approx - dented)[0, 1].min() < -5
    with pytest.raises(ValueError, match="update_every"):
        ConvexIEL(update_every=0)
