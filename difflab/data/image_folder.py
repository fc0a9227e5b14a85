"""A folder of your own images, optionally in class sub-folders and with captions.

Layout (the Hugging Face ``imagefolder`` convention)::

    DIR/cat/0001.png          first-level sub-folder = class name (only when every image is in one)
    DIR/dog/0002.jpg
    DIR/metadata.jsonl        optional: {"file_name": "cat/0001.png", "text": "a cat"} per line

Every image is decoded eagerly: shorter side resized to the resolution, then centre-cropped square.
"""

from __future__ import annotations

import json
import posixpath
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from difflab.data.images import ImageDataset
from difflab.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_RESOLUTION = 32
DEFAULT_CHANNELS = 3
PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> PIL mode
METADATA = "metadata.jsonl"
PROGRESS_MIN_FILES = 500  # fewer files than this: no progress bar


def find_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted by relative path; hidden files and folders skipped."""
    found = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def folder_classes(root: Path, files: list[Path]) -> tuple[list[str], list[int] | None]:
    """(sorted class names, class id per file) from first-level sub-folders; ([], None) if any file is at the root."""
    parts = [f.relative_to(root).parts for f in files]
    if any(len(p) == 1 for p in parts):
        return [], None
    names = sorted({p[0] for p in parts})
    ids = {n: i for i, n in enumerate(names)}
    return names, [ids[p[0]] for p in parts]


def read_captions(root: Path) -> dict[str, str] | None:
    """``file_name -> text`` from ``root/metadata.jsonl``; None when there is no such file.

    Raises:
        UserError: a line is not a JSON object with a "file_name".
    """
    meta = root / METADATA
    if not meta.is_file():
        return None
    captions: dict[str, str] = {}
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{meta} line {n} is not JSON ({err.msg}): fix or delete that line") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise UserError(f'{meta} line {n} has no "file_name": write {{"file_name": "a.png", "text": "..."}}')
        captions[posixpath.normpath(row["file_name"])] = str(row.get("text") or "")
    return captions


def decode_image(path: Path, size: int, mode: str) -> np.ndarray:
    """One image file -> uint8 ``(size, size, C)``: converted to ``mode``, shorter side resized, centre-cropped."""
    with Image.open(path) as src:
        im = src.convert(mode)  # decodes fully, so the file can close
    w, h = im.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8).reshape(size, size, -1)  # (H, W, C)


def _decode_all(files: list[Path], size: int, channels: int) -> tuple[np.ndarray, list[int]]:
    """(uint8 (K, H, W, C) of the readable files, their indices in ``files``); warns per unreadable file."""
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    kept: list[int] = []
    quiet = len(files) < PROGRESS_MIN_FILES or not sys.stderr.isatty()
    for i, f in enumerate(tqdm(files, desc="decoding images", unit="img", disable=quiet)):
        try:
            out[len(kept)] = decode_image(f, size, PIL_MODES[channels])
        except Exception as err:  # noqa: BLE001 - PIL raises many types on corrupt files; skip, never crash
            warnings.warn(f"skipping unreadable image {f}: {err}", stacklevel=3)
            continue
        kept.append(i)
    return out[:len(kept)], kept


def _check_args(path: str | None, channels: int) -> Path:
    """The existing root folder; UserError for a missing path or bad channel count."""
    if channels not in PIL_MODES:
        raise UserError(f"image-folder cannot give channels={channels}: set data.channels to 1, 3 or 4")
    if path is None:
        raise UserError("image-folder needs a folder: set data.path=DIR (a folder of .png/.jpg/.jpeg/.webp images)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist: point data.path at a folder of images")
    return root


def load_image_folder(path: str | None, *, resolution: int | None = None, channels: int | None = None,
                      split: str = "train") -> ImageDataset:
    """Every image under ``path``, decoded into memory.

    Args:
        path: the folder (required); searched recursively for .png/.jpg/.jpeg/.webp.
        resolution: square side (default 32): shorter side resized to it, then centre-cropped.
        channels: 3 (RGB, default), 1 (greyscale) or 4 (RGBA).
        split: ignored: there is no held-out part, "train" and "test" both give every image.

    Returns:
        An :class:`ImageDataset`; labels from first-level sub-folders (None if some images sit at
        the root), texts from ``metadata.jsonl`` ("" for images without a caption; None without the
        file), ``skipped`` = unreadable files (each warned about, then a one-line summary).

    Raises:
        UserError: no path, a missing folder, no readable image, or a malformed metadata.jsonl.
    """
    del split  # documented: both splits are the whole folder
    size, channels = resolution or DEFAULT_RESOLUTION, channels or DEFAULT_CHANNELS
    root = _check_args(path, channels)
    files = find_images(root)
    class_names, labels = folder_classes(root, files)
    captions = read_captions(root)
    pixels, kept = _decode_all(files, size, channels)
    if not kept:
        raise UserError(f"no images (.png/.jpg/.jpeg/.webp) found under {root}: point data.path at a folder of images")
    skipped = len(files) - len(kept)
    if skipped:
        warnings.warn(f"skipped {skipped} unreadable files under {root}", stacklevel=2)
    texts = None if captions is None else [captions.get(files[i].relative_to(root).as_posix(), "") for i in kept]
    return ImageDataset(name="image-folder", images=torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
                        labels=None if labels is None else torch.tensor([labels[i] for i in kept], dtype=torch.int64),
                        class_names=class_names, texts=texts, skipped=skipped)
