"""PDE-G-CNN (Smets, Portegies, Bekkers & Duits, JMIV 2023) in plain PyTorch.

Features live on positions x orientations, shape B x C x O x H x W, with O
orientations theta_k = 2 pi k / O over the full circle. A network is

    lift (O rotated copies of a learned kernel) -> BatchNorm
    -> layers of [convection -> dilation -> erosion -> 1x1x1 channel mix -> BatchNorm]
    -> max over orientations -> 1x1 convolution to logits.

No ReLU and no pooling: the morphological (max-plus / min-plus) convolutions
are the nonlinearity. The reference "lietorch" package does the same with a
compiled library; here the morphological convolution is a custom autograd
function over strided neighbourhood views, so it runs wherever torch runs.

Geometry conventions (used consistently so that rotating the input by 90
degrees rotates every feature map and shifts the orientation axis by O/4,
exactly): offsets are (x, y) with x = column and y pointing *up* (y = -row);
R_theta is the usual counter-clockwise rotation in that frame, which is what
``torch.rot90(t, 1, dims=(-2, -1))`` does to array positions. Everything that
depends on the orientation is computed for the first O/4 orientations and
obtained for the others by exact 90-degree rotations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- geometry


def _rotate(x: torch.Tensor, y: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Counter-clockwise rotation by ``theta`` of offsets (x, y), y pointing up."""
    c, s = math.cos(theta), math.sin(theta)
    return x * c - y * s, x * s + y * c


def _rot90_vec(x: torch.Tensor, y: torch.Tensor, times: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact rotation of (x, y) by ``times`` x 90 degrees."""
    for _ in range(times % 4):
        x, y = -y, x
    return x, y


def rotate_kernel(w: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate square kernels (..., s, s) counter-clockwise by ``theta`` (bilinear, zeros outside).

    ``rotate_kernel(w, pi/2)`` equals ``torch.rot90(w, 1, dims=(-2, -1))`` up to rounding.
    """
    s = w.shape[-1]
    if s == 1 or theta == 0.0:
        return w
    c = (s - 1) / 2
    ax = torch.arange(s, dtype=w.dtype, device=w.device) - c
    row, col = torch.meshgrid(ax, ax, indexing="ij")
    # the value at p comes from R_{-theta} p
    sx, sy = _rotate(col, -row, -theta)
    grid = torch.stack([sx / c, -sy / c], dim=-1)  # align_corners=True: +-1 = outer pixel centres
    flat = w.reshape(-1, 1, s, s)
    out = F.grid_sample(
        flat, grid.expand(flat.shape[0], s, s, 2), mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out.reshape(w.shape)


def rotated_copies(w: torch.Tensor, orientations: int) -> torch.Tensor:
    """(O, ...) stack: copy k is ``w`` rotated by 2 pi k / O; copy k + O/4 is exactly rot90 of copy k."""
    _check_orientations(orientations)
    q = orientations // 4
    base = [rotate_kernel(w, 2 * math.pi * k / orientations) for k in range(q)]
    return torch.stack([torch.rot90(base[k], j, dims=(-2, -1)) for j in range(4) for k in range(q)])


def _check_orientations(orientations: int) -> None:
    if orientations < 4 or orientations % 4:
        raise ValueError(f"orientations must be a positive multiple of 4, got {orientations}")


def _disk(s: int) -> torch.Tensor:
    ax = torch.arange(s, dtype=torch.float32) - (s - 1) / 2
    return ((ax[:, None] ** 2 + ax[None, :] ** 2) <= ((s - 1) / 2 + 0.5) ** 2).float()


# ----------------------------------------------------------------------------- morphological convolution


def _pad_neighbourhood(f: torch.Tensor, mr: int, r: int) -> torch.Tensor:
    """Circular padding by ``mr`` along orientations, -inf padding by ``r`` in space."""
    if mr:
        f = torch.cat([f[:, :, -mr:], f, f[:, :, :mr]], dim=2)
    if r:
        f = F.pad(f, (r, r, r, r), value=float("-inf"))
    return f.contiguous()


class _MaxPlus(torch.autograd.Function):
    """out[b,c,o,y,x] = max_{m,i,j} f[b,c,o+m-mr (mod O), y+i-r, x+j-r] - kernel[c,o,m,i,j].

    Neighbourhoods are strided views of the padded input, materialised in chunks of
    about ``chunk`` elements. Only the index of the maximising offset is kept (uint8);
    the backward pass scatters each output gradient to that one source (where several
    offsets tie, the last one: a valid subgradient).
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor, kernel: torch.Tensor, chunk: int) -> torch.Tensor:
        B, C, O, H, W = f.shape
        M, S = kernel.shape[2], kernel.shape[3]
        mr, r, n = M // 2, S // 2, M * S * S
        if mr > O:
            raise ValueError("orientation neighbourhood larger than the number of orientations")
        if n > 255:
            raise ValueError("morphological neighbourhood too large (at most 255 offsets)")
        kernel = kernel.detach().contiguous()
        padded = _pad_neighbourhood(f.detach(), mr, r)
        sB, sC, sO, sH, sW = padded.stride()
        out = f.new_empty(B, C, O, H, W)
        idx = torch.empty(B, C, O, H, W, dtype=torch.uint8, device=f.device)
        need_index = any(ctx.needs_input_grad[:2])  # skip the arg-max for inference
        # chunks: several orientations of one (b, c) plane, or blocks of rows of one orientation
        o_step = max(1, min(O, chunk // (n * H * W)))
        rows = H if o_step > 1 else max(1, min(H, chunk // (n * W)))
        vals_buf = f.new_empty(o_step * n * rows * W)
        rank = torch.arange(1, n + 1, dtype=f.dtype, device=f.device).view(1, n, 1, 1)
        centre = (mr * S + r) * S + r
        for b in range(B):
            for c in range(C):
                for o0 in range(0, O, o_step):
                    o1 = min(O, o0 + o_step)
                    for y0 in range(0, H, rows):
                        y1 = min(H, y0 + rows)
                        shape = (o1 - o0, M, S, S, y1 - y0, W)
                        start = b * sB + c * sC + o0 * sO + y0 * sH
                        view = padded.as_strided(shape, (sO, sO, sH, sW, sH, sW), start)
                        kern = kernel[c, o0:o1, :, :, :, None, None]
                        vals = torch.sub(view, kern, out=vals_buf[: math.prod(shape)].view(shape))
                        vals = vals.view(o1 - o0, n, y1 - y0, W)
                        best = torch.amax(vals, dim=1, out=out[b, c, o0:o1, y0:y1])
                        if need_index:
                            # index of the maximiser: 1 where vals == best (>= the max), times 1..n, max
                            vals.ge_(best.unsqueeze(1)).mul_(rank)
                            t = torch.amax(vals, dim=1).sub_(1)
                            idx[b, c, o0:o1, y0:y1] = t.masked_fill_(t < 0, centre)  # NaN input: the centre
        ctx.save_for_backward(idx)
        ctx.geometry = (B, C, O, H, W, M, S)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (idx,) = ctx.saved_tensors
        B, C, O, H, W, M, S = ctx.geometry
        mr, r, n = M // 2, S // 2, M * S * S
        grad_out = grad_out.contiguous()
        dev = grad_out.device
        # per (o, t): where, relative to (o, y, x) in one channel's O x H x W block, offset t reads
        o = torch.arange(O, device=dev).view(O, 1)
        t = torch.arange(n, device=dev).view(1, n)
        m, i, j = t // (S * S) - mr, (t // S) % S - r, t % S - r
        shift = (((o + m) % O) - o) * (H * W) + i * W + j  # (O, n)
        pos = torch.arange(O * H * W, device=dev).view(O, H, W)
        o_n = (torch.arange(O, device=dev) * n).view(O, 1, 1)
        grad_f = torch.zeros_like(grad_out) if ctx.needs_input_grad[0] else None
        grad_k = grad_out.new_zeros(C, O * n) if ctx.needs_input_grad[1] else None
        for b in range(B):
            key = o_n + idx[b]  # (C, O, H, W): o * n + t, int64
            g = grad_out[b].view(C, -1)
            if grad_k is not None:
                grad_k.scatter_add_(1, key.view(C, -1), g)
            if grad_f is not None:
                src = pos + shift.view(-1).index_select(0, key.view(-1)).view(C, O, H, W)
                grad_f[b].view(C, -1).scatter_add_(1, src.view(C, -1), g)
        if grad_k is not None:
            grad_k = -grad_k.view(C, O, M, S, S)
        return grad_f, grad_k, None


def _default_chunk(f: torch.Tensor) -> int:
    # about 4 MB of neighbourhood values per step on CPU (stays in cache); far more on GPUs
    return 1 << 20 if f.device.type == "cpu" else 1 << 26


def max_plus(f: torch.Tensor, kernel: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Dilation: max over the neighbourhood of f - kernel. f: B x C x O x H x W, kernel: C x O x M x S x S."""
    return _MaxPlus.apply(f, kernel, chunk or _default_chunk(f))


def min_plus(f: torch.Tensor, kernel: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Erosion: min over the neighbourhood of f + kernel."""
    return -_MaxPlus.apply(-f, kernel, chunk or _default_chunk(f))


# ----------------------------------------------------------------------------- layers


def _softplus_inverse(v: float) -> float:
    return math.log(math.expm1(v))


class MorphologicalConv(nn.Module):
    """Dilation (max-plus) or erosion (min-plus) with k = rho^beta / beta, per channel.

    rho^2 = w1 c1^2 + w2 c2^2 + w3 c3^2 with the logarithmic coordinates of the offset
    relative to the target orientation (c1, c2 from the half-angle rotation divided by
    sinc(theta/2), c3 = theta) and learned metric weights (main, lateral, angular),
    positive through softplus. beta = 2 alpha / (2 alpha - 1).
    """

    def __init__(
        self,
        channels: int,
        orientations: int,
        kind: str = "dilation",
        kernel_size: int = 3,
        orientation_size: int = 3,
        alpha: float = 0.65,
        metric_init: tuple[float, float, float] = (1.0, 3.0, 2.0),
    ) -> None:
        super().__init__()
        _check_orientations(orientations)
        if kind not in ("dilation", "erosion"):
            raise ValueError("kind must be 'dilation' or 'erosion'")
        if kernel_size % 2 == 0 or orientation_size % 2 == 0:
            raise ValueError("kernel sizes must be odd")
        if not 0.5 < alpha <= 1.0:
            raise ValueError("alpha must be in (0.5, 1]")
        self.kind, self.orientations = kind, orientations
        self.kernel_size, self.orientation_size = kernel_size, orientation_size
        self.beta = 2 * alpha / (2 * alpha - 1)
        init = torch.tensor([_softplus_inverse(v) for v in metric_init])
        self.metric_raw = nn.Parameter(init.repeat(channels, 1))

    def metric(self) -> torch.Tensor:
        """(C, 3) positive metric weights (main, lateral, angular)."""
        return F.softplus(self.metric_raw)

    def kernel(self) -> torch.Tensor:
        """(C, O, M, S, S) kernel values; index [m, i, j] = orientation offset m - M//2, row i - S//2, col j - S//2."""
        O, S, M = self.orientations, self.kernel_size, self.orientation_size
        w = self.metric()
        dev, dt = w.device, w.dtype
        ax = torch.arange(S, device=dev, dtype=dt) - S // 2
        row, col = torch.meshgrid(ax, ax, indexing="ij")
        dx, dy = col, -row
        dtheta = (torch.arange(M, device=dev, dtype=dt) - M // 2) * (2 * math.pi / O)
        half = (dtheta / 2).view(M, 1, 1)
        sinc = torch.sinc(half / math.pi)
        per_k = []
        for k in range(O // 4):
            lx, ly = _rotate(dx, dy, -2 * math.pi * k / O)  # offset in the target's frame
            c1 = (lx * torch.cos(half) + ly * torch.sin(half)) / sinc
            c2 = (-lx * torch.sin(half) + ly * torch.cos(half)) / sinc
            c3 = dtheta.view(M, 1, 1).expand(M, S, S)
            rho2 = w[:, 0, None, None, None] * c1**2 + w[:, 1, None, None, None] * c2**2
            rho2 = rho2 + w[:, 2, None, None, None] * c3**2
            per_k.append(rho2.pow(self.beta / 2) / self.beta)  # (C, M, S, S)
        q = O // 4
        ks = [torch.rot90(per_k[k], j, dims=(-2, -1)) for j in range(4) for k in range(q)]
        return torch.stack(ks, dim=1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        k = self.kernel().to(f.dtype)
        return max_plus(f, k) if self.kind == "dilation" else min_plus(f, k)


class Convection(nn.Module):
    """Per-channel left-invariant shift: angular, then spatial (along, across) in the local frame.

    u(x, theta_k) = f(x - R_{theta_k} (a, b), theta_k - g) with linear interpolation along the
    periodic orientation axis and bilinear ``grid_sample`` in space (zeros outside). The output
    is a permuted view (not contiguous); the next layer copies it anyway.
    """

    def __init__(self, channels: int, orientations: int) -> None:
        super().__init__()
        _check_orientations(orientations)
        self.orientations = orientations
        self.shift = nn.Parameter(torch.zeros(channels, 2))  # pixels, (along, across)
        self.turn = nn.Parameter(torch.zeros(channels))  # orientation steps

    def velocities(self) -> torch.Tensor:
        """(C, O, 2) spatial displacement (x, y up) per channel and orientation."""
        O, q = self.orientations, self.orientations // 4
        a, b = self.shift[:, 0], self.shift[:, 1]
        base = [_rotate(a, b, 2 * math.pi * k / O) for k in range(q)]
        vs = [torch.stack(_rot90_vec(*base[k], j), dim=-1) for j in range(4) for k in range(q)]
        return torch.stack(vs, dim=1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        B, C, O, H, W = f.shape
        dev, dt = f.device, f.dtype
        # angular shift by g = n + frac steps: u_k = (1 - frac) f_{k-n} + frac f_{k-n-1} (periodic),
        # a circulant O x O matrix per channel applied in the (C, O, B*H*W) layout with one bmm
        turn = self.turn.to(dt)
        whole = torch.floor(turn.detach())
        frac = (turn - whole).view(C, 1, 1)
        k = torch.arange(O, device=dev)
        d = (k.view(1, O, 1) - k.view(1, 1, O) - whole.long().view(C, 1, 1)) % O
        A = (1 - frac) * (d == 0) + frac * (d == 1 % O)
        planes = torch.bmm(A, f.permute(1, 2, 0, 3, 4).reshape(C, O, B * H * W))
        # spatial shift along the local frame: sample at x - v_k (rows grow downwards: + v_y)
        v = self.velocities().to(dt)  # (C, O, 2)
        rows = torch.arange(H, device=dev, dtype=dt).view(1, H, 1)
        cols = torch.arange(W, device=dev, dtype=dt).view(1, 1, W)
        vx, vy = v[..., 0].reshape(C * O, 1, 1), v[..., 1].reshape(C * O, 1, 1)
        gx = 2 * (cols - vx) / max(W - 1, 1) - 1
        gy = 2 * (rows + vy) / max(H - 1, 1) - 1
        grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)  # (C*O, H, W, 2)
        moved = F.grid_sample(
            planes.view(C * O, B, H, W), grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return moved.view(C, O, B, H, W).permute(2, 0, 1, 3, 4)


class PDELayer(nn.Module):
    """Convection -> dilation -> erosion -> linear channel mix (1x1x1) -> BatchNorm."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        orientations: int = 8,
        kernel_size: int = 3,
        orientation_size: int = 3,
        alpha: float = 0.65,
    ) -> None:
        super().__init__()
        self.convection = Convection(c_in, orientations)
        self.dilation = MorphologicalConv(c_in, orientations, "dilation", kernel_size, orientation_size, alpha)
        self.erosion = MorphologicalConv(c_in, orientations, "erosion", kernel_size, orientation_size, alpha)
        self.mix = nn.Conv3d(c_in, c_out, 1, bias=False)
        self.norm = nn.BatchNorm3d(c_out)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        f = self.erosion(self.dilation(self.convection(f)))
        B, C = f.shape[:2]
        w = self.mix.weight.view(self.mix.out_channels, C)  # 1x1x1 mix as a matmul (conv3d is slow on CPU)
        return self.norm(torch.matmul(w, f.reshape(B, C, -1)).view(B, -1, *f.shape[2:]))


class LiftConv(nn.Module):
    """Image (B, C_in, H, W) -> (B, C_out, O, H, W) by convolving with O rotated copies of one learned kernel."""

    def __init__(self, c_in: int, c_out: int, orientations: int = 8, kernel_size: int = 5) -> None:
        super().__init__()
        _check_orientations(orientations)
        if kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd")
        self.orientations, self.c_out = orientations, c_out
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.register_buffer("mask", _disk(kernel_size), persistent=False)  # rotation-invariant support

    def kernels(self) -> torch.Tensor:
        """(O, C_out, C_in, s, s) rotated copies."""
        return rotated_copies(self.weight * self.mask, self.orientations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernels()
        O, s = self.orientations, k.shape[-1]
        k = k.transpose(0, 1).reshape(self.c_out * O, -1, s, s)
        y = F.conv2d(x, k, padding=s // 2)
        return y.view(x.shape[0], self.c_out, O, *y.shape[-2:])


class PDEGCNN(nn.Module):
    """Roto-translation equivariant PDE-G-CNN segmenter: logits B x n_classes x H x W, any H, W."""

    size_multiple = 1

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        channels: int = 16,
        layers: int = 6,
        orientations: int = 8,
        lift_kernel: int = 5,
        kernel_size: int = 3,
        orientation_size: int = 3,
        alpha: float = 0.65,
    ) -> None:
        super().__init__()
        if in_channels < 1 or n_classes < 1 or channels < 1 or layers < 0:
            raise ValueError("PDEGCNN needs in_channels, n_classes, channels >= 1 and layers >= 0")
        self.in_channels, self.n_classes, self.orientations = in_channels, n_classes, orientations
        self.lift = LiftConv(in_channels, channels, orientations, lift_kernel)
        self.lift_norm = nn.BatchNorm3d(channels)
        self.layers = nn.Sequential(
            *[PDELayer(channels, channels, orientations, kernel_size, orientation_size, alpha) for _ in range(layers)]
        )
        self.head = nn.Conv2d(channels, n_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Orientation features B x C x O x H x W before the projection."""
        return self.layers(self.lift_norm(self.lift(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=2))


def build_pdegcnn(
    in_channels: int,
    n_classes: int,
    width: int = 16,
    depth: int = 3,
    orientations: int = 8,
    layers: int | None = None,
    **kw,
) -> PDEGCNN:
    """PDE-G-CNN with ``width`` channels and ``layers`` PDE layers (default 2 * depth = 6).

    Other keywords: ``lift_kernel`` (5), ``kernel_size`` (spatial neighbourhood of the
    morphological convolutions, 3; 5 is closer to the reference network but about 2.5x
    slower on CPU), ``orientation_size`` (3), ``alpha`` (0.65). The parameter count does
    not depend on the kernel sizes (about 3 k weights for one input channel).
    """
    return PDEGCNN(
        in_channels,
        n_classes,
        channels=width,
        layers=2 * depth if layers is None else layers,
        orientations=orientations,
        **kw,
    )
