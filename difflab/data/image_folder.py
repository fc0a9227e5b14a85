"""A folder of your own images, optionally in class sub-folders and with captions.

Layout (the Hugging Face ``imagefolder`` convention)::

    DIR/cat/0001.png          first-level sub-folder = class name (only when every image is in one)
    DIR/dog/0002.jpg
    DIR/metadata.jsonl        optional: {"file_name": "cat/0001.png", "text": "a cat"} per line

Every image is decoded eagerly (:func:`read_image` is the decoder, also for single files):
turned upright by its EXIF orientation, converted to the run's channels (transparent pixels
composited onto white, 16-bit greyscale scaled to 8 bits, palette, 1-bit and CMYK converted),
then its centre square resized to the resolution.

Bad input never stops a run with a traceback:

- files that cannot be read (truncated, not an image, empty, no permission, too many pixels)
  are skipped with one warning that counts them and names the first; none readable is a
  :class:`~difflab.errors.UserError`;
- a metadata.jsonl that is not UTF-8, has a line that is not a JSON object, lacks a string
  "file_name" or has a "text" that is not a string (or null) is a one-line UserError naming the
  line; captions naming files that are not images of the folder are one counting warning.
"""

from __future__ import annotations

import io
import posixpath
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from difflab.data.images import ImageDataset
from difflab.errors import UserError
from difflab.files import read_bytes, read_manifest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_RESOLUTION = 32
DEFAULT_CHANNELS = 3
PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> PIL mode
METADATA = "metadata.jsonl"
PROGRESS_MIN_FILES = 500  # fewer files than this: no progress bar

ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")  # PIL modes with an alpha band
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit greyscale PNG (Pillow opens it as one of these)
HIGH_DEPTH_MAX = 65535  # white of a 16-bit image
UINT8_MAX = 255
BACKGROUND = (UINT8_MAX, UINT8_MAX, UINT8_MAX, UINT8_MAX)  # opaque white, under transparent pixels
REASON_CHARS = 120  # a decoder's message is cut to this many characters
IMAGE_FIX = "re-export it as PNG/JPEG/WebP or delete it"


# ---------------------------------------------------------------- one image


def _first_line(err: Exception) -> str:
    """An exception's message, one short line (its type name when it has none)."""
    return (str(err).splitlines()[0] if str(err) else type(err).__name__)[:REASON_CHARS]


def _reason(err: Exception) -> str:
    """What a decoder's exception says went wrong, as the end of "image PATH ..."."""
    text = _first_line(err)
    return "is truncated" if "truncated" in text else f"could not be decoded ({text})"


def _decode(path: Path) -> Image.Image:
    """The pixels of an image file, fully decoded and turned upright by its EXIF orientation (mode as stored).

    Raises:
        UserError: one line: the file is missing, unreadable, empty, not an image, corrupt or too large.
    """
    data = read_bytes(path, "image", IMAGE_FIX)
    if not data:
        raise UserError(f"image {path} is empty (0 bytes): {IMAGE_FIX}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's limit, a skip instead of a warning
            with Image.open(io.BytesIO(data)) as src:
                src.load()
                return ImageOps.exif_transpose(src)  # a decoded copy, upright as a viewer shows it
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UserError(f"image {path} has too many pixels to decode safely ({_first_line(err)}): "
                        f"shrink it or delete it") from None
    except UnidentifiedImageError:
        raise UserError(f"image {path} is not PNG, JPEG or WebP data: {IMAGE_FIX}") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types on corrupt data; each becomes one line
        raise UserError(f"image {path} {_reason(err)}: {IMAGE_FIX}") from None


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit greyscale -> "L", ``0..65535`` scaled to ``0..255`` (PIL's own convert clips at 255 instead)."""
    x = np.clip(np.asarray(im, dtype=np.float64), 0, HIGH_DEPTH_MAX)  # (H, W)
    return Image.fromarray(np.round(x * (UINT8_MAX / HIGH_DEPTH_MAX)).astype(np.uint8))


def convert_image(im: Image.Image, mode: str) -> Image.Image:
    """Any decoded image in PIL ``mode`` ("L", "RGB" or "RGBA").

    Transparent pixels (alpha band, or a palette / greyscale transparency entry) are composited onto
    white unless ``mode`` keeps alpha; 16-bit greyscale is scaled to 8 bits; palette, 1-bit and CMYK
    images go through RGB.

    Raises:
        ValueError: a pixel mode PIL cannot convert to RGB.
    """
    if im.mode in HIGH_DEPTH_MODES:
        im = _to_8bit(im)
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        if mode == "RGBA":
            return rgba
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND), rgba)
    if im.mode not in ("1", "L", "RGB", "RGBA"):
        im = im.convert("RGB")  # P, CMYK, YCbCr, ...
    return im.convert(mode)


def _mode(channels: int) -> str:
    """The PIL mode of ``channels``; UserError for a count image files cannot give."""
    if channels not in PIL_MODES:
        raise UserError(f"image-folder cannot give channels={channels}: set data.channels to 1, 3 or 4")
    return PIL_MODES[channels]


def _read(path: Path, mode: str) -> Image.Image:
    """:func:`_decode` then :func:`convert_image`; every failure a one-line UserError."""
    im = _decode(path)
    try:
        return convert_image(im, mode)
    except ValueError as err:
        raise UserError(f"image {path} has pixel mode {im.mode}, which cannot be converted to {mode} "
                        f"({_first_line(err)}): {IMAGE_FIX}") from None


def read_image(path: str | Path, channels: int = DEFAULT_CHANNELS) -> np.ndarray:
    """One image file, upright and converted, at its own size.

    Args:
        path: a PNG, JPEG or WebP file (any mode PIL reads: RGBA, LA, palette, CMYK, 16-bit, 1-bit).
        channels: 1 (greyscale), 3 (RGB) or 4 (RGBA); transparency is composited onto white for 1 and 3.

    Returns:
        uint8 ``(H, W, C)`` pixels, rotated by the file's EXIF orientation.

    Raises:
        UserError: one line naming the file and its problem (missing, no permission, empty,
            not an image, truncated, too many pixels) and the fix.
    """
    im = _read(Path(path), _mode(channels))
    return np.asarray(im, dtype=np.uint8).reshape(im.height, im.width, -1)  # (H, W, C)


def decode_image(path: Path, size: int, mode: str) -> np.ndarray:
    """One image file -> uint8 ``(size, size, C)``: read as :func:`read_image`, centre square resized.

    Raises:
        UserError: as :func:`read_image`.
    """
    im = _read(path, mode)
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    im = im.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(im, dtype=np.uint8).reshape(size, size, -1)  # (H, W, C)


# ---------------------------------------------------------------- the folder


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

    A missing or null "text" is "" (an uncaptioned image); blank lines are skipped.

    Raises:
        UserError: the file is not UTF-8, or a line is not a JSON object with a string "file_name"
            and a string (or null) "text".
    """
    meta = root / METADATA
    if not meta.is_file():
        return None
    captions: dict[str, str] = {}
    for n, row in read_manifest(meta, "captions file", "a.png"):
        caption = row.get("text")
        if caption is not None and not isinstance(caption, str):
            raise UserError(f'{meta} line {n} has a "text" that is a {type(caption).__name__}, not a string: '
                            f'write it in quotes, e.g. "text": "a cat"')
        captions[posixpath.normpath(row["file_name"])] = caption or ""
    return captions


def _warn_unmatched(root: Path, captions: dict[str, str], files: list[Path]) -> None:
    """One warning counting the captions whose file_name is no image file of the folder."""
    names = {f.relative_to(root).as_posix() for f in files}
    unmatched = [name for name in captions if name not in names]
    if unmatched:
        warnings.warn(f"{root / METADATA} names {len(unmatched)} of {len(captions)} files that are not images under "
                      f"{root} (first: {unmatched[0]!r}): their captions are unused; fix those file_name values "
                      f"(relative to the folder) or add the images", stacklevel=3)


def _decode_all(files: list[Path], size: int, channels: int) -> tuple[np.ndarray, list[int], list[str]]:
    """(uint8 (K, H, W, C) of the readable files, their indices in ``files``, why each other file was skipped)."""
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    kept: list[int] = []
    failures: list[str] = []
    quiet = len(files) < PROGRESS_MIN_FILES or not sys.stderr.isatty()
    for i, f in enumerate(tqdm(files, desc="decoding images", unit="img", disable=quiet)):
        try:
            out[len(kept)] = decode_image(f, size, PIL_MODES[channels])
        except UserError as err:
            failures.append(str(err))
            continue
        kept.append(i)
    return out[:len(kept)], kept, failures


def _check_args(path: str | None, channels: int) -> Path:
    """The existing root folder; UserError for a missing path or bad channel count."""
    _mode(channels)
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
        resolution: square side (default 32): the centre square of each image, resized to it.
        channels: 3 (RGB, default), 1 (greyscale) or 4 (RGBA).
        split: ignored: there is no held-out part, "train" and "test" both give every image.

    Returns:
        An :class:`ImageDataset`; labels from first-level sub-folders (None if some images sit at
        the root), texts from ``metadata.jsonl`` ("" for images without a caption; None without the
        file), ``skipped`` = unreadable files (one warning counts them and names the first).

    Raises:
        UserError: no path, a missing folder, no readable image, or a malformed metadata.jsonl.
    """
    del split  # documented: both splits are the whole folder
    size, channels = resolution or DEFAULT_RESOLUTION, channels or DEFAULT_CHANNELS
    root = _check_args(path, channels)
    files = find_images(root)
    if not files:
        raise UserError(f"no images (.png/.jpg/.jpeg/.webp) found under {root}: point data.path at a folder of images")
    class_names, labels = folder_classes(root, files)
    captions = read_captions(root)
    if captions is not None:
        _warn_unmatched(root, captions, files)
    pixels, kept, failures = _decode_all(files, size, channels)
    if failures:
        warnings.warn(f"skipped {len(failures)} unreadable file{'s' if len(failures) > 1 else ''} of {len(files)} "
                      f"under {root} (first: {failures[0]})", stacklevel=2)
    if not kept:
        raise UserError(f"no images under {root} could be read ({len(files)} skipped; first: {failures[0]}): "
                        f"point data.path at a folder of readable images")
    texts = None if captions is None else [captions.get(files[i].relative_to(root).as_posix(), "") for i in kept]
    return ImageDataset(name="image-folder", images=torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
                        labels=None if labels is None else torch.tensor([labels[i] for i in kept], dtype=torch.int64),
                        class_names=class_names, texts=texts, skipped=len(failures))
