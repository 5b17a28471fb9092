"""Compact U-Net: the default segmenter. Any input size (pads internally), pluggable block."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

BlockFactory = Callable[[int, int], nn.Module]


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU.

    BatchNorm (not GroupNorm): in eval mode it uses running statistics, so a tile of a
    large image is normalised exactly like the whole image and tiled prediction matches.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad a B×C×H×W tensor at the bottom/right to multiples of `multiple`.

    Reflect padding where the image is large enough, replicate otherwise.
    Returns the padded tensor and the original H, W (crop with `[..., :h, :w]`).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, h, w
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), h, w


class UNet(nn.Module):
    """U-Net with `depth` down/up levels; channels width·2^level; logits B×n_classes×H×W.

    `block_factory(c_in, c_out)` builds the block at each level (default `ConvBlock`);
    PDE backbones plug their residual blocks in here. Any H, W works: the input is
    padded to a multiple of `size_multiple` (= 2**depth) and the output cropped back.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        width: int = 16,
        depth: int = 3,
        block_factory: BlockFactory | None = None,
    ):
        super().__init__()
        if in_channels < 1 or n_classes < 1 or width < 1 or depth < 0:
            raise ValueError(
                f"UNet needs in_channels, n_classes, width >= 1 and depth >= 0, got "
                f"{in_channels}, {n_classes}, {width}, {depth}"
            )
        make = block_factory or ConvBlock
        self.in_channels, self.n_classes = in_channels, n_classes
        self.width, self.depth = width, depth
        self.size_multiple = 2**depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.stem = make(in_channels, chans[0])
        self.down = nn.ModuleList(make(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.dec = nn.ModuleList(make(2 * chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = pad_to_multiple(x, self.size_multiple)
        skips = []
        x = self.stem(x)
        for block in self.down:
            skips.append(x)
            x = block(F.max_pool2d(x, 2))
        for up, block in zip(self.up, self.dec):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)[..., :h, :w]
