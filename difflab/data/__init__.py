"""Image datasets, loaded whole into memory as uint8 ``(N, C, H, W)`` tensors.

``load_dataset(name, ...)`` is the one entry point; see :mod:`difflab.data.images` for the
:class:`~difflab.data.images.ImageDataset` it returns and the pixel conversions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from difflab.data.digits import load_digits_dataset
from difflab.data.idx import load_idx_dataset
from difflab.data.image_folder import load_image_folder
from difflab.data.photos import load_photos_dataset
from difflab.data.images import ImageDataset
from difflab.data.shapes import ATTRIBUTES, load_shapes_dataset
from difflab.errors import UserError

DATASETS = ("digits", "mnist", "fashion-mnist", "image-folder", "photos", "shapes")
SPLITS = ("train", "test")
CAPTIONS = ("grammar", "paraphrase")  # data.captions

__all__ = ["CAPTIONS", "DATASETS", "ImageDataset", "caption_table", "captioned_pairs", "load_dataset"]


def _check(name: str, resolution: int | None, split: str) -> None:
    """UserError for an unknown dataset or split, or a resolution that is not a positive int."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: set data.name to one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
        raise UserError(f"data.resolution={resolution!r} is not a positive integer: set it to e.g. 32, or null")


def load_dataset(name: str, *, path: str | None = None, resolution: int | None = None,
                 channels: int | None = None, split: str = "train", size: int | None = None,
                 holdout: Sequence[str] = ()) -> ImageDataset:
    """Load a whole image dataset into memory.

    Args:
        name: one of :data:`DATASETS`:
            "digits" (scikit-learn's 8x8 digits; fixed seeded 80/20 train/test split; ``path`` ignored),
            "mnist" / "fashion-mnist" (IDX files under ``path``; fashion-mnist defaults to
            ``/usr/share/datasets/fashion-mnist``, from ``make data``),
            "image-folder" (every image under ``path``; classes from sub-folders, captions from
            metadata.jsonl; it has no held-out part, so "test" gives the same images as "train"),
            "photos" (patches of scikit-image's bundled photos, the test split from photos training never
            sees, see :mod:`difflab.data.photos`; ``path`` ignored),
            "shapes" (captioned shapes rendered in memory, see :mod:`difflab.data.shapes`; ``path`` ignored).
        path: the dataset's folder; None = its default place.
        resolution: square side in pixels; None = native (8 digits, 28 MNIST family, 32 image-folder
            and shapes).
        channels: None = native (1 for digits and the MNIST family, 3 for image-folder and shapes);
            the greyscale sets also give 3 (channel repeated), image-folder also 1 (L) or 4 (RGBA),
            shapes also 1 (luma).
        split: "train" or "test".
        size: shapes: images in the train split (None = 20,000); ignored by the other datasets.
        holdout: shapes: attribute combinations kept out of the train split, e.g. ["red triangle"];
            ignored by the other datasets.

    Returns:
        The :class:`ImageDataset`, images uint8 ``(N, C, resolution, resolution)``.

    Raises:
        UserError: unknown name or split, bad resolution/channels, missing or corrupt files.
    """
    _check(name, resolution, split)
    if name == "digits":
        return load_digits_dataset(resolution=resolution, channels=channels, split=split)
    if name == "image-folder":
        return load_image_folder(path, resolution=resolution, channels=channels, split=split)
    if name == "photos":
        return load_photos_dataset(resolution, channels, split)
    if name == "shapes":
        return load_shapes_dataset(resolution, channels, split, size=size, holdout=holdout)
    return load_idx_dataset(name, path=path, resolution=resolution, channels=channels, split=split)


def captioned_pairs(name: str, *, path: str | None = None, resolution: int | None = None,
                    channels: int | None = None, split: str = "train", size: int | None = None,
                    holdout: Sequence[str] = ()) -> tuple[Tensor, list[str], int]:
    """(uint8 images (N, C, H, W), captions) of a dataset's captioned images, and its resolution H.

    Arguments as :func:`load_dataset`; images with an empty caption are left out.

    Raises:
        UserError: the dataset has no captions.
    """
    ds = load_dataset(name, path=path, resolution=resolution, channels=channels, split=split, size=size,
                      holdout=holdout)
    keep = [i for i, t in enumerate(ds.texts or []) if t.strip()]
    if not keep:
        raise UserError(f"dataset {name} has no captions, and image-text pairs are needed: use "
                        f"--data shapes, or an image folder with a metadata.jsonl of captions")
    return ds.images[keep], [ds.texts[i] for i in keep], ds.resolution[0]


def caption_table(dataset: ImageDataset, captions: str = "grammar", variants: int = 1,
                  seed: int = 0) -> tuple[list[str], Tensor]:
    """The distinct training captions and which of them each image may be trained with.

    Args:
        dataset: a captioned dataset.
        captions: "grammar": each image's own caption; "paraphrase" (shapes): also ``variants - 1`` more of its
            attributes in the training side of :mod:`difflab.data.shape_words` (synonyms, sentence templates).
        variants: captions per image with "paraphrase" (the first is its own).
        seed: the paraphrases drawn.

    Returns:
        (the U distinct captions, long (N, K) index into them: K = 1 for "grammar", ``variants`` for "paraphrase").

    Raises:
        UserError: "paraphrase" on a dataset without shapes attributes, an unknown ``captions``.
    """
    if captions not in CAPTIONS:
        raise UserError(f"unknown data.captions {captions!r}: use one of {', '.join(CAPTIONS)}")
    if captions == "grammar":
        distinct, index = np.unique(np.asarray(dataset.texts, dtype=object).astype(str), return_inverse=True)
        return distinct.tolist(), torch.from_numpy(index.reshape(-1, 1)).long()  # (N, 1)
    if dataset.name != "shapes" or dataset.attributes is None:
        raise UserError(f"data.captions=paraphrase rewrites captions with the shapes vocabulary, but the dataset is "
                        f"{dataset.name}: set data.name=shapes or data.captions=grammar")
    from difflab.data.shape_words import paraphrases

    table = paraphrases(variants, seed)  # 320 combinations x K captions
    distinct = sorted({c for row in table for c in row})
    where = {c: k for k, c in enumerate(distinct)}
    ids = torch.tensor([[where[c] for c in row] for row in table], dtype=torch.long)  # (320, K)
    combo = np.ravel_multi_index(dataset.attributes.numpy().T, [len(v) for v in ATTRIBUTES.values()])  # (N,)
    return distinct, ids[torch.from_numpy(combo).long()]  # (N, K)
