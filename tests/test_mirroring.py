"""Flips that would teach a network to ignore left and right (core.patches.mirroring): where
a class always lies on one side of the images, as a left and a right hemisphere's do,
training does not flip along that axis (nnU-Net's advice for lateralised labels)."""

import cv2
import numpy as np
import pytest

from ielstudio.core.dataset import Sample, augment_pair
from ielstudio.core.imageio import MaskEncoding
from ielstudio.core.patches import SIDED_MIN_IMAGES, mirroring
from ielstudio.core.training import TrainConfig, train


def halves(n_images: int, size: int = 32, seed: int = 0) -> list[Sample]:
    """Images with a bright band across the middle rows, labelled class 1 in the left half
    and class 2 in the right half (alike but for their place), each band a little
    shifted up or down so that nothing lies on one side top to bottom."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_images):
        image = np.full((1, size, size), 0.1, np.float32)
        mask = np.zeros((size, size), np.int64)
        r0 = size // 2 - 6 + int(rng.integers(-4, 5))
        image[0, r0:r0 + 12] = 0.9
        mask[r0:r0 + 12, :size // 2] = 1
        mask[r0:r0 + 12, size // 2:] = 2
        out.append(Sample(f"im{i:02d}", image, mask, MaskEncoding("index", (0, 1, 2))))
    return out


def test_a_class_on_one_side_of_every_image_rules_out_left_right_flips_and_turns():
    m = mirroring(halves(SIDED_MIN_IMAGES), TrainConfig())
    assert (m.left_right, m.top_bottom) == (False, True)
    assert m.sided == {"left-right": [1, 2], "top-bottom": []}
    assert m.describe() == "no left-right flips (classes 1, 2 always on one side), no turns"


def test_too_few_images_or_a_class_seen_on_both_sides_keeps_every_flip():
    assert mirroring(halves(SIDED_MIN_IMAGES - 1), TrainConfig()).flips == (True, True)  # could be chance
    samples = halves(SIDED_MIN_IMAGES)
    flipped = samples[0]
    samples[0] = Sample(flipped.name, flipped.image[:, :, ::-1].copy(), flipped.mask[:, ::-1].copy(), flipped.encoding)
    assert mirroring(samples, TrainConfig()).flips == (True, True)  # left and right both seen: not sided
    m = mirroring(halves(SIDED_MIN_IMAGES), TrainConfig(mirror="on"))
    assert m.flips == (True, True) and m.describe() == "flips and turns"
    assert mirroring(halves(SIDED_MIN_IMAGES), TrainConfig(mirror="off")).flips == (False, False)
    with pytest.raises(ValueError, match="mirror"):
        TrainConfig(mirror="sideways")


def test_augmentation_without_left_right_flips_never_moves_a_class_across():
    s = halves(1, size=32)[0]
    moved_allowed = moved_barred = 0
    for seed in range(40):
        _, m = augment_pair(s.image, s.mask, np.random.default_rng(seed), None, True)
        moved_allowed += bool((m[:, :16] == 2).any())
        _, m = augment_pair(s.image, s.mask, np.random.default_rng(seed), None, True, mirror=(False, True))
        moved_barred += bool((m[:, :16] == 2).any())
        # top-bottom flips still happen: the band may move, class 1 stays in the left half
        assert not (m[:, 16:] == 1).any()
    assert moved_allowed > 5 and moved_barred == 0


def test_training_records_the_flips_it_used():
    def augmentation(samples) -> str:
        config = TrainConfig(width=4, depth=2, crop=32, batch_size=2, epochs=0.25, min_steps=0)
        return list(train(samples, config))[-1].history["augmentation"]

    assert augmentation(halves(SIDED_MIN_IMAGES + 2)).startswith("no left-right flips (classes 1, 2")
    assert augmentation(halves(4)) == "flips and turns"


def test_cross_fitted_folds_record_the_flips_too():
    """Every fold judges the flips on the whole data set's masks; the joined history says it once."""
    config = TrainConfig(width=4, depth=2, crop=32, batch_size=2, epochs=0.25, min_steps=0, folds=2)
    history = list(train(halves(SIDED_MIN_IMAGES + 2), config))[-1].history
    assert len(history["folds"]) == 2 and history["flips_ruled_out"] is True
    assert history["augmentation"] == "no left-right flips (classes 1, 2 always on one side), no turns"


def test_the_command_and_the_window_say_when_flips_were_left_out(tmp_path, capsys):
    """Both read `review.augmentation_note`; the command prints it after training."""
    from ielstudio import cli
    from ielstudio.core.imageio import write_mask
    from ielstudio.core.review import augmentation_note

    assert augmentation_note({"augmentation": "flips and turns", "flips_ruled_out": False}) is None
    assert augmentation_note({"augmentation": "none", "flips_ruled_out": False}) is None
    assert augmentation_note({"augmentation": "no flips, no turns (set so)", "flips_ruled_out": False}) is None
    assert augmentation_note({}) is None
    assert augmentation_note({"augmentation": "no top-bottom flips (class 2 always on one side), no turns",
                              "flips_ruled_out": True}) == (
        "augmentation: no top-bottom flips (class 2 always on one side), no turns")
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for s in halves(SIDED_MIN_IMAGES):
        cv2.imwrite(str(images / f"{s.name}.png"), (s.image[0] * 255).astype(np.uint8))
        write_mask(masks / f"{s.name}.png", s.mask, MaskEncoding("index", (0, 1, 2)))
    rc = cli.main(["clean", str(images), str(masks), "--out", str(tmp_path / "out"), "--steps", "2", "--device", "cpu",
                   "--width", "4", "--depth", "2"])
    assert rc == 0
    assert "augmentation: no left-right flips (classes 1, 2 always on one side), no turns" in capsys.readouterr().err


def test_a_large_data_set_is_judged_on_a_bounded_probe_of_its_masks():
    from ielstudio.core.patches import LAZY_SIZE_PROBE

    reads = []

    class Counted:
        def __init__(self, s):
            self.name, self._mask = s.name, s.mask

        @property
        def mask(self):
            reads.append(self.name)
            return self._mask

    samples = [Counted(s) for s in halves(3 * LAZY_SIZE_PROBE)]
    assert mirroring(samples, TrainConfig()).flips == (False, True)
    assert len(reads) == LAZY_SIZE_PROBE
