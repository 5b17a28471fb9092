"""Train a segmenter on (image, noisy mask) pairs with the IEL stack in the loss.

`train(samples, config)` is a generator of progress events (plain numbers and CPU
numpy arrays) that can be cancelled between steps; its last event is a `DoneEvent`
holding the trained model. The inverse evolution layers are used only in the loss:
`loss = CE(IELStack(logits), mask) [+ dice_weight * softDice(softmax(IELStack(logits)))]`.

Training budget (docs/training-budget.md): with `epochs=None` a held-out fold of
images is kept out of training and the model's agreement (Dice) with their *given*
(noisy) labels is measured every `eval_every` steps (pixels decided as cleaning
decides them: `core.decision`); training stops `patience`
evaluations after it last improved and the best weights are kept. No clean labels
are needed. `folds=k` trains k models so that every image gets an out-of-sample
proposal (`predict_dataset`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .dataset import LazySample, Sample
from .decision import decide, decision_thresholds
from .errors import DataError
from .iel import IELConfig, IELStack
from .imageio import atomic_write_bytes
from .metrics import pooled_dice
from .models import ARCHITECTURES, build_model
from .models.pde_blocks import project_pde_weights_, tv_in_time_penalty
from .patches import mirroring, patch_and_batch, patch_batches, spread

__all__ = [
    "TrainConfig", "TrainingError", "StepEvent", "EvalEvent", "SnapshotEvent", "DoneEvent",
    "CrossFitModel", "select_device", "holdout_split", "fold_split", "fold_assignment", "train", "train_fold",
    "combine_folds", "predict",
    "predict_dataset", "save_checkpoint", "load_checkpoint", "FALLBACK_STEPS", "MAX_HOLDOUT",
]

#: Steps used when the automatic budget cannot hold out an image (a single image).
#: 300 steps is where heat-IEL training on noisy nuclei labels scored best (Dice 0.879
#: vs 0.815 at 600 steps); see docs/training-budget.md.
FALLBACK_STEPS = 300
#: At most this many images are held out for the automatic budget (enough to measure
#: agreement; the rest are better used for training).
MAX_HOLDOUT = 32

#: Architectures built from PDE residual blocks (weights kept in [-1, 1], TV-in-time penalty).
PDE_STEP_ARCHS = ("parabolic", "hamiltonian", "second-order")

#: Weight of the total-variation-in-time penalty on PDE block weights (Ruthotto & Haber).
PDE_TV_WEIGHT = 1e-4
CHECKPOINT_FORMAT = "ielstudio-checkpoint"
CHECKPOINT_VERSION = 1
#: A checkpoint asking for more fold models than this is refused (each is a full network:
#: a crafted count would allocate without bound before the weights are checked).
MAX_CHECKPOINT_FOLDS = 32


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


# --------------------------------------------------------------------------- configuration


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class TrainConfig:
    """Everything that decides a training run. Defaults work on 2 CPU cores in minutes."""

    arch: str = field(default="unet", metadata=_help("segmenter: " + ", ".join(ARCHITECTURES)))
    width: int = field(default=16, metadata=_help("channels at the first level (16 CPU, 32-64 GPU)"))
    depth: int = field(default=3, metadata=_help("number of down-sampling levels"))
    iel: IELConfig = field(default_factory=IELConfig, metadata=_help("inverse evolution layers in the loss"))
    epochs: float | None = field(default=None, metadata=_help("passes over the images; None = automatic budget"))
    max_steps: int = field(default=800, metadata=_help("upper bound on optimiser steps"))
    min_steps: int = field(default=300, metadata=_help(
        "the automatic budget never stops before this (an early plateau is not convergence)"))
    batch_size: int | None = field(default=None, metadata=_help(
        "patches per step; None = auto: about 74,000 px per batch (8 of 96 px, 2 of 192 px), 2..8"))
    crop: int | None = field(default=None, metadata=_help(
        "square training patch in px (small images are padded); None = auto: the median image side, "
        "up to 256 px (whole images, as nnU-Net does)"))
    foreground_crops: float = field(default=0.33, metadata=_help(
        "share of patches centred on a labelled pixel of a randomly chosen foreground class "
        "(nnU-Net: a third), so that a class covering 1 % of the pixels is seen in every few batches"))
    lr: float = field(default=5e-3, metadata=_help("peak learning rate (AdamW); chosen on the real-data dev sets (benchmarks/README.md)"))
    weight_decay: float = field(default=1e-4, metadata=_help("AdamW weight decay"))
    schedule: str = field(default="cosine", metadata=_help("learning-rate schedule: cosine | onecycle | constant"))
    dice_weight: float = field(default=1.0, metadata=_help(
        "weight of a soft Dice term on softmax(IEL(logits)), added to the cross-entropy "
        "(nnU-Net's default loss: a small class cannot vanish from it); 0 = cross-entropy only"))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda | cuda:N | mps"))
    seed: int = field(default=0, metadata=_help("random seed (runs on CPU are reproducible)"))
    amp: bool = field(default=True, metadata=_help("mixed precision on CUDA (ignored elsewhere)"))
    init_checkpoint: str | None = field(default=None, metadata=_help("checkpoint to fine-tune from"))
    eval_every: int = field(default=25, metadata=_help("steps between agreement evaluations"))
    patience: int = field(default=4, metadata=_help("automatic budget: evaluations without improvement before stopping"))
    min_improvement: float = field(default=0.002, metadata=_help("agreement gain that counts as improvement"))
    learned_agreement: float = field(default=0.5, metadata=_help(
        "automatic budget: no early stop while the model agrees with its own training labels less than "
        "this (foreground Dice): a network that has not fitted what it was shown has not converged"))
    holdout: float = field(default=0.2, metadata=_help("automatic budget: share of images held out (1..32 images)"))
    adaptive_threshold: bool = field(default=True, metadata=_help(
        "automatic budget: decide held-out pixels at the valley of their probabilities, as cleaning does"))
    folds: int = field(default=1, metadata=_help("k > 1: k models, each image predicted out-of-sample"))
    workers: int = field(default=0, metadata=_help(
        "processes that read and crop the training images beside training (torch DataLoader workers); "
        "0 = the training process itself"))
    augment: bool = field(default=True, metadata=_help("flips, 90-degree rotations, intensity jitter"))
    mirror: str = field(default="auto", metadata=_help(
        "flips and turns when augmenting: auto (none along an axis where a class always lies on one side "
        "of the images, as left and right labels do; nnU-Net's advice) | on | off"))
    scale_rotate: float = field(default=0.0, metadata=_help(
        "share of patches also turned by any angle and scaled by 0.7-1.4 (nnU-Net's spatial augmentation)"))
    slice_context: int = field(default=0, metadata=_help(
        "volumes: neighbouring slices on each side given to the network as extra input channels "
        "(0 = each slice alone; 2-D images ignore it)"))

    def __post_init__(self) -> None:
        if isinstance(self.iel, dict):
            self.iel = IELConfig.from_dict(self.iel)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        def bad(name: str, why: str) -> None:
            raise ValueError(f"training setting {name}={getattr(self, name)!r}: {why}")

        if self.arch not in ARCHITECTURES:
            bad("arch", "choose one of " + ", ".join(ARCHITECTURES))
        if not isinstance(self.iel, IELConfig):
            bad("iel", "must be an IELConfig")
        for name in ("width", "max_steps", "eval_every", "patience", "folds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be a whole number >= 1")
        if not isinstance(self.depth, int) or not 0 <= self.depth <= 6:
            bad("depth", "must be 0..6")
        if not isinstance(self.min_steps, int) or not 0 <= self.min_steps <= self.max_steps:
            bad("min_steps", f"must be 0..max_steps ({self.max_steps})")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            bad("batch_size", "must be a whole number >= 1, or None for auto")
        if self.crop is not None and (not isinstance(self.crop, int) or self.crop < 8):
            bad("crop", "must be at least 8 px, or None for auto")
        if not 0 <= self.foreground_crops <= 1:
            bad("foreground_crops", "must be between 0 and 1")
        if not 0 <= self.scale_rotate <= 1:
            bad("scale_rotate", "must be between 0 and 1")
        if not 0 <= self.learned_agreement <= 1:
            bad("learned_agreement", "must be between 0 and 1")
        if self.epochs is not None and not self.epochs > 0:
            bad("epochs", "must be > 0, or None for the automatic budget")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if self.weight_decay < 0 or self.dice_weight < 0 or self.min_improvement < 0:
            bad("weight_decay" if self.weight_decay < 0 else "dice_weight" if self.dice_weight < 0
                else "min_improvement", "must be >= 0")
        if self.mirror not in ("auto", "on", "off"):
            bad("mirror", "choose auto, on or off")
        if self.schedule not in ("cosine", "onecycle", "constant"):
            bad("schedule", "choose cosine, onecycle or constant")
        if not 0 < self.holdout < 1:
            bad("holdout", "must be between 0 and 1")
        if not isinstance(self.workers, int) or not 0 <= self.workers <= 64:
            bad("workers", "must be a whole number 0..64")
        dev = str(self.device)
        if dev not in ("auto", "cpu", "mps") and not (dev == "cuda" or dev.startswith("cuda:")):
            bad("device", "choose auto, cpu, cuda, cuda:N or mps")

    def model_kwargs(self) -> dict:
        return {"width": self.width, "depth": self.depth}

    def to_dict(self) -> dict:
        """Plain JSON-able dict (round-trips through `from_dict`)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "iel"}
        d["iel"] = self.iel.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of `to_dict`; unknown keys raise ValueError (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**d)


# --------------------------------------------------------------------------- events


@dataclass
class StepEvent:
    """One optimiser step done. `total_steps` is the upper bound under the automatic budget."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    eta_s: float
    fold: int = 0
    n_folds: int = 1


@dataclass
class EvalEvent:
    """Agreement (foreground Dice) of the model with the given labels of the held-out images."""

    step: int
    agreement: float
    best: bool = False
    fold: int = 0
    n_folds: int = 1


@dataclass
class SnapshotEvent:
    """Current predictions for a few images: name -> probabilities (C, H, W) float32."""

    step: int
    probs: dict[str, np.ndarray]
    fold: int = 0
    n_folds: int = 1


@dataclass
class DoneEvent:
    """Training finished. `model` is in eval mode on the training device.

    `reason`: "budget" (fixed epochs done), "early-stop" (automatic budget),
    "cancelled", or "max-steps". `history` holds losses, agreements and what the
    automatic budget picked (`best_step`, `budget`, `holdout`).
    """

    model: nn.Module
    steps: int
    reason: str
    history: dict
    config: TrainConfig


Event = StepEvent | EvalEvent | SnapshotEvent | DoneEvent


# --------------------------------------------------------------------------- helpers


def select_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA, then Apple MPS, then CPU. Asking for an absent device raises ValueError."""
    name = str(name)
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but no CUDA GPU is available (use 'auto' or 'cpu')")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist")
        return dev
    if name == "mps":
        if not has_mps:
            raise ValueError("device 'mps' asked for, but Apple MPS is not available (use 'auto' or 'cpu')")
        return torch.device("mps")
    raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")


def _order(names: Sequence[str], seed: int) -> list[str]:
    """Names in a seeded random order that does not depend on the input order."""
    rng = np.random.default_rng(seed)
    ordered = sorted(names)
    return [ordered[i] for i in rng.permutation(len(ordered))]


def _units(names: Sequence[str], groups: dict[str, str] | None) -> list[str]:
    return sorted({groups[n] for n in names}) if groups else list(names)


def _members(units: Sequence[str], names: Sequence[str], groups: dict[str, str] | None) -> list[str]:
    if not groups:
        return list(units)
    chosen = set(units)
    return [n for n in names if groups[n] in chosen]


def holdout_split(names: Sequence[str], fraction: float = 0.2, seed: int = 0,
                  groups: dict[str, str] | None = None) -> list[str]:
    """Names held out by the automatic budget: round(fraction * n) images, at least 1,
    at most MAX_HOLDOUT and n - 1 (empty for fewer than 2 images). Seeded.
    `groups` (name -> group, e.g. the slices of one volume): whole groups are held out,
    counted as units, so that no neighbour of a held-out slice trains."""
    units = _units(names, groups)
    n = len(units)
    if n < 2:
        return []
    k = min(max(1, round(fraction * n)), MAX_HOLDOUT, n - 1)
    return _members(_order(units, seed)[:k], names, groups)


def fold_split(names: Sequence[str], k: int, seed: int = 0,
               groups: dict[str, str] | None = None) -> list[list[str]]:
    """Split names into k disjoint folds of near-equal size (seeded); with `groups`, each
    group's names stay in one fold."""
    units = _units(names, groups)
    if not 2 <= k <= len(units):
        what = "volumes" if groups else "images"
        raise ValueError(f"{k} folds need at least {k} {what} (have {len(units)}) and k >= 2")
    order = _order(units, seed)
    return [_members(order[i::k], names, groups) for i in range(k)]


def _n_classes(samples: Sequence[Sample]) -> int:
    if isinstance(samples[0], LazySample):  # its data set's mapping; reading every mask is what lazy avoids
        return max(2, samples[0].dataset_encoding.n_classes)
    n = max(int(s.mask.max(initial=0)) + 1 for s in samples)
    enc = [getattr(s.encoding, "n_classes", 0) for s in samples if s.encoding is not None]
    return max([n, 2, *enc])


def _in_channels(samples: Sequence[Sample]) -> int:
    chans = {int(s.in_channels) for s in samples}
    if len(chans) != 1:
        raise ValueError(f"images have different channel counts {sorted(chans)}; load them with load_samples")
    return chans.pop()


def _lr_factor(step: int, total: int, schedule: str) -> float:
    """Multiplier of the peak lr at `step` (0-based) of `total`."""
    if schedule == "constant":
        return 1.0
    warm = max(1, int(0.3 * total)) if schedule == "onecycle" else max(1, int(0.03 * total))
    if step < warm:
        return 0.1 + 0.9 * step / warm
    t = (step - warm) / max(1, total - warm)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over foreground classes, on softmax(logits)."""
    c = logits.shape[1]
    probs = logits.softmax(1)
    onehot = F.one_hot(target, c).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1.0) / (denom + 1.0)
    fg = dice[1:] if c > 1 else dice
    return 1 - fg.mean()


def _state_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _agreement(model: nn.Module, samples: Sequence[Sample], device: torch.device, n_classes: int,
               cancel: Callable[[], bool] | None, adaptive_threshold: bool = True) -> float | None:
    """Pooled foreground Dice between the predictions and the given masks (None if cancelled).
    Pixels are decided as cleaning decides them: at the valley of the held-out images'
    probabilities (`decision_thresholds`) when `adaptive_threshold`, else by the argmax. A
    model whose objects sit below 0.5 (labels that miss objects) is judged by what cleaning
    would make of it, not by an argmax that cleaning does not use."""
    probs, masks = [], []
    for s in samples:
        if cancel is not None and cancel():
            return None
        try:
            probs.append(predict(model, s.image, device))
            masks.append(s.mask)
        except DataError:  # a lazy image that cannot be read: the scoring pass reports it
            continue
    thresholds = decision_thresholds(probs) if adaptive_threshold and probs else None
    d = pooled_dice(((decide(prob, thresholds), mask) for mask, prob in zip(masks, probs)), n_classes)
    fg = d[1:] if n_classes > 1 else d
    return float(np.nan_to_num(fg, nan=1.0).mean())  # a class absent from both agrees


# --------------------------------------------------------------------------- training


def fast_layout(model: nn.Module, device: torch.device) -> torch.memory_format:
    """The memory layout `train` runs `model` in: channels-last on CPU and CUDA, where
    convolutions run faster in it (a U-Net step on 2 x 192 px on 2 CPU cores: 108 ->
    86 ms; `benchmarks/speed.py` measures it), unless the model has 5-D weights (the
    PDE-G-CNN's), which that layout cannot hold; contiguous elsewhere (MPS)."""
    if device.type in ("cpu", "cuda") and all(p.dim() != 5 for p in model.parameters()):
        return torch.channels_last
    return torch.contiguous_format


def _layout_of(model: nn.Module) -> torch.memory_format:
    """The layout `model`'s 4-D weights are in (inputs in the same layout are fastest)."""
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    if weight is not None and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _initial_model(config: TrainConfig, in_channels: int, n_classes: int, history: dict) -> nn.Module:
    if config.init_checkpoint:
        model, ck_config, _ = load_checkpoint(config.init_checkpoint)
        if isinstance(model, CrossFitModel):
            raise DataError(config.init_checkpoint, "holds several fold models; fine-tune from a single-model checkpoint")
        spec = model.model_spec
        if spec["n_classes"] != n_classes:
            raise DataError(config.init_checkpoint, f"was trained for {spec['n_classes']} classes but this dataset "
                                                    f"has {n_classes}; train from scratch or pick a matching checkpoint")
        if spec["in_channels"] != in_channels:
            raise DataError(config.init_checkpoint, f"expects {spec['in_channels']}-channel images but these have "
                                                    f"{in_channels}")
        history["init_checkpoint"] = str(config.init_checkpoint)
        history["arch_from_checkpoint"] = spec["arch"]
        return model
    return build_model(config.arch, in_channels, n_classes, **config.model_kwargs())


class _EtaClock:
    """Seconds left, honestly: the remaining steps at the median of the recent step times,
    the remaining evaluations and snapshots at their last measured cost, the folds still to
    train, and the predictions the caller makes after training (the scoring pass) at the
    per-image time the evaluations measured. Only work is timed: a run paused between two
    steps (suspended at a yield) does not make the estimate grow."""

    def __init__(self, total: int, eval_every: int, snapshot_every: int, folds_after: int, predictions_after: int):
        self.total, self.eval_every, self.snapshot_every = total, max(1, eval_every), snapshot_every
        self.folds_after, self.predictions_after = folds_after, predictions_after
        self.steps: list[float] = []
        self.eval_s = self.snapshot_s = self.per_image_s = 0.0

    def step_done(self, seconds: float) -> None:
        self.steps = (self.steps + [seconds])[-25:]

    def eval_done(self, seconds: float, images: int) -> None:
        self.eval_s = seconds
        self.per_image_s = seconds / max(1, images)

    def snapshot_done(self, seconds: float) -> None:
        self.snapshot_s = seconds

    def _run_s(self, start: int) -> float:
        step_s = float(np.median(self.steps)) if self.steps else 0.0
        # an evaluation (snapshot) follows the StepEvent of its step: at step s those of steps s..total are due
        done = max(start, 1) - 1
        evals = self.total // self.eval_every - done // self.eval_every + (self.total % self.eval_every != 0)
        snaps = (self.total // self.snapshot_every - done // self.snapshot_every) if self.snapshot_every else 0
        return (self.total - start) * step_s + max(0, evals) * self.eval_s + max(0, snaps) * self.snapshot_s

    def eta(self, step: int) -> float:
        return (self._run_s(step) + self.folds_after * self._run_s(0)
                + self.predictions_after * self.per_image_s)


def _train_one(
    samples: Sequence[Sample],
    config: TrainConfig,
    holdout: list[str] | None,
    cancel: Callable[[], bool] | None,
    snapshot_every: int,
    snapshot_names: Sequence[str] | None,
    fold: int = 0,
    n_folds: int = 1,
    predictions_after: int = 0,
    folds_after: int = 0,
) -> Iterator[Event]:
    """Train one model. `holdout`: names kept out of training and used for agreement
    (None: all images train; the budget is then fixed). `predictions_after`: images the
    caller predicts once training ends and `folds_after` the folds trained after this one
    (both part of the ETA).

    In a distributed run (`core.distributed`, under torchrun) every rank calls this: each
    draws its patches from its own share of the training images with its own seed, the
    batch is split over the ranks (the same total batch), gradients are averaged (DDP);
    rank 0 measures the agreement and its verdict is every rank's, so all stop at the
    same step with rank 0's weights."""
    world = distributed.world()
    device = distributed.training_device(select_device(config.device))
    seed = config.seed + 7919 * fold
    torch.manual_seed(seed)
    by_name = {s.name: s for s in samples}
    held = [by_name[n] for n in (holdout or [])]
    held_names = {s.name for s in held}
    train_set = [s for s in samples if s.name not in held_names]
    n_classes, in_channels = _n_classes(samples), _in_channels(samples)
    history: dict[str, Any] = {
        "loss": [], "lr": [], "eval_steps": [], "agreement": [], "holdout": [s.name for s in held],
        "n_train": len(train_set), "n_holdout": len(held), "n_classes": n_classes, "in_channels": in_channels,
        "device": str(device), "seed": seed, "fold": fold, "world_size": world.size,
    }

    crop, batch = patch_and_batch(train_set, config)
    mirror = mirroring(samples, config)  # the data set's labelling, held-out masks included
    rank_batch = -(-batch // world.size)  # the total batch, split over the ranks (rounded up)
    history.update(crop=crop, batch_size=rank_batch * world.size,
                   augmentation=mirror.describe() if config.augment else "none",
                   flips_ruled_out=config.augment and mirror.ruled_out)
    if world.distributed:
        if len(train_set) < world.size:
            raise DataError(None, f"{world.size} processes need at least {world.size} training images "
                                  f"(there are {len(train_set)}); start fewer")
        history["batch_per_rank"] = rank_batch
    auto = config.epochs is None
    if not auto:
        total = max(1, min(config.max_steps, math.ceil(config.epochs * len(train_set) / batch)))
        history["budget"] = f"fixed: {config.epochs} epochs = {total} steps"
    elif held:
        total = config.max_steps
        history["budget"] = (f"auto: held-out agreement, eval every {config.eval_every} steps, patience "
                             f"{config.patience}, steps {config.min_steps}..{config.max_steps}")
    else:
        total = min(config.max_steps, FALLBACK_STEPS)
        history["budget"] = f"fixed fallback: {total} steps (too few images to hold one out)"
    early_stop = auto and bool(held)
    # Images whose agreement is measured: held-out ones (at most MAX_HOLDOUT, e.g. a large
    # fold), else (fixed budget, nothing held out) a few training images, for display only.
    eval_set = spread(held, MAX_HOLDOUT) or train_set[:4]
    history["eval_in_sample"] = not held
    # A few training images tell whether the network has fitted what it was shown: the
    # budget does not stop on a plateau before it has (an early plateau is not convergence).
    fit_set = spread(train_set, 4) if early_stop else []
    history["train_agreement"] = []

    initial = _initial_model(config, in_channels, n_classes, history).to(device)
    layout = fast_layout(initial, device)
    net = distributed.wrap(initial.to(memory_format=layout), device)
    model = getattr(net, "module", net)  # the network itself: predictions and checkpoints
    model.train()
    iel = IELStack(config.iel).to(device)
    has_pde_steps = config.arch in PDE_STEP_ARCHS
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    use_amp = bool(config.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    shard = distributed.shard(train_set, world)
    batches = patch_batches(shard, config, seed + 104729 * world.rank, crop, rank_batch, mirror.flips)
    snap = [by_name[n] for n in (snapshot_names or [s.name for s in samples[:4]]) if n in by_name] \
        if world.is_main else []

    best, best_step, best_state, bad_evals = -1.0, 0, None, 0
    reason, step = "budget", 0
    clock = _EtaClock(total, config.eval_every, snapshot_every if snap else 0, folds_after, predictions_after)
    t0 = time.perf_counter()
    while step < total:
        started = time.perf_counter()
        if cancel is not None and cancel():
            reason = "cancelled"
            break
        lr = config.lr * _lr_factor(step, total, config.schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True, memory_format=layout), y.to(device, non_blocking=True)
        # no autocast context at all off CUDA: torch < 2.5 refuses device_type="mps" even disabled
        amp_context = (torch.autocast(device_type="cuda", dtype=torch.float16) if use_amp
                       else contextlib.nullcontext())
        with amp_context:
            logits = net(x)
        out = iel(logits.float())
        loss = F.cross_entropy(out, y)
        if config.dice_weight > 0:
            loss = loss + config.dice_weight * _soft_dice_loss(out, y)
        if has_pde_steps:
            # Ruthotto & Haber: smooth weights across time steps (0 for plain U-Nets).
            loss = loss + PDE_TV_WEIGHT * tv_in_time_penalty(model)
        value = distributed.mean(float(loss.detach()))  # the loss of the whole batch, every rank
        if not math.isfinite(value):
            raise TrainingError(
                f"training diverged at step {step + 1}: the loss is {value}. Lower the learning rate "
                f"(now {config.lr:g}) or weaken the IEL (smaller dt or fewer steps)"
            )
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if has_pde_steps:
            project_pde_weights_(model)  # keep PDE kernels in [-1, 1]
        step += 1
        history["loss"].append(value)
        history["lr"].append(lr)
        clock.step_done(time.perf_counter() - started)
        yield StepEvent(step, total, step * rank_batch // len(shard), value, lr, clock.eta(step), fold, n_folds)

        if snapshot_every and step % snapshot_every == 0 and snap:
            started = time.perf_counter()
            probs = {s.name: predict(model, s.image, device) for s in snap}
            model.train()
            clock.snapshot_done(time.perf_counter() - started)
            yield SnapshotEvent(step, probs, fold, n_folds)

        if step % config.eval_every == 0 or step == total:
            started = time.perf_counter()
            agreement = fitted = 0.0
            if world.is_main:  # the others wait for its verdict: all ranks decide alike
                agreement = _agreement(model, eval_set, device, n_classes, cancel, config.adaptive_threshold)
                fitted = None if agreement is None else (
                    _agreement(model, fit_set, device, n_classes, cancel, config.adaptive_threshold)
                    if fit_set else 1.0)
                model.train()
            agreement, fitted = distributed.from_main([math.nan if agreement is None else agreement,
                                                       math.nan if fitted is None else fitted])
            if math.isnan(agreement) or math.isnan(fitted):
                reason = "cancelled"
                break
            clock.eval_done(time.perf_counter() - started, len(eval_set) + len(fit_set))
            improved = agreement > best + config.min_improvement
            history["eval_steps"].append(step)
            history["agreement"].append(agreement)
            history["train_agreement"].append(fitted)
            if improved or best < 0:
                best, best_step, bad_evals = agreement, step, 0
                if early_stop:
                    best_state = _state_to_cpu(model)
            else:
                bad_evals += 1
            yield EvalEvent(step, agreement, improved, fold, n_folds)
            if (early_stop and bad_evals >= config.patience and config.min_steps <= step < total
                    and fitted >= config.learned_agreement):
                reason = "early-stop"
                break
    else:  # the loop ran out of steps
        capped = not auto and config.epochs * len(train_set) / batch > total
        reason = "max-steps" if early_stop or capped else "budget"
    batches.close()  # stops the DataLoader workers, if any
    if early_stop and best_state is not None:
        model.load_state_dict(best_state)
    distributed.sync_state_from_main(model)  # BatchNorm statistics differ per rank
    elapsed = time.perf_counter() - t0
    history.update(
        steps=step, reason=reason, best_step=best_step if early_stop else step,
        best_agreement=best if best >= 0 else None, step_time_s=elapsed / max(1, step), elapsed_s=elapsed,
    )
    # back to the layout a checkpoint loads in: the returned model predicts what its saved
    # checkpoint predicts, bit for bit (the window reviews with the checkpoint, `clean` with this)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    yield DoneEvent(model, step, reason, history, config)


class CrossFitModel(nn.Module):
    """k models trained on k-1 folds each; `fold_of[name]` says which fold held an image out.

    `forward` averages the logits of all fold models (for new images);
    `model_for(name)` is the model that never saw that image's label.
    """

    def __init__(self, models: Sequence[nn.Module], fold_of: dict[str, int]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.fold_of = dict(fold_of)
        spec = dict(models[0].model_spec)
        spec["folds"] = len(models)
        self.model_spec = spec
        self.size_multiple = getattr(models[0], "size_multiple", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.models]).mean(0)

    def model_for(self, name: str) -> nn.Module:
        return self.models[self.fold_of[name]] if name in self.fold_of else self


def _check_samples(samples: Sequence[Sample]) -> list[Sample]:
    samples = list(samples)
    if not samples:
        raise ValueError("no images to train on")
    names = [s.name for s in samples]
    if len(set(names)) != len(names):
        raise ValueError("sample names must be unique")
    return samples


def fold_assignment(names: Sequence[str], k: int, seed: int = 0,
                    groups: dict[str, str] | None = None) -> dict[str, int]:
    """Which of the k folds (`fold_split`) holds each name out."""
    return {n: f for f, fold in enumerate(fold_split(names, k, seed, groups)) for n in fold}


def train_fold(
    samples: Sequence[Sample],
    config: TrainConfig,
    fold: int,
    cancel: Callable[[], bool] | None = None,
    snapshot_every: int = 0,
    snapshot_names: Sequence[str] | None = None,
    predictions_after: int = 0,
    folds_after: int = 0,
    groups: dict[str, str] | None = None,
) -> Iterator[Event]:
    """Train the model of fold `fold` of `config.folds` on its own: every image outside
    that fold trains, the fold's images are held out (the budget's agreement, later their
    out-of-sample predictions). What `train` does for each fold, so k such jobs (e.g. a
    SLURM array, `ielstudio clean --fold i`) give the k models of one `folds=k` run.
    `folds_after`: folds this process trains afterwards (part of the ETA)."""
    samples = _check_samples(samples)
    if not 0 <= fold < config.folds:
        raise ValueError(f"fold {fold} does not exist: folds are 0..{config.folds - 1}")
    folds = fold_split([s.name for s in samples], config.folds, config.seed, groups)
    yield from _train_one(samples, config, folds[fold], cancel, snapshot_every, snapshot_names, fold,
                          config.folds, predictions_after, folds_after)


def combine_folds(dones: Sequence[DoneEvent], fold_of: dict[str, int], config: TrainConfig) -> DoneEvent:
    """One DoneEvent (its model a CrossFitModel) from the DoneEvents of folds 0, 1, ...
    (all k, or the ones trained before a cancel); `fold_of` from `fold_assignment`."""
    reasons = [d.reason for d in dones]
    reason = "cancelled" if "cancelled" in reasons else Counter(reasons).most_common(1)[0][0]
    histories = [d.history for d in dones]
    steps = sum(d.steps for d in dones)
    history = {"folds": histories, "fold_of": dict(fold_of), "steps": steps, "reason": reason,
               "best_step": [h["best_step"] for h in histories], "budget": histories[0]["budget"]}
    # every fold judges the flips on the whole data set's masks: the same for all
    history.update({k: histories[0][k] for k in ("augmentation", "flips_ruled_out") if k in histories[0]})
    model = CrossFitModel([d.model for d in dones], {n: f for n, f in fold_of.items() if f < len(dones)})
    model.eval()
    return DoneEvent(model, steps, reason, history, config)


def train(
    samples: Sequence[Sample],
    config: TrainConfig | None = None,
    cancel: Callable[[], bool] | None = None,
    snapshot_every: int = 0,
    snapshot_names: Sequence[str] | None = None,
    predictions_after: int = 0,
    groups: dict[str, str] | None = None,
) -> Iterator[Event]:
    """Train on `samples` (see module doc). Yields StepEvent, EvalEvent, SnapshotEvent and,
    last, one DoneEvent. With `config.folds > 1` the DoneEvent's model is a CrossFitModel
    of the `train_fold` models. `predictions_after`: images the caller predicts after
    training (the StepEvents' ETA includes them; `review.scoring_predictions` counts a
    scoring pass's). `groups` (name -> group): images of one group (the slices of a
    volume) are held out together, never split between training and hold-out.

    Raises TrainingError if the loss becomes NaN, DataError for a bad init checkpoint.
    """
    config = config or TrainConfig()
    samples = _check_samples(samples)
    names = [s.name for s in samples]
    if config.folds == 1:
        holdout = holdout_split(names, config.holdout, config.seed, groups) if config.epochs is None else None
        yield from _train_one(samples, config, holdout, cancel, snapshot_every, snapshot_names,
                              predictions_after=predictions_after)
        return

    fold_of = fold_assignment(names, config.folds, config.seed, groups)
    dones: list[DoneEvent] = []
    for f in range(config.folds):
        for ev in train_fold(samples, config, f, cancel, snapshot_every, snapshot_names, predictions_after,
                             folds_after=config.folds - 1 - f, groups=groups):
            if isinstance(ev, DoneEvent):
                dones.append(ev)
            else:
                yield ev
        if dones[-1].reason == "cancelled":
            break
    yield combine_folds(dones, fold_of, config)


# --------------------------------------------------------------------------- prediction


def _starts(n: int, tile: int, stride: int) -> list[int]:
    if n <= tile:
        return [0]
    s = list(range(0, n - tile, stride))
    return s + [n - tile]


def _ramp(n: int, overlap: int) -> np.ndarray:
    """1-D blending weight: rises linearly over `overlap` px at both ends, never zero."""
    i = np.arange(n, dtype=np.float32)
    return np.minimum(np.minimum(i + 1, n - i), overlap + 1) / (overlap + 1)


@torch.no_grad()
def predict(model: nn.Module, image: np.ndarray | torch.Tensor, device: torch.device | str | None = None,
            tile: int = 256, overlap: int = 32, batch_size: int = 4) -> np.ndarray:
    """Class probabilities (C, H, W) float32 for one image (C_in, H, W), without the IEL.

    Images up to `tile` px on both sides go through whole; larger ones as overlapping
    tiles blended with linear ramps. Eval mode, no gradients; the model's train/eval
    mode is restored afterwards. A model on another device than `device` is moved there.
    """
    param = next(model.parameters(), None)
    if device is None:
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if param is not None and param.device.type != device.type:
        model.to(device)  # e.g. a checkpoint loaded on the CPU, predicted on the GPU
    x = torch.as_tensor(np.asarray(image, dtype=np.float32) if not torch.is_tensor(image) else image).float()
    if x.ndim == 2:
        x = x[None]
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than tile ({tile})")
    was_training = model.training
    model.eval()
    try:
        _, h, w = x.shape
        layout = _layout_of(model)
        if h <= tile and w <= tile:
            logits = model(x[None].to(device, memory_format=layout))[0]
            return logits.float().softmax(0).cpu().numpy()
        th, tw = min(tile, h), min(tile, w)
        stride = tile - overlap
        boxes = [(y, xx) for y in _starts(h, th, stride) for xx in _starts(w, tw, stride)]
        weight = torch.from_numpy(np.outer(_ramp(th, overlap), _ramp(tw, overlap)))
        acc = None
        norm = torch.zeros(h, w)
        for i in range(0, len(boxes), batch_size):
            chunk = boxes[i:i + batch_size]
            batch = torch.stack([x[:, y:y + th, xx:xx + tw] for y, xx in chunk]).to(device, memory_format=layout)
            probs = model(batch).float().softmax(1).cpu()
            if acc is None:
                acc = torch.zeros(probs.shape[1], h, w)
            for p, (y, xx) in zip(probs, chunk):
                acc[:, y:y + th, xx:xx + tw] += p * weight
                norm[y:y + th, xx:xx + tw] += weight
        return (acc / norm).numpy().astype(np.float32)
    finally:
        model.train(was_training)


def predict_dataset(model: nn.Module, samples: Sequence[Sample], device: torch.device | str | None = None,
                    out_of_sample: bool = True, tile: int = 256, overlap: int = 32,
                    cancel: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
    """Probabilities (C, H, W) per sample name.

    With a CrossFitModel and `out_of_sample=True` each image is predicted by the fold
    model that never saw its label; otherwise by `model` as a whole (in-sample for
    images it trained on). Stops early (returning what is done) when `cancel()` is true.
    """
    out: dict[str, np.ndarray] = {}
    for s in samples:
        if cancel is not None and cancel():
            break
        m = model.model_for(s.name) if out_of_sample and isinstance(model, CrossFitModel) else model
        out[s.name] = predict(m, s.image, device, tile, overlap)
    return out


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, model: nn.Module, config: TrainConfig, meta: dict | None = None) -> None:
    """Write weights + JSON-able config/meta atomically; loadable with torch.load(weights_only=True)."""
    spec = getattr(model, "model_spec", None)
    if spec is None:
        raise ValueError("model has no model_spec; build it with models.build_model")
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except TypeError as e:
        raise ValueError(f"checkpoint meta must be JSON-serialisable: {e}") from None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": json.loads(json.dumps(spec)),
        "fold_of": dict(getattr(model, "fold_of", {})),
        "config": config.to_dict(),
        "meta": meta,
        "state_dict": _state_to_cpu(model),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild (model on CPU in eval mode, TrainConfig, meta) from `save_checkpoint`'s file.

    Never unpickles arbitrary objects. Raises DataError for a missing, corrupt,
    foreign or mismatched file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(path, "not an IEL Studio checkpoint: it holds Python objects other than weights, "
                              "or is damaged (refused to unpickle them)") from None
    except Exception as e:  # torch raises many types for damaged files (RuntimeError, IndexError, ...)
        raise DataError(path, f"unreadable or corrupt checkpoint ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(path, "not an IEL Studio checkpoint (no IEL Studio header)")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise DataError(path, f"checkpoint version {payload.get('version')} is newer than this IEL Studio reads "
                              f"({CHECKPOINT_VERSION}); update IEL Studio")
    try:
        spec = payload["model"]
        config = TrainConfig.from_dict(payload["config"])
        meta = dict(payload.get("meta", {}))
        arch, kw = spec["arch"], dict(spec.get("kw", {}))
        n_folds = int(spec.get("folds", 1))
        if not 1 <= n_folds <= MAX_CHECKPOINT_FOLDS:
            raise ValueError(f"{n_folds} fold models (at most {MAX_CHECKPOINT_FOLDS})")

        def make() -> nn.Module:
            return build_model(arch, int(spec["in_channels"]), int(spec["n_classes"]), **kw)

        model = make() if n_folds == 1 else CrossFitModel([make() for _ in range(n_folds)], payload["fold_of"])
    except (KeyError, TypeError, ValueError, ImportError) as e:
        raise DataError(path, f"checkpoint describes a model this version cannot build ({e})") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError) as e:
        first = str(e).splitlines()[0][:160]
        raise DataError(path, f"weights do not fit architecture {arch!r} with {kw} ({first})") from None
    model.eval()
    return model, config, meta
