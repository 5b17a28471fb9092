"""Find image/mask pairs, validate them, load them (eagerly or lazily), augment crops.

- :func:`scan_pairs` pairs files by name only (no pixels read; 100k files in a second).
- :func:`load_sample` reads and validates one pair; :func:`load_samples` reads a whole
  scan with one class mapping for the dataset, skipping (and reporting) bad files.
- :class:`SegmentationDataset` is the torch ``Dataset`` used for training: random
  crops, flips, 90-degree rotations and mild intensity jitter, reproducible per
  ``(seed, epoch, index)``.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache, reduce
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError
from .imageio import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    MAX_CLASSES,
    MaskEncoding,
    as_color,
    file_encoding,
    is_binary_mask_encoding,
    normalize_intensity,
    read_image,
    read_mask,
    remap_classes,
)

#: Words that mark a mask file name, after a separator (``img01_mask.png``,
#: ``img01-GT.tif``, ``img01.labels.png``) or before one (``mask_img01.png``).
MASK_WORDS = (
    "mask", "masks", "label", "labels", "labelled", "labeled", "seg", "segmentation",
    "gt", "groundtruth", "ground_truth", "annotation", "annotations", "anno", "target", "manual",
)
_WORDS = "|".join(sorted((re.escape(w) for w in MASK_WORDS), key=len, reverse=True))
_SUFFIX_RE = re.compile(rf"^(?P<key>.+?)[_\-. ](?:{_WORDS})$", re.IGNORECASE)
_PREFIX_RE = re.compile(rf"^(?:{_WORDS})[_\-. ](?P<key>.+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Pair:
    """An image and its mask, matched by name."""

    name: str
    image_path: Path
    mask_path: Path


@dataclass(frozen=True)
class Skipped:
    """A file left out, with the reason shown to the user."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class Scan:
    """Result of :func:`scan_pairs`."""

    pairs: list[Pair]
    skipped: list[Skipped]
    images_dir: Path | None = None
    masks_dir: Path | None = None


def mask_key(stem: str) -> list[str]:
    """Lower-case names a mask stem may correspond to: itself, minus suffix word, minus prefix word."""
    keys = [stem.lower()]
    for rx in (_SUFFIX_RE, _PREFIX_RE):
        m = rx.match(stem)
        if m:
            keys.append(m.group("key").lower())
    return keys


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _split_name(name: str) -> tuple[str, str]:
    """(stem, lower-case suffix) of a bare file name; ``.nii.gz`` is one suffix."""
    low = name.lower()
    if low.endswith(".nii.gz"):
        return name[:-7], ".nii.gz"
    dot = name.rfind(".")
    return (name[:dot], low[dot:]) if dot > 0 else (name, "")


def _list_files(folder: Path, extensions: Sequence[str], what: str) -> tuple[list[tuple[str, str, str]], list[Skipped]]:
    """(name, stem, suffix) of the files in ``folder`` with one of ``extensions``, naturally sorted,
    and the entries with such a name that are not usable files (folders, broken links,
    link loops, devices), each with the reason."""
    if not folder.exists():
        raise DataError(folder, f"{what} folder does not exist")
    if not folder.is_dir():
        raise DataError(folder, f"{what} folder is not a folder")
    exts = set(extensions)
    out = []
    skipped: list[Skipped] = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                name = e.name
                if name.startswith("."):
                    continue
                stem, suffix = _split_name(name)
                if suffix not in exts:
                    continue
                problem = _not_a_file(e)
                if problem:
                    skipped.append(Skipped(folder / name, problem))
                    continue
                out.append((name, stem, suffix))
    except OSError as e:
        raise DataError(folder, f"cannot list {what} folder ({e.strerror or e})") from None
    out.sort(key=lambda t: _natural_key(t[0]))
    skipped.sort(key=lambda s: _natural_key(s.path.name))
    return out, skipped


def _not_a_file(entry: os.DirEntry) -> str | None:
    """Why a directory entry named like an image is not one (None: a regular file, or a link to one)."""
    try:
        st = entry.stat()  # follows links
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself); skipped"
        if entry.is_symlink():
            try:
                target = os.readlink(entry.path)
            except OSError:
                target = "?"
            return f"broken link (its target {target} does not exist); skipped"
        return f"cannot read file information ({e.strerror or e}); skipped"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file; skipped"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (device, pipe or socket); skipped"
    return None


def scan_pairs(images_dir: str | Path, masks_dir: str | Path) -> Scan:
    """Pair images with masks by file name, reading no pixels.

    A mask matches an image when its stem equals the image's stem (case-insensitive),
    optionally with a mask word as suffix or prefix (``_mask, _masks, _label(s),
    _seg, _gt, _annotation, -mask, .labels, mask_`` ...). ``images_dir`` and
    ``masks_dir`` may be the same folder; then files whose names carry a mask word
    and match an image are the masks. Unpaired files, and entries named like images
    that are no usable file (folders, broken links, link loops), are reported in ``skipped``.
    Raises DataError if a folder is missing or holds no image/mask files.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    img_files, skipped = _list_files(images_dir, IMAGE_EXTENSIONS, "images")
    same = images_dir.resolve() == masks_dir.resolve()
    if same:
        mask_files = img_files
    else:
        mask_files, bad_masks = _list_files(masks_dir, MASK_EXTENSIONS, "masks")
        skipped += bad_masks
    if not img_files:
        raise DataError(images_dir, "no image files (" + ", ".join(IMAGE_EXTENSIONS) + ") in this folder")
    if not same and not mask_files:
        raise DataError(masks_dir, "no mask files (" + ", ".join(MASK_EXTENSIONS) + ") in this folder")
    if same:
        stems = {stem.lower() for _, stem, _ in img_files}
        mask_files = [f for f in img_files
                      if f[2] in MASK_EXTENSIONS and any(k in stems for k in mask_key(f[1])[1:])]
        mask_names = {f[0] for f in mask_files}
        img_files = [f for f in img_files if f[0] not in mask_names]

    images: dict[str, tuple[str, str]] = {}  # key -> (name, stem)
    for name, stem, _ in img_files:
        key = stem.lower()
        if key in images:
            skipped.append(Skipped(images_dir / name, f"another image has the same name ({images[key][0]}); skipped"))
        else:
            images[key] = (name, stem)

    matched: dict[str, str] = {}
    for name, stem, _ in mask_files:
        low = stem.lower()
        key = low if low in images else next((k for k in mask_key(stem)[1:] if k in images), None)
        if key is None:
            skipped.append(Skipped(masks_dir / name, "no image with a matching name"))
        elif key in matched:
            skipped.append(Skipped(masks_dir / name, f"image {images[key][0]} already has a mask ({matched[key]})"))
        else:
            matched[key] = name

    pairs = []
    for key, (name, stem) in images.items():  # insertion order is natural order
        if key in matched:
            pairs.append(Pair(stem, images_dir / name, masks_dir / matched[key]))
        else:
            skipped.append(Skipped(images_dir / name,
                                   f"no mask found (looked for {stem}.png, {stem}_mask.png, ... in {masks_dir})"))
    return Scan(pairs, skipped, images_dir, masks_dir)


# --------------------------------------------------------------------------- loading


@dataclass
class Sample:
    """One loaded pair: normalised image ``(C_in, H, W)`` float32 and class mask ``(H, W)`` int64.

    ``encoding`` is the dataset's class mapping with this mask file's format, so
    ``write_mask(out_dir / mask_path.name, mask, encoding)`` reproduces the convention.
    ``warnings``: what was repaired while reading (e.g. NaN pixels set to 0), naming the file.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    encoding: MaskEncoding
    image_path: Path | None = None
    mask_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def in_channels(self) -> int:
        return int(self.image.shape[0])


def image_to_chw(img: np.ndarray) -> np.ndarray:
    """Normalised ``(H, W[, 3])`` -> ``(C, H, W)``; RGB with three equal channels becomes gray."""
    if img.ndim == 2:
        return img[None]
    if np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]):
        return img[None, :, :, 0]
    return np.ascontiguousarray(np.moveaxis(img, -1, 0))


def _load_image(path: Path, warnings: list[str] | None = None) -> np.ndarray:
    return image_to_chw(normalize_intensity(read_image(path, warnings)))


def _check_sizes(pair: Pair, image: np.ndarray, mask: np.ndarray) -> None:
    if image.shape[1:] != mask.shape:
        (h, w), (mh, mw) = image.shape[1:], mask.shape
        raise DataError(pair.mask_path, f"mask is {mw}x{mh} px but image {pair.image_path.name} is {w}x{h} px")


def load_sample(pair: Pair, encoding: MaskEncoding | None = None) -> Sample:
    """Read and validate one pair. ``encoding``: the dataset's class mapping (else the file's own).

    Raises DataError for unreadable files, bad mask values or a size mismatch.
    """
    warnings: list[str] = []
    image = _load_image(pair.image_path, warnings)
    mask, enc = read_mask(pair.mask_path, encoding)
    _check_sizes(pair, image, mask)
    return Sample(pair.name, image, mask, enc, pair.image_path, pair.mask_path, warnings)


@dataclass
class LoadedDataset:
    """Result of :func:`load_samples`.

    ``encoding``: the dataset's class mapping (``n_classes`` classes; file details of
    the most common mask format). ``in_channels``: 1 or 3 (gray images are repeated
    to 3 channels when the dataset also holds colour images). Unpacks as
    ``samples, skipped = load_samples(scan)``. ``warnings``: one line per repair made
    while reading a file that was kept (``"<path>: <what>"``, e.g. NaN pixels set to 0).
    """

    samples: list[Sample]
    skipped: list[Skipped]
    n_classes: int
    encoding: MaskEncoding
    in_channels: int
    warnings: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator:
        return iter((self.samples, self.skipped))


def unify_encodings(items: Sequence[tuple[Path, np.ndarray, MaskEncoding]]) -> tuple[MaskEncoding, list[Skipped]]:
    """One class mapping for masks read on their own (``(path, classes, encoding)`` each).

    Binary masks (0/1, 0/255, 0/65535 or 0/dtype maximum; see
    ``imageio.is_binary_mask_encoding``): if every gray mask is one, the dataset is
    binary (background/foreground) whatever value each file stores, and each file
    keeps its values when written. (0/3 is not binary: it is class 3.)
    Other gray masks: classes are stored at multiples of the largest common step
    (0..C-1 indices, 0/85/170/255 levels); n_classes = max value / step + 1.
    Colour masks: one palette, black first, other colours sorted. If files disagree
    (gray vs colour, steps that clash) the majority convention wins and the other
    files are returned as skipped, and so is a file that would need more than
    ``MAX_CLASSES`` classes. Files whose mask is all background fit any mapping.
    """
    skipped: list[Skipped] = []
    informative = [(p, c, e) for p, c, e in items if c.size and c.max() > 0]
    fmt_source = Counter((e.dtype, e.suffix, e.channels) for _, _, e in items).most_common(1)
    dtype, suffix, channels = fmt_source[0][0] if fmt_source else ("uint8", ".png", 1)
    channels = channels if channels in (1, 3, 4) else 1
    if not informative:
        return MaskEncoding("binary", (0, 255 if dtype == "uint8" else 1), (), dtype, suffix, channels), skipped

    n_color = sum(e.kind == "color" for _, _, e in informative)
    if n_color * 2 > len(informative):
        colours: set[tuple[int, int, int]] = set()
        for path, classes, enc in informative:
            if enc.kind != "color" and (enc.channels < 3 or enc.alpha == "label"):
                skipped.append(Skipped(path, "mask is gray but most masks in this dataset are colour-coded"))
                continue
            enc = as_color(enc)
            present = np.unique(classes)
            colours.update(enc.colors[c] for c in present)
        palette = [(0, 0, 0)] + sorted(c for c in colours if c != (0, 0, 0))
        if len(palette) > MAX_CLASSES:
            raise DataError(None, f"the masks use {len(palette)} colours together; at most {MAX_CLASSES} classes are supported")
        if len(palette) < 2:
            palette.append((255, 255, 255))
        return MaskEncoding("color", (), tuple(palette), "uint8", suffix, 3), skipped

    gray = []
    for path, classes, enc in informative:
        if enc.kind == "color":
            skipped.append(Skipped(path, "mask is colour-coded but most masks in this dataset are gray class values"))
        else:
            gray.append((path, classes, enc))

    if all(is_binary_mask_encoding(e) for _, _, e in gray):
        # 0/1, 0/255 and 0/65535 all mean background/foreground: one binary dataset
        values, vdtype = Counter((e.values, e.dtype) for _, _, e in gray).most_common(1)[0][0]
        return MaskEncoding("binary", values, (), vdtype, suffix, channels), skipped

    def max_value(item):
        _, classes, enc = item
        return int(classes.max()) * enc.step

    step = reduce(math.gcd, (e.step for _, _, e in gray))
    top = max(max_value(it) for it in gray)
    kept = gray
    if top // step + 1 > MAX_CLASSES:
        # Conventions clash (e.g. 0/1/2 and 0/255): keep the step that keeps the most masks
        # (ties: the step more masks use, then the smaller one).
        counts = Counter(e.step for _, _, e in gray)

        def keeps(c: int) -> int:
            return sum(e.step % c == 0 and max_value(it) // c + 1 <= MAX_CLASSES for it in gray for e in [it[2]])

        step = max(counts, key=lambda c: (keeps(c), counts[c], -c))
        kept = []
        for item in gray:
            path, _, enc = item
            if enc.step % step == 0:
                kept.append(item)
            else:
                skipped.append(Skipped(path, f"mask stores classes as {', '.join(map(str, enc.values))} "
                                             f"but most masks in this dataset use steps of {step}"))
    within = []
    for item in kept:  # the class limit: one file must not turn the dataset into thousands of classes
        n = max_value(item) // step + 1
        if n > MAX_CLASSES:
            skipped.append(Skipped(item[0], f"mask values up to {max_value(item)} with steps of {step} would make "
                                            f"{n} classes; at most {MAX_CLASSES} classes are supported "
                                            "(is it a 16-bit or instance-label mask?)"))
        else:
            within.append(item)
    if not within:
        return MaskEncoding("binary", (0, 255 if dtype == "uint8" else 1), (), dtype, suffix, channels), skipped
    top = max(max_value(it) for it in within)
    n_classes = max(2, top // step + 1)
    dtype = Counter(e.dtype for _, _, e in within).most_common(1)[0][0]
    enc = MaskEncoding.gray(n_classes, step, dtype, suffix, channels)
    return enc.with_file_format(enc), skipped


def settle_encoding(scan: Scan, progress: Callable[[int, int], None] | None = None
                    ) -> tuple[MaskEncoding, list[Skipped]]:
    """The data set's class mapping, from its masks alone (what opening a data set settles,
    before any training): the mapping `load_samples` would find, and the mask files that
    cannot be read or do not fit it. ``progress(done, total)`` after each mask; it may
    raise to cancel."""
    items, skipped = [], []
    total = len(scan.pairs)
    for i, pair in enumerate(scan.pairs):
        try:
            classes, enc = read_mask(pair.mask_path)
            items.append((pair.mask_path, classes, enc))
        except DataError as e:
            skipped.append(Skipped(e.path or pair.mask_path, e.problem))
        if progress is not None:
            progress(i + 1, total)
    encoding, rejected = unify_encodings(items)
    return encoding, skipped + rejected


def load_samples(scan: Scan, progress: Callable[[int, int], None] | None = None,
                 encoding: MaskEncoding | None = None) -> LoadedDataset:
    """Load every pair of a scan with one class mapping; bad files go to ``skipped``.

    ``progress(done, total)`` is called after each file. Images of different sizes
    are fine; gray images are repeated to 3 channels if any image is colour.
    ``encoding``: the class mapping settled when the data set was opened
    (`settle_encoding`); None finds it here, from the same masks.
    """
    skipped = list(scan.skipped)
    raw: list[tuple[Pair, np.ndarray, np.ndarray, MaskEncoding]] = []
    file_warnings: dict[Path, list[str]] = {}
    total = len(scan.pairs)
    for i, pair in enumerate(scan.pairs):
        try:
            notes: list[str] = []
            image = _load_image(pair.image_path, notes)
            classes, enc = read_mask(pair.mask_path)
            _check_sizes(pair, image, classes)
            raw.append((pair, image, classes, enc))
            if notes:
                file_warnings[pair.mask_path] = notes
        except DataError as e:
            skipped.append(Skipped(e.path or pair.mask_path, e.problem))
        if progress is not None:
            progress(i + 1, total)

    if encoding is None:
        encoding, rejected = unify_encodings([(p.mask_path, c, e) for p, _, c, e in raw])
    else:
        rejected = []  # a mask that does not fit the settled mapping is refused by remap_classes
    skipped.extend(rejected)
    rejected_paths = {s.path for s in rejected}
    in_channels = 3 if any(img.shape[0] == 3 for _, img, _, _ in raw) else 1
    samples = []
    for pair, image, classes, enc in raw:
        if pair.mask_path in rejected_paths:
            continue
        try:
            mask = remap_classes(pair.mask_path, classes, enc, encoding)
        except DataError as e:
            skipped.append(Skipped(pair.mask_path, e.problem))
            continue
        if image.shape[0] != in_channels:
            image = np.repeat(image, in_channels, axis=0)
        notes = file_warnings.get(pair.mask_path, [])
        samples.append(Sample(pair.name, image, mask, file_encoding(encoding, enc, classes),
                              pair.image_path, pair.mask_path, notes))
    warnings = [w for s in samples for w in s.warnings]
    return LoadedDataset(samples, skipped, encoding.n_classes, encoding, in_channels, warnings)


#: Pairs whose pixels a lazy data set keeps in memory at once (the most recently read).
LAZY_CACHE = 16


@lru_cache(maxsize=LAZY_CACHE)
def _read_lazily(pair: Pair, encoding: MaskEncoding, in_channels: int) -> Sample:
    s = load_sample(pair, encoding)
    if s.image.shape[0] < in_channels:
        s = Sample(s.name, np.repeat(s.image, in_channels, axis=0), s.mask, s.encoding, s.image_path, s.mask_path,
                   s.warnings)
    return s


class LazySample:
    """A pair that is read from disk when its pixels are asked for, like a `Sample`
    (`name`, `image`, `mask`, `encoding`, paths). Only the LAZY_CACHE most recently read
    pairs stay in memory, so a data set of any size trains with bounded memory. A file
    that turns out to be unreadable raises DataError when it is first read; the
    training stream and the scoring pass skip it and say so."""

    def __init__(self, pair: Pair, encoding: MaskEncoding, in_channels: int):
        self.pair, self.dataset_encoding, self.channels = pair, encoding, in_channels
        self.name, self.image_path, self.mask_path = pair.name, pair.image_path, pair.mask_path
        self.warnings: list[str] = []

    def load(self) -> Sample:
        return _read_lazily(self.pair, self.dataset_encoding, self.channels)

    @property
    def image(self) -> np.ndarray:
        return self.load().image

    @property
    def mask(self) -> np.ndarray:
        return self.load().mask

    @property
    def encoding(self) -> MaskEncoding:
        return self.load().encoding

    @property
    def in_channels(self) -> int:
        return self.channels


#: Masks read to settle a lazy data set's class mapping and channel count.
LAZY_PROBE = 256


def load_samples_lazily(scan: Scan, probe: int | None = None) -> LoadedDataset:
    """The pairs of a scan as `LazySample`s, without reading their pixels: the class
    mapping and the channel count come from `probe` pairs spread over the scan (read
    once; default LAZY_PROBE). Training starts at once and never holds every image; a mask whose values do
    not fit the mapping is found (and skipped) when it is read."""
    pairs = scan.pairs
    probe = LAZY_PROBE if probe is None else probe
    idx = np.unique(np.linspace(0, len(pairs) - 1, min(probe, len(pairs))).round().astype(int)) if pairs else []
    probed = load_samples(Scan([pairs[i] for i in idx], [], scan.images_dir, scan.masks_dir))
    bad = {s.path for s in probed.skipped}
    samples = [LazySample(p, probed.encoding, probed.in_channels) for p in pairs
               if p.mask_path not in bad and p.image_path not in bad]
    return LoadedDataset(samples, list(scan.skipped) + probed.skipped, probed.n_classes, probed.encoding,
                         probed.in_channels, probed.warnings)


# --------------------------------------------------------------------------- training dataset


def _pad_reflect(arr: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Mirror-pad the last two axes (repeats the mirror for pads larger than the array)."""
    width = [(0, 0)] * (arr.ndim - 2) + [(top, bottom), (left, right)]
    return np.pad(arr, width, mode="symmetric")


class SegmentationDataset(Dataset):
    """Random square crops of samples for training, as ``(image (C,crop,crop) float32, mask (crop,crop) int64)``.

    Images smaller than ``crop`` are mirror-padded, and so are their masks: the
    padded image shows mirrored structures, whose true labels are the mirrored
    labels, so no ignore index is needed. ``crop=None`` returns whole images.

    ``augment=True`` adds random flips, 90-degree rotations and mild intensity
    jitter (gain 0.9-1.1, bias +-0.05, gamma 0.85-1.15); crops are random either way.
    ``mirror`` (left-right, top-bottom): the flips allowed, turns only with both.
    Randomness comes from ``numpy.random.default_rng((seed, epoch, index))``: the same
    item is identical in every worker process; call :meth:`set_epoch` each epoch.

    ``samples`` may hold :class:`Pair` objects (lazy: each is read when asked, with
    ``encoding`` as the class mapping and gray repeated to ``in_channels``).
    """

    def __init__(self, samples: Sequence[Sample | Pair], crop: int | None = 128, augment: bool = True,
                 seed: int = 0, encoding: MaskEncoding | None = None, in_channels: int | None = None,
                 scale_rotate: float = 0.0, mirror: tuple[bool, bool] = (True, True)):
        self.samples = list(samples)
        self.crop = crop
        self.augment = augment
        self.scale_rotate = scale_rotate
        self.mirror = mirror
        self.seed = int(seed)
        self.epoch = 0
        self.encoding = encoding
        self.in_channels = in_channels

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def get_sample(self, index: int) -> Sample:
        s = self.samples[index]
        if isinstance(s, Pair):
            s = load_sample(s, self.encoding)
        if self.in_channels and s.image.shape[0] < self.in_channels:
            s = Sample(s.name, np.repeat(s.image, self.in_channels, axis=0), s.mask, s.encoding, s.image_path, s.mask_path)
        return s

    def rng_for(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.get_sample(index)
        image, mask = augment_pair(s.image, s.mask, self.rng_for(index), self.crop, self.augment, self.scale_rotate,
                                   self.mirror)
        return torch.from_numpy(image), torch.from_numpy(mask)


def _scale_rotate(image: np.ndarray, mask: np.ndarray, angle: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    h, w = mask.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    flags = dict(dsize=(w, h), borderMode=cv2.BORDER_REFLECT_101)
    image = np.stack([cv2.warpAffine(np.ascontiguousarray(c, np.float32), m, flags=cv2.INTER_LINEAR, **flags)
                      for c in image])
    mask = cv2.warpAffine(np.ascontiguousarray(mask, np.int32), m, flags=cv2.INTER_NEAREST, **flags)
    return image, mask


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, crop: int | None,
                 augment: bool = True, scale_rotate: float = 0.0,
                 mirror: tuple[bool, bool] = (True, True)) -> tuple[np.ndarray, np.ndarray]:
    """Crop (mirror-padding small images), flip, rotate and jitter one pair identically;
    with probability ``scale_rotate`` also turn it by any angle and scale it by 0.7-1.4
    about its centre (nnU-Net's ranges; mirrored borders, the mask by nearest neighbour).
    ``mirror`` (left-right, top-bottom): the flips allowed (`patches.mirroring`); turns
    only when both are. The random draws are the same either way."""
    h, w = mask.shape
    if crop is not None:
        ph, pw = max(0, crop - h), max(0, crop - w)
        if ph or pw:
            top, left = int(rng.integers(ph + 1)), int(rng.integers(pw + 1))
            image = _pad_reflect(image, top, ph - top, left, pw - left)
            mask = _pad_reflect(mask, top, ph - top, left, pw - left)
            h, w = mask.shape
        y, x = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        image = image[:, y:y + crop, x:x + crop]
        mask = mask[y:y + crop, x:x + crop]
    if augment:
        turns = mirror[0] and mirror[1]
        if rng.random() < 0.5 and mirror[0]:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        if rng.random() < 0.5 and mirror[1]:
            image, mask = image[:, ::-1, :], mask[::-1, :]
        k = int(rng.integers(4))
        if k and image.shape[1] == image.shape[2] and turns:
            image, mask = np.rot90(image, k, axes=(1, 2)), np.rot90(mask, k)
        gain, bias, gamma = rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05), rng.uniform(0.85, 1.15)
        image = np.clip(np.clip(image, 0.0, 1.0) ** gamma * gain + bias, 0.0, 1.0)
        if scale_rotate > 0 and rng.random() < scale_rotate and turns:
            image, mask = _scale_rotate(image, mask, rng.uniform(-180.0, 180.0), rng.uniform(0.7, 1.4))
    return (np.ascontiguousarray(image, dtype=np.float32),
            np.ascontiguousarray(mask, dtype=np.int64))
