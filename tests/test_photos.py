"""data.name photos: patches of scikit-image's bundled photos, the test split from photos training never sees."""

from __future__ import annotations

import numpy as np
import pytest

from difflab.data import load_dataset
from difflab.data.photos import FLAT_STD, TEST_PHOTOS, TRAIN_PHOTOS, patches

pytest.importorskip("skimage")


def test_the_split_is_by_photo():
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    train = load_dataset("photos", resolution=32, split="train")
    test = load_dataset("photos", resolution=32, split="test")
    assert train.images.shape[1:] == test.images.shape[1:] == (3, 32, 32)
    assert len(train) > 5 * len(test) > 0
    seen = {p.tobytes() for p in train.images.numpy()}
    assert not any(p.tobytes() in seen for p in test.images.numpy())  # no held-out patch occurs in training
    assert train.labels is None and train.texts is None


def test_patches_tile_at_two_scales_and_skip_flat_ones():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    photo[:32, :32] = 7  # one flat square
    out = patches(photo, 32)
    # scale 1: 3 x 5 half-overlapping squares, one of them flat; scale 1/2 (32 x 48): 1 x 2
    assert out.shape == (3 * 5 - 1 + 2, 3, 32, 32) and out.dtype == np.uint8
    assert all(p.std() >= FLAT_STD for p in out)
    assert np.array_equal(out[0], photo[:32, 16:48].transpose(2, 0, 1))


def test_greyscale_and_errors():
    grey = load_dataset("photos", resolution=16, channels=1, split="test")
    assert grey.images.shape[1:] == (1, 16, 16)
    with pytest.raises(Exception, match="channels=4"):
        load_dataset("photos", resolution=16, channels=4, split="test")
