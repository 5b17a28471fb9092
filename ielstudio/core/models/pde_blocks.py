"""PDE-motivated residual blocks (Ruthotto & Haber, arXiv:1804.04272).

Every block is a forward time-stepping of a PDE whose right-hand side is the
*symmetric layer*

    F(Y) = -K^T sigma(N(K Y))

with K a 3x3 convolution, K^T its adjoint (``conv_transpose2d`` of the same
weight), sigma non-decreasing and N a per-pixel channel normalisation. Without
N (``F(Y) = -K^T sigma(K Y + b)``) the Jacobian ``-K^T diag(sigma') K`` is
negative semi-definite, so the parabolic block cannot amplify perturbations
for small h, and the two hyperbolic blocks are exactly reversible.

Kernel weights are kept in [-1, 1] (the step size h = 1 is absorbed into K, as
in the paper): the forward pass clamps them, and ``project_pde_weights_`` clamps
the stored values after an optimiser step (projected gradient).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_KINDS = ("parabolic", "hamiltonian", "second-order")


class ChannelRMSNorm(nn.Module):
    """Per pixel, divide by the root mean square over channels; learned per-channel scale and bias.

    ``y = x / sqrt(mean_c x^2 + eps^2) * scale + bias`` (eps = 1e-3; the square
    keeps the gradient finite where a pixel's features are all zero).
    """

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.sqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps**2)
        return x / rms * self.scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "relu":
        return F.relu
    if name == "leaky":
        return lambda t: F.leaky_relu(t, 0.1)
    raise ValueError(f"unknown activation {name!r} (use 'relu' or 'leaky')")


class SymmetricLayer(nn.Module):
    """F(Y) = -K^T sigma(N(K Y)), or -K^T sigma(K Y + b) with ``normalize=False``.

    K and K^T share one weight (C x C x k x k, clamped to [-1, 1]); K^T is
    ``conv_transpose2d`` with stride 1 and the same zero padding, the exact
    adjoint of K.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        activation: str = "relu",
        normalize: bool = True,
        weight_bound: float = 1.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd")
        self.padding = kernel_size // 2
        self.weight_bound = weight_bound
        self.activation = activation
        self._sigma = _activation(activation)
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        nn.init.normal_(self.weight, std=0.5 / (channels * kernel_size**2) ** 0.5)
        self.norm = ChannelRMSNorm(channels) if normalize else None
        self.bias = None if normalize else nn.Parameter(torch.zeros(channels))

    def kernel(self) -> torch.Tensor:
        """The weight actually used: clamped to [-bound, bound]."""
        return self.weight.clamp(-self.weight_bound, self.weight_bound)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        k = self.kernel()
        z = F.conv2d(y, k, padding=self.padding)
        if self.norm is not None:
            z = self.norm(z)
        else:
            z = z + self.bias.view(1, -1, 1, 1)
        return -F.conv_transpose2d(self._sigma(z), k, padding=self.padding)

    def step_parameters(self) -> torch.Tensor:
        """All parameters of this step in one flat vector (for the TV-in-time penalty)."""
        parts = [self.kernel().flatten()]
        parts += [p.flatten() for name, p in self.named_parameters() if name != "weight"]
        return torch.cat(parts)


def _step_layers(channels: int, steps: int, kernel_size: int, activation: str, normalize: bool) -> nn.ModuleList:
    """One symmetric layer F_j per time step j (the weights of a PDE block)."""
    if steps < 1:
        raise ValueError(f"a PDE block needs at least one step, got {steps}")
    return nn.ModuleList(SymmetricLayer(channels, kernel_size, activation, normalize) for _ in range(steps))


def _tv_over_steps(layers: nn.ModuleList) -> torch.Tensor:
    """sum_j ||theta_{j+1} - theta_j||_1 over consecutive steps."""
    vecs = [layer.step_parameters() for layer in layers]
    total = vecs[0].new_zeros(())
    for a, b in zip(vecs[:-1], vecs[1:]):
        total = total + (b - a).abs().sum()
    return total


class ParabolicBlock(nn.Module):
    """Forward Euler of the heat-like PDE: Y <- Y + h F_j(Y) = Y - h K_j^T sigma(N(K_j Y))."""

    def __init__(
        self,
        channels: int,
        steps: int = 2,
        h: float = 1.0,
        activation: str = "relu",
        normalize: bool = True,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.h = h
        self.layers = _step_layers(channels, steps, kernel_size, activation, normalize)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            y = y + self.h * layer(y)
        return y

    def tv_in_time_penalty(self) -> torch.Tensor:
        return _tv_over_steps(self.layers)


class HamiltonianBlock(nn.Module):
    """Verlet steps of a first-order hyperbolic system on channel halves (Y, Z).

    Y <- Y + h F1_j(Z);  Z <- Z - h F2_j(Y). Exactly invertible (``inverse``);
    each K acts on C/2 channels, so half the weights of a parabolic block.
    """

    def __init__(
        self,
        channels: int,
        steps: int = 2,
        h: float = 1.0,
        activation: str = "relu",
        normalize: bool = True,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"HamiltonianBlock needs an even channel count, got {channels}")
        half = channels // 2
        self.h = h
        self.f1 = _step_layers(half, steps, kernel_size, activation, normalize)
        self.f2 = _step_layers(half, steps, kernel_size, activation, normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, z = x.chunk(2, dim=1)
        for f1, f2 in zip(self.f1, self.f2):
            y = y + self.h * f1(z)
            z = z - self.h * f2(y)
        return torch.cat([y, z], dim=1)

    def inverse(self, out: torch.Tensor) -> torch.Tensor:
        """Recover the block input from its output (steps undone in reverse order)."""
        y, z = out.chunk(2, dim=1)
        for f1, f2 in zip(reversed(self.f1), reversed(self.f2)):
            z = z + self.h * f2(y)
            y = y - self.h * f1(z)
        return torch.cat([y, z], dim=1)

    def tv_in_time_penalty(self) -> torch.Tensor:
        return _tv_over_steps(self.f1) + _tv_over_steps(self.f2)


class SecondOrderBlock(nn.Module):
    """Leapfrog steps of a telegraph-like PDE: Y_{j+1} = 2 Y_j - Y_{j-1} + h^2 F_j(Y_j), Y_{-1} = Y_0."""

    def __init__(
        self,
        channels: int,
        steps: int = 2,
        h: float = 1.0,
        activation: str = "relu",
        normalize: bool = True,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.h = h
        self.layers = _step_layers(channels, steps, kernel_size, activation, normalize)

    def forward_states(self, y0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the last two states (Y_n, Y_{n-1})."""
        prev, cur = y0, y0
        for layer in self.layers:
            prev, cur = cur, 2 * cur - prev + self.h**2 * layer(cur)
        return cur, prev

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        return self.forward_states(y0)[0]

    def inverse(self, last: torch.Tensor, before_last: torch.Tensor) -> torch.Tensor:
        """Recover Y_0 from (Y_n, Y_{n-1}) by running the leapfrog backwards."""
        nxt, cur = last, before_last
        for layer in reversed(self.layers):
            nxt, cur = cur, 2 * cur - nxt + self.h**2 * layer(cur)
        return nxt

    def tv_in_time_penalty(self) -> torch.Tensor:
        return _tv_over_steps(self.layers)


BLOCKS: dict[str, type[nn.Module]] = {
    "parabolic": ParabolicBlock,
    "hamiltonian": HamiltonianBlock,
    "second-order": SecondOrderBlock,
}


class PDELevelBlock(nn.Module):
    """A U-Net level: channel change by a 1x1 or 3x3 convolution, then PDE steps at c_out channels."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kind: str = "parabolic",
        steps: int = 2,
        h: float = 1.0,
        activation: str = "relu",
        normalize: bool = True,
        change_kernel: int = 1,
    ) -> None:
        super().__init__()
        if kind not in BLOCKS:
            raise ValueError(f"unknown PDE block {kind!r}; choose one of {', '.join(BLOCK_KINDS)}")
        if change_kernel not in (1, 3):
            raise ValueError("change_kernel must be 1 or 3")
        self.change = nn.Conv2d(c_in, c_out, change_kernel, padding=change_kernel // 2)
        self.pde = BLOCKS[kind](c_out, steps=steps, h=h, activation=activation, normalize=normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pde(self.change(x))

    def tv_in_time_penalty(self) -> torch.Tensor:
        return self.pde.tv_in_time_penalty()


def make_block_factory(kind: str, **kw) -> Callable[[int, int], nn.Module]:
    """``block_factory(c_in, c_out)`` for ``UNet``: a ``PDELevelBlock`` of the given kind."""
    if kind not in BLOCKS:
        raise ValueError(f"unknown PDE block {kind!r}; choose one of {', '.join(BLOCK_KINDS)}")

    def factory(c_in: int, c_out: int) -> nn.Module:
        return PDELevelBlock(c_in, c_out, kind, **kw)

    return factory


def tv_in_time_penalty(model: nn.Module) -> torch.Tensor:
    """Total variation in time of the step weights, summed over every PDE block in ``model`` (0 if none)."""
    total = None
    for m in model.modules():
        if isinstance(m, (ParabolicBlock, HamiltonianBlock, SecondOrderBlock)):
            t = m.tv_in_time_penalty()
            total = t if total is None else total + t
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return total


@torch.no_grad()
def project_pde_weights_(model: nn.Module) -> None:
    """Clamp the stored symmetric-layer kernels to their bound (call after ``optimizer.step()``)."""
    for m in model.modules():
        if isinstance(m, SymmetricLayer):
            m.weight.clamp_(-m.weight_bound, m.weight_bound)
