"""Segmenters: a registry of architectures, all mapping B×C_in×H×W images to B×C×H×W logits.

`unet` is the default. The PDE backbones (`parabolic`, `hamiltonian`, `second-order`,
`pdegcnn`) live in their own modules and are imported only when built, so a missing
or broken backbone module gives a clear error for that architecture alone.
"""

from __future__ import annotations

import importlib
import numbers
from typing import Callable

from torch import nn

from .unet import UNet

ModelBuilder = Callable[..., nn.Module]


def _build_unet(in_channels: int, n_classes: int, **kw) -> nn.Module:
    return UNet(in_channels, n_classes, **kw)


def _lazy(module: str, function: str, *args) -> ModelBuilder:
    """A builder that imports `ielstudio.core.models.<module>` on first use."""

    def build(in_channels: int, n_classes: int, **kw) -> nn.Module:
        name = f"{__name__}.{module}"
        try:
            mod = importlib.import_module(name)
            fn = getattr(mod, function)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"needs {name}.{function}, which is not available ({e})") from e
        return fn(*args, in_channels, n_classes, **kw)

    build.__name__ = f"build_{module}_{'_'.join(map(str, args)) or function}"
    return build


ARCHITECTURES: dict[str, ModelBuilder] = {
    "unet": _build_unet,
    "parabolic": _lazy("pde_unet", "build_pde_unet", "parabolic"),
    "hamiltonian": _lazy("pde_unet", "build_pde_unet", "hamiltonian"),
    "second-order": _lazy("pde_unet", "build_pde_unet", "second-order"),
    "pdegcnn": _lazy("pdegcnn", "build_pdegcnn"),
}


#: Largest sizes `build_model` accepts (a crafted checkpoint must not allocate terabytes).
#: The defaults are width 16, depth 3; these bounds are far above any useful model for
#: 2-D mask cleaning and keep the largest model near 1.5 GB of float32 weights.
MODEL_LIMITS: dict[str, int] = {
    "in_channels": 16,       # gray, RGB, RGBA and a few stacked channels
    "n_classes": 256,        # more than any mask reader accepts (imageio.MAX_CLASSES)
    "width": 512,            # channels of the first level
    "depth": 8,              # down/up levels (U-Net) or 2*depth PDE layers (PDE-G-CNN)
    "layers": 64,            # PDE-G-CNN layers, when given
    "orientations": 64,      # PDE-G-CNN orientations
    "steps": 64,             # steps of a PDE block
    "kernel_size": 15,
    "lift_kernel": 15,
    "orientation_size": 15,
}
#: Largest channel count of the deepest U-Net level (width * 2**depth).
MAX_MODEL_CHANNELS = 4096


def check_model_size(arch: str, in_channels: int, n_classes: int, **kw) -> None:
    """Raise ValueError when a size is not a positive integer within `MODEL_LIMITS`."""
    sizes = {"in_channels": in_channels, "n_classes": n_classes, **kw}
    for key, limit in MODEL_LIMITS.items():
        if key not in sizes or sizes[key] is None:
            continue
        value = sizes[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"model {key} must be an integer, got {value!r}")
        low = 0 if key == "depth" else 1
        if not low <= value <= limit:
            raise ValueError(f"model {key} {value} is outside the supported range {low}..{limit}")
    if arch != "pdegcnn":
        width, depth = int(kw.get("width", 16)), int(kw.get("depth", 3))
        if width * 2**depth > MAX_MODEL_CHANNELS:
            raise ValueError(f"model width {width} with depth {depth} gives {width * 2**depth} channels at the "
                             f"deepest level; at most {MAX_MODEL_CHANNELS} are supported")


def build_model(arch: str, in_channels: int, n_classes: int, **kw) -> nn.Module:
    """Build architecture `arch` (a key of ARCHITECTURES); `kw` e.g. width, depth.

    Sizes are bounded by `MODEL_LIMITS` and `MAX_MODEL_CHANNELS` (ValueError beyond).
    The model gets a plain `model_spec` dict (arch, in_channels, n_classes, kw) so a
    checkpoint can rebuild it.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    check_model_size(arch, in_channels, n_classes, **kw)
    try:
        model = ARCHITECTURES[arch](in_channels, n_classes, **kw)
    except ImportError as e:
        raise ImportError(f"architecture {arch!r} {e}") from e
    model.model_spec = {"arch": arch, "in_channels": int(in_channels), "n_classes": int(n_classes), "kw": dict(kw)}
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ARCHITECTURES", "MAX_MODEL_CHANNELS", "MODEL_LIMITS", "UNet", "build_model", "check_model_size",
           "count_parameters"]
