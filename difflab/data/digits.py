"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download needed)."""

from __future__ import annotations

import numpy as np
import torch

from difflab.data.images import ImageDataset, gray_to_channels, resize_uint8

SPLIT_SEED = 0  # seed of the fixed train/test permutation
TRAIN_FRACTION = 0.8
MAX_VALUE = 16  # load_digits pixels are counts 0..16


def split_indices(n: int, split: str) -> np.ndarray:
    """The fixed, sorted indices of ``split`` ("train": 80%, "test": the rest) among ``n`` items."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_train = int(TRAIN_FRACTION * n)
    return np.sort(perm[:n_train] if split == "train" else perm[n_train:])


def load_digits_dataset(*, resolution: int | None = None, channels: int | None = None,
                        split: str = "train") -> ImageDataset:
    """scikit-learn's ``load_digits`` as uint8 images.

    Args:
        resolution: square side; None keeps the native 8.
        channels: 1 (native) or 3 (the grey channel repeated).
        split: "train" (a fixed seeded 80%) or "test" (the other 20%).

    Returns:
        An :class:`ImageDataset` with labels 0-9 and class names "0".."9".
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    idx = split_indices(len(bunch.target), split)
    pixels = np.rint(bunch.images[idx] * (255.0 / MAX_VALUE)).astype(np.uint8)  # (N, 8, 8)
    images = torch.from_numpy(pixels)[:, None]  # (N, 1, 8, 8)
    if resolution is not None:
        images = resize_uint8(images, resolution)
    return ImageDataset(name="digits", images=gray_to_channels(images, channels, "digits"),
                        labels=torch.from_numpy(bunch.target[idx].astype(np.int64)),
                        class_names=[str(d) for d in range(10)], texts=None)
