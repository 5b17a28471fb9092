"""Training patches: the patch side and batch size self-configured from the data, and the
endless stream of augmented patch batches the training loop consumes (made in the
training process, or by DataLoader workers beside it).

Patches come from seeded permutations of the images, epoch after epoch; a share of them
is centred on labelled pixels (nnU-Net's forced foreground) so that small classes do not
vanish. Lazy samples (`dataset.LazySample`) are read only when drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from .dataset import LazySample, Sample, SegmentationDataset, augment_pair
from .errors import DataError

if TYPE_CHECKING:
    from .training import TrainConfig


#: Pixels per training batch when the batch size is automatic: 8 patches of 96 px.
PIXELS_PER_BATCH = 8 * 96 * 96
#: Largest automatic patch side: images up to this size are trained on whole.
MAX_AUTO_PATCH = 256
#: At most this many pixels per image and class are kept as centres of foreground patches.
MAX_CENTRES = 4096
#: Images of a lazy data set whose sizes set the automatic patch side; and of any data
#: set, the masks that tell whether a class lies on one side (`mirroring`).
LAZY_SIZE_PROBE = 64
#: A class lies on one side of the images when, in every image that holds at least
#: SIDED_MIN_PIXELS of it, at least SIDED_SHARE of its pixels are in the same half...
SIDED_SHARE = 0.9
SIDED_MIN_PIXELS = 10
#: ...and there are at least this many such images (a class drawn anywhere lands in
#: the same half of 8 images by chance once in 128 tries).
SIDED_MIN_IMAGES = 8


class Mirroring(NamedTuple):
    """The flips training may use: left-right, top-bottom (turns need both), and the
    classes that lie on one side, which rule a flip out (`mirroring`)."""

    left_right: bool
    top_bottom: bool
    sided: dict[str, list[int]]

    @property
    def flips(self) -> tuple[bool, bool]:
        return self.left_right, self.top_bottom

    @property
    def ruled_out(self) -> bool:
        """Whether the masks ruled a flip out (not the user's "off")."""
        return any(self.sided.values())

    def describe(self) -> str:
        """One line for the report and the log."""
        if self.left_right and self.top_bottom:
            return "flips and turns"
        off = "; ".join(f"no {axis} flips (class{'es' if len(c) > 1 else ''} {', '.join(map(str, c))} "
                        f"always on one side)" for axis, c in self.sided.items() if c)
        return off + ", no turns" if off else "no flips, no turns (set so)"


def _sided(samples: Sequence[Sample]) -> dict[str, list[int]]:
    """{"left-right": classes, "top-bottom": classes}: the foreground classes lying on one
    side of the masks along each axis (see SIDED_SHARE); one pass over the masks."""
    sides: dict[tuple[str, int], set[int]] = {}
    counts: dict[int, int] = {}
    for s in samples:
        try:
            mask = np.asarray(s.mask)
        except DataError:  # a lazy image that cannot be read: the scoring pass reports it
            continue
        flat = mask.ravel().astype(np.int64)
        n = int(flat.max()) + 1
        total = np.bincount(flat, minlength=n)
        halves = {"left-right": np.bincount(mask[:, :mask.shape[1] // 2].ravel().astype(np.int64), minlength=n),
                  "top-bottom": np.bincount(mask[:mask.shape[0] // 2].ravel().astype(np.int64), minlength=n)}
        for c in np.flatnonzero(total >= SIDED_MIN_PIXELS):
            if c == 0:
                continue
            counts[int(c)] = counts.get(int(c), 0) + 1
            for axis, first in halves.items():
                share = first[c] / total[c]
                side = 0 if share >= SIDED_SHARE else 1 if share <= 1 - SIDED_SHARE else -1
                sides.setdefault((axis, int(c)), set()).add(side)
    return {axis: sorted(c for (a, c), seen in sides.items() if a == axis and len(seen) == 1 and -1 not in seen
                         and counts[c] >= SIDED_MIN_IMAGES)
            for axis in ("left-right", "top-bottom")}


def mirroring(samples: Sequence[Sample], config: TrainConfig) -> Mirroring:
    """Which flips training may use (`config.mirror`: "auto", "on", "off"). Automatic, as
    nnU-Net's advice for left/right labels goes: no flip along an axis where some class
    lies on one side of every image (a left and a right hemisphere's classes look alike
    and differ only by place, which a flip teaches the network to ignore), and no turns
    then either. Judged on at most LAZY_SIZE_PROBE masks spread over the data set."""
    if config.mirror == "on":
        return Mirroring(True, True, {})
    if config.mirror == "off":
        return Mirroring(False, False, {})
    sided = _sided(spread(samples, LAZY_SIZE_PROBE))
    return Mirroring(not sided["left-right"], not sided["top-bottom"], sided)


def patch_and_batch(samples: Sequence[Sample], config: TrainConfig) -> tuple[int, int]:
    """The training patch side and batch size: the config's, or (None) self-configured from
    the data as nnU-Net does from its fingerprint: the median image side up to
    MAX_AUTO_PATCH px (rounded up to a multiple of 2**depth, so every level divides
    evenly), and as many patches as fit in PIXELS_PER_BATCH pixels, 2..8."""
    crop = config.crop
    if crop is None:
        multiple = 2 ** max(config.depth, 3)
        sized = spread(samples, LAZY_SIZE_PROBE) if isinstance(samples[0], LazySample) else samples
        side = int(np.median([max(s.mask.shape) for s in sized]))
        crop = min(MAX_AUTO_PATCH, max(multiple, -(-side // multiple) * multiple))
    batch = config.batch_size
    if batch is None:
        batch = int(min(8, max(2, round(PIXELS_PER_BATCH / crop ** 2))))
    return crop, batch


class CropStream:
    """Batches of augmented patches: seeded permutations of the images, epoch after epoch.

    A share `config.foreground_crops` of the patches is instead centred on a labelled
    pixel of a foreground class drawn uniformly from the classes present (nnU-Net
    forces a third of its patches onto foreground): a class that covers 1 % of the
    pixels then fills a good part of every few batches instead of vanishing.

    Lazy samples (`dataset.LazySample`) are read when drawn; their foreground patches
    centre on a labelled pixel of the drawn image (of one of its classes), since knowing
    every image's foreground in advance would mean reading them all. An image that cannot
    be read is left out and another is drawn."""

    def __init__(self, samples: Sequence[Sample], config: TrainConfig, seed: int, crop: int, batch: int,
                 mirror: tuple[bool, bool] = (True, True)):
        self.crop, self.batch = crop, batch
        self.ds = SegmentationDataset(samples, crop=self.crop, augment=config.augment, seed=seed,
                                      scale_rotate=config.scale_rotate, mirror=mirror)
        self.rng = np.random.default_rng(seed)
        self.foreground = float(config.foreground_crops)
        self.lazy = bool(samples) and isinstance(samples[0], LazySample)
        self.queue: list[tuple[int, int]] = []
        self.unreadable: set[int] = set()
        self.epoch = 0
        self.consumed = 0
        self.centres: dict[int, list[tuple[int, np.ndarray]]] = {}  # class -> [(image index, flat pixels)]
        if self.foreground > 0 and not self.lazy:
            for i, s in enumerate(samples):
                for c in np.unique(s.mask):
                    if c == 0:
                        continue
                    flat = np.flatnonzero(s.mask == c)
                    if len(flat) > MAX_CENTRES:
                        flat = np.sort(self.rng.choice(flat, MAX_CENTRES, replace=False))
                    self.centres.setdefault(int(c), []).append((i, flat))
        self.classes = sorted(self.centres)

    def _patch_around(self, s: Sample, flat: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = s.mask.shape
        y, x = divmod(int(flat[int(rng.integers(len(flat)))]), w)
        jitter = self.crop // 4  # the labelled pixel lies near, not exactly at, the centre
        y0 = min(max(0, y - self.crop // 2 + int(rng.integers(-jitter, jitter + 1))), max(0, h - self.crop))
        x0 = min(max(0, x - self.crop // 2 + int(rng.integers(-jitter, jitter + 1))), max(0, w - self.crop))
        image = s.image[:, y0:y0 + self.crop, x0:x0 + self.crop]
        mask = s.mask[y0:y0 + self.crop, x0:x0 + self.crop]
        image, mask = augment_pair(image, mask, rng, self.crop, self.ds.augment, self.ds.scale_rotate, self.ds.mirror)
        return torch.from_numpy(image), torch.from_numpy(mask)

    def _foreground_patch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cls = self.classes[int(rng.integers(len(self.classes)))]
        idx, flat = self.centres[cls][int(rng.integers(len(self.centres[cls])))]
        return self._patch_around(self.ds.get_sample(idx), flat, rng)

    def _lazy_patch(self, epoch: int, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.foreground > 0 and self.rng.random() < self.foreground:
            s = self.ds.get_sample(idx)
            present = [int(c) for c in np.unique(s.mask) if c != 0]
            if present:
                c = present[int(self.rng.integers(len(present)))]
                return self._patch_around(s, np.flatnonzero(s.mask == c), self.rng)
        self.ds.set_epoch(epoch)
        return self.ds[idx]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = [], []
        while len(images) < self.batch:
            if not self.queue:
                self.queue = [(self.epoch, int(i)) for i in self.rng.permutation(len(self.ds))
                              if int(i) not in self.unreadable][::-1]
                self.epoch += 1
            epoch, idx = self.queue.pop()
            try:
                if self.lazy:
                    x, y = self._lazy_patch(epoch, idx)
                elif self.classes and self.rng.random() < self.foreground:
                    x, y = self._foreground_patch(self.rng)
                else:
                    self.ds.set_epoch(epoch)
                    x, y = self.ds[idx]
            except DataError:  # a lazy image that cannot be read: the scoring pass reports it
                self.unreadable.add(idx)
                if len(self.unreadable) == len(self.ds):
                    raise
                continue
            images.append(x)
            masks.append(y)
            self.consumed += 1
        return torch.stack(images), torch.stack(masks)


class _StreamDataset(torch.utils.data.IterableDataset):
    """The patch batches of `CropStream`, made by DataLoader worker processes: worker w
    of n crops every n-th image with its own seed."""

    def __init__(self, samples: Sequence[Sample], config: TrainConfig, seed: int, crop: int, batch: int,
                 mirror: tuple[bool, bool]):
        super().__init__()
        self.samples, self.config, self.seed, self.crop, self.batch = list(samples), config, seed, crop, batch
        self.mirror = mirror

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = CropStream(self.samples[w::n], self.config, self.seed + 15485863 * (w + 1), self.crop, self.batch,
                            self.mirror)
        while True:
            yield stream.next()


def patch_batches(samples: Sequence[Sample], config: TrainConfig, seed: int, crop: int, batch: int,
                  mirror: tuple[bool, bool] = (True, True)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless training batches: made here (`config.workers == 0`, reproducible for a
    seed), or by `config.workers` DataLoader processes that read and crop beside
    training (each image in one worker; batches arrive in the order they are ready).
    `mirror`: the flips allowed (`mirroring`, judged on the whole data set)."""
    workers = min(config.workers, len(samples))
    if workers == 0:
        stream = CropStream(samples, config, seed, crop, batch, mirror)
        while True:
            yield stream.next()
    loader = torch.utils.data.DataLoader(_StreamDataset(samples, config, seed, crop, batch, mirror), batch_size=None,
                                         num_workers=workers, prefetch_factor=2)
    yield from loader


def spread(items: Sequence, k: int) -> list:
    """At most k items, spread evenly over `items`."""
    if len(items) <= k:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, k).round().astype(int)]
