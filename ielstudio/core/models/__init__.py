"""Segmenters: a registry of architectures, all mapping B×C_in×H×W images to B×C×H×W logits.

`unet` is the default. The PDE backbones (`parabolic`, `hamiltonian`, `second-order`,
`pdegcnn`) live in their own modules and are imported only when built, so a missing
or broken backbone module gives a clear error for that architecture alone.
"""

from __future__ import annotations

import importlib
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


def build_model(arch: str, in_channels: int, n_classes: int, **kw) -> nn.Module:
    """Build architecture `arch` (a key of ARCHITECTURES); `kw` e.g. width, depth.

    The model gets a plain `model_spec` dict (arch, in_channels, n_classes, kw) so a
    checkpoint can rebuild it.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    try:
        model = ARCHITECTURES[arch](in_channels, n_classes, **kw)
    except ImportError as e:
        raise ImportError(f"architecture {arch!r} {e}") from e
    model.model_spec = {"arch": arch, "in_channels": int(in_channels), "n_classes": int(n_classes), "kw": dict(kw)}
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ARCHITECTURES", "UNet", "build_model", "count_parameters"]
