"""Natural-photo patches from the photos scikit-image bundles (no download): the data of super-resolution on
real images, with held-out photos.

The photos are split by photo, never by patch: the test split's patches come from photos no training patch
comes from (:data:`TEST_PHOTOS`), so "beats bicubic on held-out patches" means on images the model never saw.
Each photo is read at its own scale and at half of it, then cut into ``resolution``-sized squares on a grid with
stride ``resolution // 2`` (half-overlapping); greyscale photos become RGB by repeating the grey channel.
Needs scikit-image (``pip install scikit-image``; part of difflab's dev extras).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from difflab.data.image_folder import read_image
from difflab.data.images import ImageDataset
from difflab.errors import UserError

# file names in skimage.data.data_dir; the stereo pair of motorcycles stays on one side of the split
TRAIN_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
                "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "brick.png", "grass.png", "gravel.png",
                "moon.png", "page.png", "text.png", "clock_motion.png")
TEST_PHOTOS = ("chelsea.png", "camera.png", "coins.png")
SCALES = (1.0, 0.5)  # each photo at its own size and at half of it
DEFAULT_RESOLUTION = 64
FLAT_STD = 2.0  # patches whose pixel std is below this (of 255) are flat background and left out


def photo_dir() -> Path:
    """scikit-image's folder of bundled photos.

    Raises:
        UserError: scikit-image is not installed.
    """
    try:
        from skimage import data
    except ImportError:
        raise UserError("data.name=photos needs scikit-image's bundled photos: pip install scikit-image") from None
    # the photos ship inside the package; data.data_dir names a download cache in scikit-image >= 0.26
    candidates = [Path(data.__file__).parent, Path(data.data_dir)]
    return next((d for d in candidates if (d / TEST_PHOTOS[0]).is_file()), candidates[0])


def patches(photo: np.ndarray, size: int) -> np.ndarray:
    """The half-overlapping ``size`` squares of one (H, W, C) uint8 photo at every scale of :data:`SCALES`.

    Returns:
        uint8 (N, C, size, size); flat squares (std below :data:`FLAT_STD`) left out.
    """
    out = []
    stride = max(1, size // 2)
    for scale in SCALES:
        h, w = round(photo.shape[0] * scale), round(photo.shape[1] * scale)
        if min(h, w) < size:
            continue
        im = photo
        if scale != 1:
            pil = Image.fromarray(photo[..., 0] if photo.shape[2] == 1 else photo)  # PIL wants (H, W) for grey
            im = np.asarray(pil.resize((w, h), Image.Resampling.LANCZOS)).reshape(h, w, photo.shape[2])
        for top in range(0, h - size + 1, stride):
            for left in range(0, w - size + 1, stride):
                square = im[top:top + size, left:left + size]  # (size, size, C)
                if square.std() >= FLAT_STD:
                    out.append(square.transpose(2, 0, 1))  # (C, size, size)
    return np.stack(out) if out else np.zeros((0, photo.shape[2], size, size), np.uint8)


def load_photos_dataset(resolution: int | None = None, channels: int | None = None,
                        split: str = "train") -> ImageDataset:
    """Patches of the bundled photos: ``split`` "train" from :data:`TRAIN_PHOTOS`, "test" from :data:`TEST_PHOTOS`.

    Args:
        resolution: the patch side (None: :data:`DEFAULT_RESOLUTION`).
        channels: 3 (native; greyscale photos repeated) or 1 (luma).
        split: "train" or "test".

    Returns:
        An :class:`ImageDataset` of uint8 (N, C, resolution, resolution) patches, no labels or captions.
    """
    size = resolution or DEFAULT_RESOLUTION
    if channels not in (None, 1, 3):
        raise UserError(f"data.name=photos cannot give channels={channels}: set data.channels to 1 or 3")
    root = photo_dir()
    mode = 1 if channels == 1 else 3
    names = TRAIN_PHOTOS if split == "train" else TEST_PHOTOS
    images = np.concatenate([patches(read_image(root / name, mode), size) for name in names])
    return ImageDataset(name="photos", images=torch.from_numpy(images), labels=None, class_names=[], texts=None)
