"""Inverse evolution layers (IELs): heat flow and curve motion run backwards.

Math: docs/iel-method.md (shared). Both layers act on logits ``B x C x H x W``,
have no trainable parameters and use replicate (Neumann) boundaries, so a
constant map is an exact fixed point and only real defects are amplified.

Speed (they sit in every training step):

- ``HeatIEL`` is linear and shift-invariant with a Neumann boundary, so the
  K-step operator ``T = (I - dt L)^K`` is diagonal in the DCT-II basis with
  factor ``(1 + dt*lam)^K``, ``lam = 1 - (cos a + cos b)/2``. We compute
  ``T u = u + Q(L u)`` with ``Q = (T - I) / L`` applied by four DCT matmuls:
  exact (same numbers as K explicit steps up to rounding, checked in float64),
  cost independent of K, a handful of kernel launches. ``L u`` is taken with
  the stencil first, so a constant map gives exactly ``u``. Images larger than
  ``DCT_MAX_SIDE`` use the explicit step loop (matmul cost grows with size).
- ``ConvexIEL`` runs all convex classes in one batch (exact, same S and same
  numbers/gradients as the direct loop ``reference_convex`` in float64):
  step-0 region from one integral image for all radii (integer sums, exact
  1/2 thresholds) and a second one for the band; phi changes only inside S
  and only where the input is foreground, so
  the K steps update only the S pixels (gathered neighbours, O(|S|) per step,
  hand-written backward, no autograd graph); the hard mask can only shrink
  inside S, so after each step S grows exactly from the flipped pixels alone
  (``_Support.flip``); if S is empty at step 0 the layer returns its input.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Largest image side for the DCT fast path of ``HeatIEL``; larger maps use the step loop.
DCT_MAX_SIDE = 512

#: ConvexIEL updates S from a (2 max(radii, band) + 1)^2 window gathered around each flipped
#: pixel while those windows hold at most this many times the mask's pixels; above, it
#: recomputes the affected samples in full (both exact; CPU crossover measured near 9).
SPARSE_UPDATE_BUDGET = 8.0

#: Added to |grad phi|^2 before the square root (as in the reference code).
GRAD_EPS = 1e-6


# --------------------------------------------------------------------------- config


def _int_tuple(value, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of integers, got {value!r}") from None
    if any(float(v) != o for v, o in zip(value, out)):
        raise ValueError(f"{name} must be integers, got {value!r}")
    return out


def _is_integer(v) -> bool:
    try:
        return int(v) == v
    except (TypeError, ValueError, OverflowError):
        return False


#: Class made convex when the curve-motion layer is asked for without naming classes
#: (``IELConfig.from_spec("convex")`` and ``ConvexIEL()``).
DEFAULT_CONVEX_CLASSES: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class IELConfig:
    """Which IELs regularise training, with their step size dt and step count K.

    ``heat_classes=None`` smooths every class channel; ``convex_classes=()``
    disables the curve-motion layer. ``convex_radii`` are the box-window radii
    (px) of the concavity detector, ``convex_band`` (>= 1) the width (px) of the
    inner band inside the object. These field defaults are the only defaults:
    ``HeatIEL`` and ``ConvexIEL`` take theirs from here.
    """

    heat: bool = True
    heat_dt: float = 0.1
    heat_steps: int = 20
    heat_classes: tuple[int, ...] | None = None
    convex_classes: tuple[int, ...] = ()
    convex_dt: float = 0.05
    convex_steps: int = 20
    convex_radii: tuple[int, ...] = (3, 6, 9)
    convex_band: int = 2

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "heat", bool(self.heat))
        for name in ("heat_dt", "convex_dt"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
            set_(self, name, v)
        for name, low in (("heat_steps", 0), ("convex_steps", 0), ("convex_band", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not _is_integer(v) or int(v) < low:
                extra = ""
                if name == "convex_band":
                    # Only the input's foreground moves (ConvexIEL), and without the inner
                    # band S holds background pixels only: band 0 would silently do nothing.
                    extra = (
                        " (width in px of the inner band of the convexity region; with 0 the region"
                        " holds background pixels only, which keep their logits, so the layer would do"
                        " nothing; to switch the layer off leave convex_classes empty)"
                    )
                raise ValueError(f"{name} must be an integer >= {low}{extra}, got {v!r}")
            set_(self, name, int(v))
        if self.heat_classes is not None:
            set_(self, "heat_classes", _int_tuple(self.heat_classes, "heat_classes"))
        set_(self, "convex_classes", _int_tuple(self.convex_classes, "convex_classes"))
        set_(self, "convex_radii", _int_tuple(self.convex_radii, "convex_radii"))
        for name in ("heat_classes", "convex_classes"):
            cls = getattr(self, name)
            if cls is None:
                continue
            if any(c < 0 for c in cls):
                raise ValueError(f"{name} must be class indices >= 0, got {cls}")
            if len(set(cls)) != len(cls):
                raise ValueError(f"{name} has a repeated class: {cls}")
        if not self.convex_radii or any(r <= 0 for r in self.convex_radii):
            raise ValueError(f"convex_radii must be positive integers, got {self.convex_radii}")

    # -- constructors
    @classmethod
    def none(cls) -> IELConfig:
        """No IEL at all: training uses the raw logits."""
        return cls(heat=False, convex_classes=())

    @classmethod
    def from_spec(cls, spec: str, **overrides) -> IELConfig:
        """Build from ``"heat"``, ``"convex"``, ``"heat,convex"`` or ``"none"`` plus field overrides.

        ``"convex"`` without ``convex_classes`` makes class 1 convex.
        """
        names = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - names)
        if bad:
            raise ValueError(f"unknown IEL setting(s) {bad}; valid: {sorted(names)}")
        if "heat" in overrides:
            raise ValueError("'heat' is set by the spec, not as an override")
        tokens = [t.strip().lower() for t in str(spec).replace("+", ",").split(",") if t.strip()]
        unknown = [t for t in tokens if t not in ("heat", "convex", "none")]
        if unknown or not tokens:
            raise ValueError(f"IEL spec must be 'heat', 'convex', 'heat,convex' or 'none', got {spec!r}")
        if "none" in tokens and len(set(tokens)) > 1:
            raise ValueError(f"IEL spec 'none' cannot be combined with other layers: {spec!r}")
        heat, convex = "heat" in tokens, "convex" in tokens
        kw = dict(overrides)
        if convex:
            kw.setdefault("convex_classes", DEFAULT_CONVEX_CLASSES)
            if not _int_tuple(kw["convex_classes"], "convex_classes"):
                raise ValueError(f"IEL spec {spec!r} enables convex but convex_classes is empty")
        elif kw.get("convex_classes"):
            raise ValueError(
                f"IEL spec {spec!r} has no 'convex' but convex_classes={kw['convex_classes']!r} was given"
            )
        else:
            kw["convex_classes"] = ()
        return cls(heat=heat, **kw)

    @classmethod
    def from_dict(cls, d: dict) -> IELConfig:
        """Inverse of ``to_dict`` (unknown keys are an error)."""
        names = {f.name for f in fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"unknown IEL setting(s) {bad}")
        return cls(**d)

    # -- reports
    @property
    def heat_on(self) -> bool:
        return self.heat and self.heat_steps > 0 and self.heat_classes != ()

    @property
    def convex_on(self) -> bool:
        return bool(self.convex_classes) and self.convex_steps > 0

    @property
    def is_identity(self) -> bool:
        return not (self.heat_on or self.convex_on)

    @property
    def heat_gain(self) -> float:
        """Amplification of the checkerboard (highest-frequency) mode, (1 + 2 dt)^K."""
        return (1.0 + 2.0 * self.heat_dt) ** self.heat_steps if self.heat_on else 1.0

    def to_dict(self) -> dict:
        """JSON-serialisable dict (tuples as lists)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def describe(self) -> str:
        """One line for reports and the GUI."""
        parts = []
        if self.heat_on:
            cls = "all classes" if self.heat_classes is None else f"classes {list(self.heat_classes)}"
            parts.append(
                f"heat dt={self.heat_dt:g} K={self.heat_steps} on {cls} "
                f"(checkerboard gain {self.heat_gain:.3g}x)"
            )
        if self.convex_on:
            parts.append(
                f"convex classes {list(self.convex_classes)} dt={self.convex_dt:g} K={self.convex_steps} "
                f"radii {list(self.convex_radii)} band {self.convex_band}px"
            )
        return " + ".join(parts) if parts else "no IEL"


#: The field defaults of ``IELConfig``: the single source of every layer default below.
_DEFAULTS = IELConfig()


# --------------------------------------------------------------------------- heat


def _laplacian(u: torch.Tensor) -> torch.Tensor:
    """4 * L u = (sum of the 4 neighbours) - 4u, replicate padding; exactly 0 on constants."""
    p = F.pad(u, (1, 1, 1, 1), mode="replicate")
    n = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1]) + (p[..., 1:-1, :-2] + p[..., 1:-1, 2:])
    return torch.add(n, u, alpha=-4.0)


def heat_loop(u: torch.Tensor, dt: float, steps: int) -> torch.Tensor:
    """K explicit inverse heat steps ``u <- u - dt * L u`` on every channel (differentiable)."""
    for _ in range(steps):
        u = torch.add(u, _laplacian(u), alpha=-dt / 4.0)
    return u


def _dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix (float64): rows are the Neumann Laplacian eigenvectors."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * k * (i + 0.5) / n) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def heat_mode_lambda(h: int, w: int) -> torch.Tensor:
    """``lam = 1 - (cos a + cos b)/2`` of the DCT mode (a, b) = (pi k/h, pi l/w), float64 (h, w)."""
    a = torch.cos(math.pi * torch.arange(h, dtype=torch.float64) / h)
    b = torch.cos(math.pi * torch.arange(w, dtype=torch.float64) / w)
    return 1.0 - (a[:, None] + b[None, :]) / 2.0


class HeatIEL(nn.Module):
    """Inverse heat diffusion ``u <- u - dt * L u``, K times, on the selected class channels.

    ``L u = mean of the 4 neighbours - u`` with replicate padding. Computed in one
    shot in the DCT basis (exact, see module doc); channels not in ``classes``
    pass through unchanged. Half-precision input is computed and returned in
    float32.
    """

    def __init__(
        self,
        dt: float = _DEFAULTS.heat_dt,
        steps: int = _DEFAULTS.heat_steps,
        classes: tuple[int, ...] | None = _DEFAULTS.heat_classes,
    ):
        super().__init__()
        cfg = IELConfig(heat_dt=dt, heat_steps=steps, heat_classes=classes)  # validates
        self.dt, self.steps, self.classes = cfg.heat_dt, cfg.heat_steps, cfg.heat_classes
        self._cache: dict = {}

    @classmethod
    def from_config(cls, config: IELConfig) -> HeatIEL:
        """The heat layer of ``config`` (its ``heat_dt``, ``heat_steps``, ``heat_classes``)."""
        return cls(config.heat_dt, config.heat_steps, config.heat_classes)

    def extra_repr(self) -> str:
        return f"dt={self.dt}, steps={self.steps}, classes={self.classes}"

    def _operators(self, h: int, w: int, dtype: torch.dtype, device: torch.device):
        key = (h, w, dtype, str(device))
        ops = self._cache.get(key)
        if ops is None:
            lam = heat_mode_lambda(h, w)
            # Q = (T - I) / L per mode: ((1 + dt lam)^K - 1) / (-lam); limit -dt K at lam = 0.
            grow = torch.expm1(self.steps * torch.log1p(self.dt * lam))
            q = torch.where(lam > 0, -grow / lam.clamp_min(1e-300), torch.full_like(lam, -self.dt * self.steps))
            q = q / 4.0  # _laplacian returns 4 L u
            dh, dw = _dct_matrix(h), _dct_matrix(w)
            ops = tuple(t.to(device=device, dtype=dtype) for t in (dh, dh.T.contiguous(), dw.T.contiguous(), dw, q))
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = ops
        return ops

    def evolve(self, u: torch.Tensor) -> torch.Tensor:
        """Apply all K steps to every channel of ``u`` (..., H, W)."""
        h, w = u.shape[-2:]
        if max(h, w) > DCT_MAX_SIDE:
            return heat_loop(u, self.dt, self.steps)
        dh, dht, dwt, dw, q = self._operators(h, w, u.dtype, u.device)
        lap = _laplacian(u)
        coef = torch.matmul(dh, torch.matmul(lap, dwt)) * q
        return u + torch.matmul(dht, torch.matmul(coef, dw))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 4:
            raise ValueError(f"HeatIEL expects B x C x H x W logits, got shape {tuple(logits.shape)}")
        if self.steps == 0 or self.classes == ():
            return logits
        x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        with _no_autocast(x.device):
            idx = _class_index(self.classes, x.shape[1], x.device, "heat")
            if idx is None:
                return self.evolve(x)
            return x.index_copy(1, idx, self.evolve(x.index_select(1, idx)))


def _no_autocast(device: torch.device):
    """Full precision inside the IELs even under mixed-precision training."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _class_index(classes, n_channels: int, device, what: str) -> torch.Tensor | None:
    """Index tensor of the selected channels, or None for all of them."""
    if classes is None:
        return None
    bad = [c for c in classes if c >= n_channels]
    if bad:
        raise ValueError(f"{what} IEL: class {bad[0]} does not exist in {n_channels}-channel logits")
    if tuple(classes) == tuple(range(n_channels)):
        return None
    return torch.tensor(classes, dtype=torch.long, device=device)


# --------------------------------------------------------------------------- convex


_COUNT_CACHE: dict = {}


def _half_counts(h: int, w: int, r: int, device) -> torch.Tensor:
    """ceil(n / 2) with n the number of in-image pixels of each (2r+1)^2 window, (h, w) int32."""
    key = (h, w, r, str(device))
    t = _COUNT_CACHE.get(key)
    if t is None:
        ys, xs = torch.arange(h), torch.arange(w)
        ch = (ys + r).clamp(max=h - 1) - (ys - r).clamp(min=0) + 1
        cw = (xs + r).clamp(max=w - 1) - (xs - r).clamp(min=0) + 1
        t = ((ch[:, None] * cw[None, :] + 1) // 2).to(device=device, dtype=torch.int32)
        if len(_COUNT_CACHE) > 64:
            _COUNT_CACHE.clear()
        _COUNT_CACHE[key] = t
    return t


def box_sums(x: torch.Tensor, radii) -> list[torch.Tensor]:
    """Sums of ``x`` (..., H, W) over (2r+1)^2 windows (zero outside), one int32 map per radius.

    One integral image (two cumsums) serves every radius; integer arithmetic, so exact.
    """
    h, w = x.shape[-2:]
    big = max(radii)
    p = F.pad(x.to(torch.int32), (big + 1, big, big + 1, big))
    integral = p.cumsum(-2, dtype=torch.int32).cumsum(-1, dtype=torch.int32)
    out = []
    for r in radii:
        hi, lo = big + 1 + r, big - r
        top = integral[..., hi : hi + h, :]
        bot = integral[..., lo : lo + h, :]
        out.append(
            (top[..., hi : hi + w] - top[..., lo : lo + w]) - (bot[..., hi : hi + w] - bot[..., lo : lo + w])
        )
    return out


def concave_support(
    mask: torch.Tensor, radii=_DEFAULTS.convex_radii, band: int = _DEFAULTS.convex_band
) -> torch.Tensor:
    """Region S of one detection step for hard foreground masks (N, 1, H, W) bool.

    Outer part: background pixels where the foreground fraction of the box window
    of radius r (in-image pixels only) is >= 1/2, for any r. Inner part:
    foreground pixels within ``band`` px (square neighbourhood) of the outer part
    (``band`` 0: the outer part alone; ``IELConfig`` refuses 0 for the layer).
    Box sums and the band dilation use integral images (exact integers); no gradient.
    """
    with torch.no_grad():
        h, w = mask.shape[-2:]
        outer = None
        for r, s in zip(radii, box_sums(mask, radii)):
            hit = s >= _half_counts(h, w, r, mask.device)
            outer = hit if outer is None else outer.logical_or_(hit)
        outer &= ~mask
        if band <= 0:
            return outer
        near = box_sums(outer, (band,))[0] > 0
        return outer | (near & mask)


_INDEX_CACHE: dict = {}


def _index_tables(n: int, h: int, w: int, big: int, device):
    """Flat-index tables for ``_Support`` (cached): to padded, from padded, 4 neighbours."""
    key = (n, h, w, big, str(device))
    t = _INDEX_CACHE.get(key)
    if t is None:
        hp, wp = h + 2 * big, w + 2 * big
        ni, yi, xi = torch.meshgrid(torch.arange(n), torch.arange(h), torch.arange(w), indexing="ij")
        to_pad = (ni * (hp * wp) + (yi + big) * wp + (xi + big)).reshape(-1)
        from_pad = torch.full((n * hp * wp,), -1, dtype=torch.long)
        from_pad[to_pad] = torch.arange(n * h * w)
        flat = torch.arange(n * h * w).reshape(n, h, w)
        right = torch.cat((flat[..., 1:], flat[..., -1:]), -1)  # replicate at the border
        left = torch.cat((flat[..., :1], flat[..., :-1]), -1)
        down = torch.cat((flat[:, 1:], flat[:, -1:]), 1)
        up = torch.cat((flat[:, :1], flat[:, :-1]), 1)
        nbr = torch.stack((right, left, down, up)).reshape(4, -1)
        t = tuple(x.to(device) for x in (to_pad, from_pad, nbr))
        if n * h * w <= 1 << 22:  # big single maps (display) are not worth keeping
            if len(_INDEX_CACHE) > 16:
                _INDEX_CACHE.clear()
            _INDEX_CACHE[key] = t
    return t


class _Support:
    """The concave support S of a batch of hard masks (N, 1, H, W), as a dense mask and a pixel list.

    ``idx`` are the flat indices of the S pixels, ``nbr`` (4, |S|) those of their
    right, left, lower and upper neighbours (replicate at the image border).
    ``flip`` updates S exactly after foreground pixels turned background: the
    mask only shrinks inside S, so box fractions only drop; old background pixels
    can leave but never join the concave region, and the new region members are
    flipped pixels (already in S). Only their band is new:
    ``S |= dilate(flipped & region(new mask), band) & new mask``. With few flips
    this is evaluated from windows gathered around them; otherwise the affected
    samples are recomputed in full.
    """

    def __init__(self, mask: torch.Tensor, radii, band: int):
        self.n, _, self.h, self.w = mask.shape
        # The padding must hold every gathered window: the radius windows *and* the band
        # window. Padding by max(radii) alone let a band wider than the largest radius
        # reach past the padding: the flat offsets then wrapped into the neighbouring row,
        # the neighbouring sample of the batch (a wrong S) or past the array (IndexError).
        self.radii, self.band = tuple(radii), band
        self.big = max(max(self.radii), band)
        self.to_pad, self.from_pad, self.nbr_all = _index_tables(self.n, self.h, self.w, self.big, mask.device)
        wp, dev = self.w + 2 * self.big, mask.device

        def window(r: int) -> torch.Tensor:
            d = torch.arange(-r, r + 1, device=dev)
            return (d[:, None] * wp + d[None, :]).reshape(1, -1)

        # per radius, smallest first: padded-index offsets and ceil(n/2) per pixel
        self.tests = [(window(r), _half_counts(self.h, self.w, r, dev).view(-1)) for r in sorted(radii)]
        self.band_window = window(band)
        self.mask = mask
        self.padded = F.pad(mask, (self.big,) * 4).reshape(-1)  # False outside the image
        self.dense = concave_support(mask, radii, band)
        self.idx = self.dense.reshape(-1).nonzero()[:, 0]
        self.nbr = self.nbr_all.index_select(1, self.idx)

    def flip(self, flipped: torch.Tensor) -> str:
        """Pixels ``flipped`` (flat indices) left the mask; update S. Returns "sparse", "full" or "none"."""
        centre = self.to_pad.index_select(0, flipped)
        self.mask.view(-1).index_fill_(0, flipped, False)
        self.padded.index_fill_(0, centre, False)
        if self.band <= 0:
            return "none"  # the region only gains flipped pixels, which are in S already
        h, w, big = self.h, self.w, self.big
        if flipped.numel() * (2 * big + 1) ** 2 > SPARSE_UPDATE_BUDGET * self.mask.numel():
            sel = torch.unique(flipped // (h * w))
            self.dense[sel] |= concave_support(self.mask[sel], self.radii, self.band)
            self.idx = self.dense.reshape(-1).nonzero()[:, 0]
            self.nbr = self.nbr_all.index_select(1, self.idx)
            return "full"
        rem = flipped % (h * w)
        hits = []
        for i, (offsets, half) in enumerate(self.tests):  # most flipped pixels pass the smallest window
            inside = self.padded.index_select(0, (centre[:, None] + offsets).view(-1))
            ok = inside.view(centre.numel(), -1).sum(1, dtype=torch.int32) >= half.index_select(0, rem)
            hits.append(centre[ok])
            if i + 1 < len(self.tests):
                miss = ~ok
                centre, rem = centre[miss], rem[miss]
                if centre.numel() == 0:
                    break
        hit = torch.cat(hits) if len(hits) > 1 else hits[0]
        q = (hit[:, None] + self.band_window).view(-1)
        q = self.from_pad.index_select(0, q[self.padded.index_select(0, q)])  # band pixels in the mask
        dense = self.dense.view(-1)
        new = torch.unique(q[~dense.index_select(0, q)])
        if new.numel():
            dense.index_fill_(0, new, True)
            self.idx = torch.cat((self.idx, new))
            self.nbr = torch.cat((self.nbr, self.nbr_all.index_select(1, new)), 1)
        return "sparse"


class _ConvexEvolve(torch.autograd.Function):
    """K curve-motion steps computed on the S pixels only, with a hand-written adjoint.

    phi changes only inside S, so each step gathers the 4 neighbours of the S
    pixels (flat indices, replicate at the image border), updates those pixels in
    place and stores ``a/g``, ``b/g`` for them; the cost per step is O(|S|).
    ``backward`` runs the steps in reverse, scattering ``D^T`` with ``scatter_add_``.
    """

    @staticmethod
    def forward(ctx, phi0, dt, steps, radii, band, on_step, stats, update_every, need_grad):
        phi = phi0.detach().clone(memory_format=torch.contiguous_format)
        flat = phi.view(-1)
        sup = _Support(phi > 0, radii, band)
        # Only pixels the input calls foreground move (see ConvexIEL): weight 1 there, 0 elsewhere.
        fg0 = (phi > 0).view(-1).to(phi.dtype)
        c = dt / 2.0
        saved = []
        active = steps > 0 and sup.idx.numel() > 0
        for k in range(steps if active else 0):
            idx, nbr = sup.idx, sup.nbr
            v = flat.index_select(0, nbr.view(-1)).view(4, -1)
            a, b = v[0] - v[1], v[2] - v[3]
            g = (a * a).addcmul_(b, b).add_(4.0 * GRAD_EPS).sqrt_()
            old = flat.index_select(0, idx)
            w = fg0.index_select(0, idx)
            new = torch.addcmul(old, g, w, value=-c)
            flat.scatter_(0, idx, new)
            if need_grad:
                g.reciprocal_().mul_(w)
                saved.append((idx, nbr, a.mul_(g), b.mul_(g)))
            if on_step is not None:
                on_step(k + 1, phi)
            if k == steps - 1:
                break
            if update_every == 1:
                flipped = (old > 0) & (new <= 0)  # phi never grows: pixels can only leave the mask
            elif (k + 1) % update_every == 0:
                flipped = sup.mask.view(-1).index_select(0, idx) & (new <= 0)  # left since the last update
            else:
                continue
            if bool(flipped.any()):
                kind = sup.flip(idx[flipped])
                if stats is not None:
                    stats[kind] = stats.get(kind, 0) + 1
        if not active and on_step is not None:
            for k in range(steps):
                on_step(k + 1, phi)
        support = sup.dense
        ctx.c = c
        ctx.steps_saved = saved
        ctx.mark_non_differentiable(support)
        return phi, support

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_phi, grad_support):
        lam = grad_phi.clone(memory_format=torch.contiguous_format)
        flat = lam.view(-1)
        c = ctx.c
        for idx, nbr, ra, rb in reversed(ctx.steps_saved):
            ls = flat.index_select(0, idx)
            m1, m2 = ls * ra, ls * rb
            # a = phi[right] - phi[left], b = phi[down] - phi[up]; lam -= c * (Da^T m1 + Db^T m2)
            flat.scatter_add_(0, nbr.view(-1), torch.stack((m1, -m1, m2, -m2)).mul_(-c).view(-1))
        ctx.steps_saved = None
        return lam, None, None, None, None, None, None, None, None


def convex_evolve(
    phi: torch.Tensor,
    dt: float,
    steps: int,
    radii=_DEFAULTS.convex_radii,
    band: int = _DEFAULTS.convex_band,
    on_step=None,
    stats: dict | None = None,
    update_every: int = 1,
):
    """Curve-motion IEL on level sets ``phi`` (N, 1, H, W); returns ``(phi_K, S)``.

    Each step: M = phi > 0 (no grad), S |= concave_support(M), then
    ``phi <- phi - dt * S * F0 * |grad phi|`` with F0 = (input phi > 0) (see ConvexIEL). After step 0 S is updated exactly and
    incrementally from the pixels whose M changed (``_grow_support_``); ``stats``
    (a dict) counts how each update was done. ``update_every`` > 1 updates S only
    every that many steps (approximate: S grows later; 1 = exact). ``on_step(k, phi_k)`` is called after each
    step k = 1..K (for display; do not keep ``phi_k``, it is updated in place).
    Differentiable in ``phi`` (hand-written backward); cost per step O(|S|).
    """
    need_grad = torch.is_grad_enabled() and phi.requires_grad  # nothing is saved for display runs
    args = (float(dt), int(steps), tuple(radii), int(band), on_step, stats, int(update_every), need_grad)
    return _ConvexEvolve.apply(phi, *args)


def _level_sets(logits: torch.Tensor, classes) -> torch.Tensor:
    """phi_c = logit_c - max of the other logits, (B, n, H, W)."""
    c_all = logits.shape[1]
    out = []
    for c in classes:
        others = [j for j in range(c_all) if j != c]
        rest = logits[:, others].amax(1) if len(others) > 1 else logits[:, others[0]]
        out.append(logits[:, c] - rest)
    return torch.stack(out, 1)


class ConvexIEL(nn.Module):
    """Inverse curve motion that deepens dents of the convex classes (iel-method.md).

    For each class c, ``phi = logit_c - max(other logits)`` (for two classes:
    ``logit_c - logit_bg``, as in the reference code); only ``logit_c`` changes:
    ``logit_c <- logit_c - dt * S * F0 * |grad phi|`` where F0 marks the pixels the
    *input* calls class c (``phi > 0``): the boundary is moved inward inside S, and
    background pixels of the concave region keep their logits. Updating those too (the
    literal rule of iel-method.md) lowers the loss of every concave background pixel
    the network calls foreground, so training is free to fill the gaps between touching
    objects, which makes new concavities at a larger scale: on the bundled nuclei the
    prediction grew to 4x the true area (Dice 0.35) within 300 steps. With F0 the
    background labels there keep their say (Dice 0.98; docs/architecture.md).
    All classes evolve in one batch from the same input (the other classes' logits are
    taken from the input). Ties (phi == 0) count as background. ``update_every=1``
    (default) is exact; n > 1 grows S only every n steps (cheaper, approximate).
    """

    def __init__(
        self,
        dt: float = _DEFAULTS.convex_dt,
        steps: int = _DEFAULTS.convex_steps,
        classes=DEFAULT_CONVEX_CLASSES,
        radii=_DEFAULTS.convex_radii,
        band: int = _DEFAULTS.convex_band,
        update_every: int = 1,
    ):
        super().__init__()
        if int(update_every) != update_every or update_every < 1:
            raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}")
        self.update_every = int(update_every)
        cfg = IELConfig(convex_dt=dt, convex_steps=steps, convex_classes=classes, convex_radii=radii, convex_band=band)
        self.dt, self.steps = cfg.convex_dt, cfg.convex_steps
        self.classes, self.radii, self.band = cfg.convex_classes, cfg.convex_radii, cfg.convex_band

    @classmethod
    def from_config(cls, config: IELConfig, steps: int | None = None, update_every: int = 1) -> ConvexIEL:
        """The curve-motion layer of ``config`` (``steps`` overrides ``convex_steps``)."""
        k = config.convex_steps if steps is None else steps
        return cls(config.convex_dt, k, config.convex_classes, config.convex_radii, config.convex_band, update_every)

    def extra_repr(self) -> str:
        return (
            f"dt={self.dt}, steps={self.steps}, classes={self.classes}, radii={self.radii}, band={self.band}, "
            f"update_every={self.update_every}"
        )

    def forward_with_region(self, logits: torch.Tensor, on_step=None, stats: dict | None = None):
        """``(output, S)`` with S (B, n_classes, H, W) bool; ``on_step(k, delta (B, n, H, W))``."""
        if logits.dim() != 4:
            raise ValueError(f"ConvexIEL expects B x C x H x W logits, got shape {tuple(logits.shape)}")
        b, c, h, w = logits.shape
        if not self.classes or self.steps == 0:
            return logits, logits.new_zeros((b, len(self.classes), h, w), dtype=torch.bool)
        if c < 2:
            raise ValueError("ConvexIEL needs at least 2 class channels")
        _class_index(self.classes, c, logits.device, "convex")
        x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        n = len(self.classes)
        with _no_autocast(x.device):
            phi0 = _level_sets(x, self.classes).reshape(b * n, 1, h, w)
            cb = None if on_step is None else (lambda k, p: on_step(k, (p - phi0).reshape(b, n, h, w)))
            phi, support = convex_evolve(
                phi0, self.dt, self.steps, self.radii, self.band, cb, stats, self.update_every
            )
            support = support.reshape(b, n, h, w)
            if not bool(support.any()):
                return x, support
            idx = torch.tensor(self.classes, dtype=torch.long, device=x.device)
            return x.index_add(1, idx, (phi - phi0).reshape(b, n, h, w)), support

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.forward_with_region(logits)[0]


def reference_convex(
    logits: torch.Tensor,
    dt: float,
    steps: int,
    classes,
    radii=_DEFAULTS.convex_radii,
    band: int = _DEFAULTS.convex_band,
):
    """Direct, slow transcription of the curve-motion IEL (oracle for tests and benchmarks).

    Recomputes argmax, one full box filter per radius and the band dilation at
    every step, one class at a time. Same conventions as ``ConvexIEL``.
    Returns ``(output, S (B, n, H, W) bool)``.
    """
    out = logits
    supports = []
    kx = logits.new_tensor([[[[0.0, 0.0, 0.0], [-0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]]])
    ky = logits.new_tensor([[[[0.0, -0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]]])
    for c in classes:
        others = [j for j in range(logits.shape[1]) if j != c]
        rest = logits[:, others].amax(1, keepdim=True)
        u = logits[:, c : c + 1]
        s = torch.zeros_like(u, dtype=torch.bool)
        moves = (u - rest > 0).to(u.dtype)  # only the input's foreground moves
        for _ in range(steps):
            phi = u - rest
            with torch.no_grad():
                m = (phi > 0).float()
                outer = torch.zeros_like(s)
                for r in radii:
                    frac = F.avg_pool2d(m, 2 * r + 1, stride=1, padding=r, count_include_pad=False)
                    outer |= frac >= 0.5
                outer &= m == 0
                near = F.max_pool2d(outer.float(), 2 * band + 1, stride=1, padding=band) > 0 if band else outer
                s = s | outer | (near & (m > 0))
            p = F.pad(phi, (1, 1, 1, 1), mode="replicate")
            g = torch.sqrt(F.conv2d(p, kx) ** 2 + F.conv2d(p, ky) ** 2 + GRAD_EPS)
            u = u - dt * s.to(u.dtype) * moves * g
        supports.append(s)
        out = torch.cat([out[:, :c], u, out[:, c + 1 :]], 1)
    return out, torch.cat(supports, 1)


# --------------------------------------------------------------------------- stack


class IELStack(nn.Module):
    """The IELs of an ``IELConfig``: heat (if on), then curve motion (if convex classes)."""

    def __init__(self, config: IELConfig | None = None):
        super().__init__()
        self.config = config if config is not None else IELConfig()
        cfg = self.config
        self.heat = HeatIEL.from_config(cfg) if cfg.heat_on else None
        self.convex = ConvexIEL.from_config(cfg) if cfg.convex_on else None

    @property
    def is_identity(self) -> bool:
        return self.heat is None and self.convex is None

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.heat is not None:
            logits = self.heat(logits)
        if self.convex is not None:
            logits = self.convex(logits)
        return logits


# --------------------------------------------------------------------------- display


def one_hot(mask, n_classes: int) -> np.ndarray:
    """Class-index mask (H, W) -> one-hot (C, H, W) float32; indices must be in [0, n_classes)."""
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"one_hot expects an (H, W) class mask, got shape {m.shape}")
    if m.size and (m.min() < 0 or m.max() >= n_classes):
        raise ValueError(f"mask values {int(m.min())}..{int(m.max())} outside 0..{n_classes - 1}")
    return (m[None, :, :] == np.arange(n_classes)[:, None, None]).astype(np.float32)


@dataclass
class DefectMaps:
    """What the IEL stack does to one map: the picture of its defects (numpy, CPU).

    ``steps[i]`` is the amplification after ``step_index[i]`` stack steps (heat
    steps first, then curve-motion steps); ``steps[0]`` is zeros and
    ``steps[-1]`` equals ``amplification``.
    """

    amplification: np.ndarray  # (H, W) float32, max over classes of |IEL(u) - u|
    per_class: np.ndarray  # (C, H, W) float32, |IEL(u) - u|
    convex_region: np.ndarray  # (H, W) bool, union of S over convex classes
    steps: np.ndarray  # (n + 1, H, W) float32
    step_index: np.ndarray  # (n + 1,) int64
    output: np.ndarray  # (C, H, W) float32, IEL(u)


def defect_maps(u, config: IELConfig, n_steps_record: int | None = None) -> DefectMaps:
    """Run the IEL stack on one map ``u`` (C, H, W) (logits or one-hot, numpy or tensor).

    ``n_steps_record``: number of recorded steps after step 0 (evenly spaced,
    always including the last); None records every step. No gradient; the
    computation runs on ``u``'s device, results are numpy.
    """
    x = u.detach() if isinstance(u, torch.Tensor) else torch.from_numpy(np.asarray(u))
    if x.dim() != 3:
        raise ValueError(f"defect_maps expects a (C, H, W) map, got shape {tuple(x.shape)}")
    x = x.to(torch.float32)[None]
    c, h, w = x.shape[1:]
    k_heat = config.heat_steps if config.heat_on else 0
    k_convex = config.convex_steps if config.convex_on else 0
    total = k_heat + k_convex
    n = total if n_steps_record is None else max(1, min(int(n_steps_record), total))
    wanted = set(np.unique(np.round(np.linspace(0, total, n + 1)).astype(np.int64)).tolist()) if total else {0}
    frames: list[torch.Tensor] = []
    index: list[int] = []

    def record(k: int, diff: torch.Tensor) -> None:
        if k in wanted:
            frames.append(diff.amax(0))
            index.append(k)

    with torch.no_grad():
        cur = x[0]
        record(0, torch.zeros_like(cur))
        if k_heat:
            idx = _class_index(config.heat_classes, c, x.device, "heat")
            sel = cur if idx is None else cur.index_select(0, idx)
            for k in range(1, k_heat + 1):
                sel = heat_loop(sel, config.heat_dt, 1)
                cur = sel if idx is None else x[0].index_copy(0, idx, sel)
                record(k, (cur - x[0]).abs())
        region = torch.zeros((h, w), dtype=torch.bool, device=x.device)
        if k_convex:
            layer = ConvexIEL.from_config(config, steps=k_convex)
            cidx = torch.tensor(config.convex_classes, dtype=torch.long, device=x.device)
            base = cur

            def on_step(k: int, delta: torch.Tensor) -> None:
                if k_heat + k in wanted:
                    record(k_heat + k, (base.index_add(0, cidx, delta[0]) - x[0]).abs())

            out, support = layer.forward_with_region(cur[None], on_step)
            cur = out[0]
            region = support[0].any(0)
        per_class = (cur - x[0]).abs()
    return DefectMaps(
        amplification=per_class.amax(0).cpu().numpy(),
        per_class=per_class.cpu().numpy(),
        convex_region=region.cpu().numpy(),
        steps=torch.stack(frames).cpu().numpy(),
        step_index=np.asarray(index, dtype=np.int64),
        output=cur.cpu().numpy(),
    )
