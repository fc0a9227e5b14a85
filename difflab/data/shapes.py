"""Captioned shapes: a procedurally generated text-to-image dataset with exact ground truth.

Every image is one filled, anti-aliased object on a black background, described by a caption
``a {size} {color} {shape} {position}``, e.g. "a small red circle at the top left". The four
attributes are drawn uniformly and independently (see :data:`ATTRIBUTES`), so a caption is a
complete description and a classifier trained on fresh renders (:mod:`difflab.evaluate.attributes`)
can check whether a generated image obeys its prompt. Attribute combinations can be held out of
the training split (``holdout``) to measure compositional generalisation on the test split.

Rendering: each object is drawn on a grid ``SUPERSAMPLE`` times finer than the image and
area-averaged, so edges get intermediate values. Geometry, as fractions of the image side:
object extent ``SIZE_FRACTIONS`` (small 0.28, large 0.5), centred at a quadrant's centre (0.25 or
0.75) or the image centre, moved by up to ``POSITION_JITTER`` of the side; colours are
``COLORS`` plus up to ``COLOR_JITTER`` per channel. The triangle has its apex up; the cross is a
plus sign whose arms are ``CROSS_ARM_FRACTION`` of the extent wide.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from difflab.data.image_folder import METADATA
from difflab.data.images import ImageDataset
from difflab.errors import UserError
from difflab.paths import atomic_path

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "size": ("small", "large"),
    "color": ("red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange"),
    "shape": ("circle", "square", "triangle", "cross"),
    "position": ("at the top left", "at the top right", "at the bottom left", "at the bottom right", "in the center"),
}
COLORS = np.array([(230, 25, 25), (25, 200, 25), (40, 60, 230), (240, 220, 20),
                   (220, 30, 220), (20, 220, 220), (235, 235, 235), (250, 140, 0)], dtype=np.float32)  # (8, 3)
SIZE_FRACTIONS = (0.28, 0.5)  # object extent / image side, per size
POSITION_CENTERS = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75), (0.5, 0.5))  # (x, y) / side
POSITION_JITTER = 1 / 32  # of the side: +-1 pixel at 32x32, +-2 at 64x64
COLOR_JITTER = 5  # +- units per channel
CROSS_ARM_FRACTION = 1 / 3  # arm width / extent
SUPERSAMPLE = 4  # sub-pixels per pixel side for the anti-aliasing
RENDER_CHUNK = 1024  # images per vectorised render step (bounds the (n, S, S) masks)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 RGB -> grey

DEFAULT_RESOLUTION = 32
MIN_RESOLUTION = 16
SPLIT_SIZES = {"train": 20_000, "test": 2_000}  # default images per split
SPLIT_SEEDS = {"train": 0, "test": 1}  # attributes and rendering; the classifier uses others
RENDER_STREAM = 1  # second word of the rendering seed, so it differs from the attribute draw's

CLASS_NAMES = [f"{c} {s}" for s in ATTRIBUTES["shape"] for c in ATTRIBUTES["color"]]  # label = shape * 8 + color
_NUM_VALUES = tuple(len(v) for v in ATTRIBUTES.values())  # (2, 8, 4, 5)

__all__ = ["ATTRIBUTES", "CLASS_NAMES", "all_attributes", "caption", "parse_caption", "parse_holdout",
           "matches_holdout", "random_attributes", "render_shapes", "load_shapes_dataset", "write_shapes_folder"]


def all_attributes() -> np.ndarray:
    """Every attribute combination once, int64 (320, 4) in ``np.ndindex`` order (size, color, shape, position)."""
    return np.array(list(np.ndindex(*_NUM_VALUES)), dtype=np.int64)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


# -- captions ------------------------------------------------------------------------------------
def caption(attrs: Sequence[int]) -> str:
    """The caption of one image: ``(size, color, shape, position)`` indices -> "a small red circle at the top left"."""
    words = [values[int(i)] for values, i in zip(ATTRIBUTES.values(), attrs, strict=True)]
    return "a " + " ".join(words)


_CAPTIONS = {caption(a): tuple(int(i) for i in a) for a in all_attributes()}


def parse_caption(text: str) -> tuple[int, int, int, int] | None:
    """``(size, color, shape, position)`` of a caption in the exact grammar (case and spacing free), else None."""
    return _CAPTIONS.get(_normalise(text))


# -- holdout -------------------------------------------------------------------------------------
_PHRASES = sorted(((v.split(), k, i) for k, values in enumerate(ATTRIBUTES.values())
                   for i, v in enumerate(values)), key=lambda p: -len(p[0]))  # longest phrase first


def _parse_entry(entry: str) -> np.ndarray:
    """One holdout entry ("red triangle") -> int64 (4,) value per attribute, -1 where it names none."""
    spec = np.full(len(ATTRIBUTES), -1, dtype=np.int64)
    words = re.split(r"\s+", entry.lower().strip())
    pos = 1 if words[:1] == ["a"] and len(words) > 1 else 0  # "a red triangle" reads like a caption
    while pos < len(words) and words[pos]:
        match = next(((w, k, i) for w, k, i in _PHRASES if words[pos:pos + len(w)] == w), None)
        if match is None:
            valid = "; ".join(f"{k}: {', '.join(v)}" for k, v in ATTRIBUTES.items())
            raise UserError(f"unknown word {words[pos]!r} in data.holdout entry {entry!r}: use attribute values "
                            f"({valid})")
        w, k, i = match
        if spec[k] >= 0:
            raise UserError(f"data.holdout entry {entry!r} names two values of {list(ATTRIBUTES)[k]}: "
                            f"give at most one per attribute")
        spec[k], pos = i, pos + len(w)
    if (spec < 0).all():
        raise UserError(f"data.holdout entry {entry!r} names no attribute: write e.g. \"red triangle\"")
    return spec


def parse_holdout(holdout: Sequence[str]) -> np.ndarray:
    """Holdout entries -> int64 (K, 4): each row the attribute values it names, -1 for "any".

    Raises:
        UserError: an unknown word (naming the valid values), two values of one attribute, an empty entry.
    """
    if isinstance(holdout, str):
        holdout = [holdout]
    rows = [_parse_entry(str(e)) for e in holdout]
    return np.stack(rows) if rows else np.zeros((0, len(ATTRIBUTES)), dtype=np.int64)


def matches_holdout(attrs: np.ndarray, holdout: Sequence[str]) -> np.ndarray:
    """bool (N,): which rows of ``attrs`` (N, 4) have every value named by some holdout entry."""
    spec = parse_holdout(holdout)  # (K, 4)
    attrs = np.asarray(attrs, dtype=np.int64).reshape(-1, len(ATTRIBUTES))  # (N, 4)
    hit = (spec[None] < 0) | (attrs[:, None] == spec[None])  # (N, K, 4)
    return hit.all(axis=2).any(axis=1)


def random_attributes(n: int, seed: int, holdout: Sequence[str] = ()) -> np.ndarray:
    """int64 (n, 4) attribute indices drawn uniformly; rows matching ``holdout`` are redrawn.

    Raises:
        UserError: bad holdout entries, or a holdout that excludes every combination.
    """
    all_combos = all_attributes()  # (320, 4)
    if holdout and matches_holdout(all_combos, holdout).all():
        raise UserError(f"data.holdout {list(holdout)} excludes every image: hold out fewer combinations")
    rng = np.random.default_rng(seed)
    high = np.array(_NUM_VALUES)
    attrs = rng.integers(0, high, size=(n, len(high)))  # (n, 4)
    if holdout:
        while (redraw := np.flatnonzero(matches_holdout(attrs, holdout))).size:
            attrs[redraw] = rng.integers(0, high, size=(redraw.size, len(high)))
    return attrs.astype(np.int64)


# -- rendering -----------------------------------------------------------------------------------
def _coverage(shape: np.ndarray, cx: np.ndarray, cy: np.ndarray, h: np.ndarray, resolution: int) -> np.ndarray:
    """Fraction of each pixel the objects cover: float32 (n, R, R); all arguments per image (n,), in pixels."""
    S = resolution * SUPERSAMPLE
    grid = (np.arange(S, dtype=np.float32) + 0.5) / SUPERSAMPLE  # sub-pixel centres, in pixels
    dx = np.abs(grid[None, None, :] - cx[:, None, None])  # (n, 1, S)
    y = grid[None, :, None] - cy[:, None, None]  # (n, S, 1), positive downwards
    dy, h = np.abs(y), h[:, None, None]
    arm = h * CROSS_ARM_FRACTION
    masks = {
        0: lambda i: dx[i] ** 2 + dy[i] ** 2 <= h[i] ** 2,  # circle of diameter 2h
        1: lambda i: (dx[i] <= h[i]) & (dy[i] <= h[i]),  # square of side 2h
        2: lambda i: (dy[i] <= h[i]) & (2 * dx[i] <= y[i] + h[i]),  # apex (cx, cy - h), base y = cy + h
        3: lambda i: ((dx[i] <= h[i]) & (dy[i] <= arm[i])) | ((dx[i] <= arm[i]) & (dy[i] <= h[i])),  # plus
    }
    inside = np.zeros((len(cx), S, S), dtype=bool)  # (n, S, S)
    for s, mask in masks.items():
        if (i := np.flatnonzero(shape == s)).size:
            inside[i] = mask(i)
    counts = inside.reshape(len(cx), resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).sum((2, 4))  # (n, R, R)
    return counts.astype(np.float32) / SUPERSAMPLE**2


def render_shapes(attrs: np.ndarray, resolution: int = DEFAULT_RESOLUTION, seed: int = 0) -> np.ndarray:
    """Images of the given attributes, with position and colour jitter drawn from ``seed``.

    Args:
        attrs: int (n, 4) indices (size, color, shape, position) into :data:`ATTRIBUTES`.
        resolution: image side in pixels, at least ``MIN_RESOLUTION``.
        seed: the jitter; the same (attrs, resolution, seed) give the same images.

    Returns:
        uint8 (n, resolution, resolution, 3), black background.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < MIN_RESOLUTION:
        raise UserError(f"shapes need data.resolution >= {MIN_RESOLUTION}, got {resolution!r}: set e.g. 32 or 64")
    attrs = np.asarray(attrs, dtype=np.int64).reshape(-1, len(ATTRIBUTES))  # (n, 4)
    if ((attrs < 0) | (attrs >= np.array(_NUM_VALUES))).any():
        raise ValueError(f"attribute indices out of range {_NUM_VALUES}")
    size, color, shape, position = attrs.T
    n, R = len(attrs), resolution
    rng = np.random.default_rng([seed, RENDER_STREAM])
    jitter = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=(n, 2)).astype(np.float32)  # (n, 2) of the side
    rgb = COLORS[color] + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=(n, 3))  # (n, 3)
    rgb = np.clip(rgb, 0, 255).astype(np.float32)
    center = (np.array(POSITION_CENTERS, dtype=np.float32)[position] + jitter) * R  # (n, 2) in pixels
    half = np.array(SIZE_FRACTIONS, dtype=np.float32)[size] * R / 2  # (n,)
    out = np.empty((n, R, R, 3), dtype=np.uint8)
    for a in range(0, n, RENDER_CHUNK):
        b = slice(a, a + RENDER_CHUNK)
        alpha = _coverage(shape[b], center[b, 0], center[b, 1], half[b], R)  # (n', R, R)
        out[b] = np.rint(alpha[..., None] * rgb[b, None, None, :])  # (n', R, R, 3)
    return out


# -- the dataset ---------------------------------------------------------------------------------
def _check_size(size: int | None) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise UserError(f"data.size={size!r} is not a positive integer: set it to e.g. 20000, or null")


def load_shapes_dataset(resolution: int | None, channels: int | None, split: str, size: int | None = None,
                        holdout: Sequence[str] = ()) -> ImageDataset:
    """The captioned shapes dataset, rendered in memory (a few seconds for 20,000 32x32 images).

    Args:
        resolution: image side (None = 32; at least 16).
        channels: None or 3 = RGB; 1 = greyscale (BT.601 luma).
        split: "train" (seed 0, ``size`` images, default 20,000) or "test" (seed 1, always 2,000).
        size: images in the train split; None = 20,000. The test split ignores it.
        holdout: attribute combinations kept out of the train split, e.g. ["red triangle",
            "large cyan"]; an image matching every value named by an entry is redrawn. The test
            split ignores it (so held-out combinations appear there).

    Returns:
        An :class:`ImageDataset`: images uint8 (N, C, H, W), texts = captions, labels =
        shape * 8 + color (class names "red circle", ..., "orange cross"), attributes int64 (N, 4).

    Raises:
        UserError: bad resolution, channels, size or holdout.
    """
    _check_size(size)
    if split not in SPLIT_SEEDS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLIT_SEEDS)}")
    if channels not in (None, 1, 3):
        raise UserError(f"shapes cannot give channels={channels}: set data.channels to 3 (RGB) or 1 (grey)")
    parse_holdout(holdout)  # bad words fail on either split
    train = split == "train"
    n = (size or SPLIT_SIZES["train"]) if train else SPLIT_SIZES[split]
    attrs = random_attributes(n, SPLIT_SEEDS[split], holdout if train else ())
    pixels = render_shapes(attrs, resolution or DEFAULT_RESOLUTION, seed=SPLIT_SEEDS[split])  # (N, H, W, 3)
    if channels == 1:
        pixels = np.rint(pixels.astype(np.float32) @ LUMA[:, None]).astype(np.uint8)  # (N, H, W, 1)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return ImageDataset(name="shapes", images=images,
                        labels=torch.from_numpy(attrs[:, 2] * len(ATTRIBUTES["color"]) + attrs[:, 1]),
                        class_names=list(CLASS_NAMES), texts=[caption(a) for a in attrs],
                        attributes=torch.from_numpy(attrs))


def write_shapes_folder(out: str | Path, n: int, *, resolution: int = DEFAULT_RESOLUTION, seed: int = 0,
                        holdout: Sequence[str] = ()) -> Path:
    """Write ``n`` shapes as an image folder (``data.name: image-folder`` reads it back with its captions).

    Args:
        out: a new folder; it gets ``00000.png``, ... and ``metadata.jsonl`` with
            ``{"file_name", "text"}`` per image. Written atomically (complete or absent).
        n: images to write.
        resolution: image side, at least ``MIN_RESOLUTION``.
        seed: attributes and rendering (seed 0 draws the same way as the train split).
        holdout: attribute combinations to leave out (see :func:`random_attributes`).

    Returns:
        The folder.

    Raises:
        UserError: ``out`` already exists, bad n, resolution or holdout.
    """
    from PIL import Image

    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists: pass a new --out folder or delete it")
    _check_size(n)
    attrs = random_attributes(n, seed, holdout)
    images = render_shapes(attrs, resolution, seed=seed)  # (n, H, W, 3)
    width = max(5, len(str(n - 1)))
    rows = []
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for i, (image, a) in enumerate(zip(images, attrs)):
            name = f"{i:0{width}d}.png"
            Image.fromarray(image).save(tmp / name)
            rows.append(json.dumps({"file_name": name, "text": caption(a)}))
        (tmp / METADATA).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out
