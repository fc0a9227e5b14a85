"""Sample grids and image outputs: uint8 images (N, H, W, C) tiled into one picture (optionally with a
caption under each row), and ``save_images``, which writes samples as a PNG grid, a folder of PNGs
(an image folder difflab can train on) or an ``.npz``. Every file is written atomically
(:func:`difflab.paths.atomic_path`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from difflab.errors import UserError
from difflab.paths import atomic_path, atomic_write_bytes

GRID_PAD = 2  # pixels of black between grid cells


def image_grid(images: np.ndarray, ncol: int | None = None) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) into one (rows*H', ncol*W', C) image, row-major."""
    N, H, W, C = images.shape
    ncol = ncol or max(1, int(math.ceil(math.sqrt(N))))
    nrow = int(math.ceil(N / ncol))
    grid = np.zeros((nrow * (H + GRID_PAD) + GRID_PAD, ncol * (W + GRID_PAD) + GRID_PAD, C), np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        y, x = GRID_PAD + r * (H + GRID_PAD), GRID_PAD + c * (W + GRID_PAD)
        grid[y:y + H, x:x + W] = img
    return grid


CAPTION_HEIGHT = 14  # pixels of the text strip under each row of a captioned grid
CAPTION_MIN_CELL = 64  # cells of a captioned grid are upscaled (nearest) to at least this many pixels
CAPTION_INK = (235, 235, 235)


def captioned_grid(images: np.ndarray, captions: Sequence[str], ncol: int) -> np.ndarray:
    """Rows of ``ncol`` uint8 images (N, H, W, C), row r followed by a strip with ``captions[r]``.

    Images are upscaled by an integer factor (nearest) so that a cell is at least CAPTION_MIN_CELL
    pixels wide; the result is RGB (R, W', 3).
    """
    N, H, W, C = images.shape
    scale = max(1, -(-CAPTION_MIN_CELL // W))
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)  # (N, sH, sW, C)
    big = np.repeat(big, 3, axis=-1) if C == 1 else big[..., :3]  # (N, sH, sW, 3)
    font = ImageFont.load_default()
    strips = []
    for r, caption in enumerate(captions):
        row = image_grid(big[r * ncol:(r + 1) * ncol], ncol)  # (h, w, 3)
        strip = Image.new("RGB", (row.shape[1], CAPTION_HEIGHT))
        text = caption if caption.strip() else "(empty prompt: unconditional)"
        ImageDraw.Draw(strip).text((GRID_PAD, 1), text, fill=CAPTION_INK, font=font)
        strips += [row, np.asarray(strip)]
    width = max(s.shape[1] for s in strips)
    return np.concatenate([np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0))) for s in strips])  # (R, W', 3)


IMAGE_CHANNELS = (1, 3, 4)  # L, RGB, RGBA


SPECTROGRAM_COLORMAP = "magma"


def spectrograms(mels: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
    """Log-mel spectrograms (n_mels, F) as one captioned picture, a row each on a shared colour scale, low
    frequencies at the bottom (rows padded to the longest); uint8 RGB (R, W', 3)."""
    from matplotlib import colormaps

    mels = [np.asarray(m, dtype=np.float32) for m in mels]
    lo, hi = min(float(m.min()) for m in mels), max(float(m.max()) for m in mels)
    cmap = colormaps[SPECTROGRAM_COLORMAP]
    rows = [(cmap((m[::-1] - lo) / max(hi - lo, 1e-12))[..., :3] * 255).astype(np.uint8) for m in mels]  # (M, F, 3)
    W = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, W - r.shape[1]), (0, 0))) for r in rows]
    return captioned_grid(np.stack(rows), list(captions), 1)


def check_images(images: np.ndarray, what: str, fix: str) -> np.ndarray:
    """``images`` when it is what difflab writes, uint8 (N, H, W, C) with C in 1, 3, 4; else one line."""
    if images.dtype != np.uint8:
        raise UserError(f"{what} are {images.dtype}, not uint8 pixels (0..255): {fix}")
    if images.ndim != 4 or images.shape[-1] not in IMAGE_CHANNELS or len(images) == 0:
        raise UserError(f"{what} have shape {tuple(images.shape)}, not (N, H, W, C) with C in "
                        f"{', '.join(map(str, IMAGE_CHANNELS))}: {fix}")
    return images


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write one uint8 image (H, W, C), C in 1, 3, 4, as a PNG file, atomically; returns ``path``."""
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[image.shape[-1]]
    with atomic_path(path) as tmp:
        Image.fromarray(image[..., 0] if mode == "L" else image, mode).save(tmp, format="PNG")
    return Path(path)


def save_images(path: str | Path, images: np.ndarray, labels: np.ndarray | None = None,
                ncol: int | None = None, prompts: Sequence[str] | None = None, **extra: np.ndarray) -> Path:
    """Write samples: ``.npz`` (``images`` uint8 (N, H, W, C), ``labels``, ``prompts`` if any, extras),
    ``.png`` (a grid; with prompts and ``ncol``, one row per prompt printed under it) or a folder (one PNG
    per sample, plus ``metadata.jsonl`` with the prompts: an image folder difflab can train on).
    Every file and the folder are written atomically."""
    path = Path(path)
    if prompts is not None:
        extra["prompts"] = np.asarray(list(prompts), dtype=str)
    if path.suffix == ".npz":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, images=images, labels=labels if labels is not None else np.full(len(images), -1),
                         **extra)
    elif path.suffix == ".png" and prompts is not None and ncol:
        save_png(path, captioned_grid(images, list(prompts)[::ncol], ncol))
    elif path.suffix == ".png":
        save_png(path, image_grid(images, ncol))
    elif path.suffix:
        raise UserError(f"cannot write samples to {path}: use a .npz or .png file, or a folder name")
    else:  # the folder appears complete, or not at all (it replaces an earlier folder of samples)
        with atomic_path(path) as tmp:
            tmp.mkdir()
            for i, img in enumerate(images):
                save_png(tmp / f"{i:06d}.png", img)
            if prompts is not None:
                atomic_write_bytes(tmp / "metadata.jsonl", "".join(
                    json.dumps({"file_name": f"{i:06d}.png", "text": p}) + "\n" for i, p in enumerate(prompts)).encode())
    return path
