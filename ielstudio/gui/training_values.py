"""The values the training form offers and reads: the devices this machine has, the
ETA as text, a list of class numbers typed by the user. No widgets."""

from __future__ import annotations

import math


def available_devices() -> list[tuple[str, str]]:
    """(value for TrainConfig.device, label) for the devices this machine has."""
    import torch

    out = [("auto", "Auto"), ("cpu", "CPU")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out.append((f"cuda:{i}" if torch.cuda.device_count() > 1 else "cuda",
                        f"CUDA: {torch.cuda.get_device_name(i)}"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append(("mps", "Apple MPS"))
    return out


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def parse_classes(text: str) -> tuple[int, ...]:
    """'1, 2' -> (1, 2); raises ValueError for anything that is not a list of class numbers >= 1."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    out = tuple(int(p) for p in parts)
    if any(c < 1 for c in out):
        raise ValueError("convex classes are foreground class numbers (1, 2, ...)")
    return out
