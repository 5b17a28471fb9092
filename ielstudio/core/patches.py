"""Training patches: the patch side and batch size self-configured from the data, and the
endless stream of augmented patch batches the training loop consumes (made in the
training process, or by DataLoader workers beside it).

Patches come from seeded permutations of the images, epoch after epoch; a share of them
is centred on labelled pixels (nnU-Net's forced foreground) so that small classes do not
vanish. Lazy samples (`dataset.LazySample`) are read only when drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

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
#: Images of a lazy data set whose sizes set the automatic patch side.
LAZY_SIZE_PROBE = 64


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

    def __init__(self, samples: Sequence[Sample], config: TrainConfig, seed: int, crop: int, batch: int):
        self.crop, self.batch = crop, batch
        self.ds = SegmentationDataset(samples, crop=self.crop, augment=config.augment, seed=seed,
                                      scale_rotate=config.scale_rotate)
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
        image, mask = augment_pair(image, mask, rng, self.crop, self.ds.augment, self.ds.scale_rotate)
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

    def __init__(self, samples: Sequence[Sample], config: TrainConfig, seed: int, crop: int, batch: int):
        super().__init__()
        self.samples, self.config, self.seed, self.crop, self.batch = list(samples), config, seed, crop, batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = CropStream(self.samples[w::n], self.config, self.seed + 15485863 * (w + 1), self.crop, self.batch)
        while True:
            yield stream.next()


def patch_batches(samples: Sequence[Sample], config: TrainConfig, seed: int, crop: int,
                  batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless training batches: made here (`config.workers == 0`, reproducible for a
    seed), or by `config.workers` DataLoader processes that read and crop beside
    training (each image in one worker; batches arrive in the order they are ready)."""
    workers = min(config.workers, len(samples))
    if workers == 0:
        stream = CropStream(samples, config, seed, crop, batch)
        while True:
            yield stream.next()
    loader = torch.utils.data.DataLoader(_StreamDataset(samples, config, seed, crop, batch), batch_size=None,
                                         num_workers=workers, prefetch_factor=2)
    yield from loader


def spread(items: Sequence, k: int) -> list:
    """At most k items, spread evenly over `items`."""
    if len(items) <= k:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, k).round().astype(int)]
