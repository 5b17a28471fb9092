"""U-Nets whose level blocks are PDE residual blocks (parabolic, Hamiltonian, second-order)."""

from __future__ import annotations

from torch import nn

from .pde_blocks import BLOCK_KINDS, make_block_factory
from .unet import UNet


def build_pde_unet(
    block: str,
    in_channels: int,
    n_classes: int,
    width: int = 16,
    depth: int = 3,
    **kw,
) -> nn.Module:
    """``UNet`` with ``PDELevelBlock(kind=block)`` at every level.

    ``block``: "parabolic", "hamiltonian" or "second-order". Extra keywords go to the
    level block: ``steps`` (PDE steps per level, 2), ``h`` (step size, 1.0),
    ``activation`` ("relu" | "leaky"), ``normalize`` (True), ``change_kernel`` (1 or 3; default 1).
    """
    if block not in BLOCK_KINDS:
        raise ValueError(f"unknown PDE block {block!r}; choose one of {', '.join(BLOCK_KINDS)}")
    if block == "hamiltonian" and width % 2:
        raise ValueError(f"the hamiltonian block splits channels in halves: width must be even, got {width}")
    return UNet(in_channels, n_classes, width=width, depth=depth, block_factory=make_block_factory(block, **kw))
