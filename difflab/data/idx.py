"""MNIST and Fashion-MNIST from IDX files (plain or gzipped).

The IDX format (http://yann.lecun.com/exdb/mnist/): a magic number ``00 00 TT DD`` where TT is the
element type (0x08 = uint8, ...) and DD the number of dimensions, then DD big-endian uint32 sizes,
then the data in C order. Debian's ``dataset-fashion-mnist`` installs the four standard
``*-idx?-ubyte.gz`` files flat in ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from difflab.data.images import ImageDataset, gray_to_channels, resize_uint8
from difflab.errors import UserError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(d) for d in range(10)]
# (split, kind) -> standard file stem; "train-images.idx3-ubyte" (dots) is accepted too.
IDX_STEMS = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
             ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FIX = "set data.path=DIR holding the IDX files (train-images-idx3-ubyte[.gz] and friends)"
_FASHION_FIX = f"run `make data` (installs Debian's dataset-fashion-mnist) or {_FIX}"


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (``.gz`` decompressed) into a native-endian numpy array.

    Raises:
        UserError: the file cannot be read, has a bad magic number, or has the wrong length.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"cannot read IDX file {path} ({err}): replace it with an intact download") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number): replace it with an intact download")
    ndim, dtype = data[3], np.dtype(_IDX_DTYPES[data[2]])
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data[:header], ">u4", offset=4)) if len(data) >= header else None
    if shape is None or len(data) != header + int(np.prod(shape)) * dtype.itemsize:
        raise UserError(f"IDX file {path} is truncated or corrupt (size does not match its header): "
                        f"replace it with an intact download")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _normalise(name: str) -> str:
    """File name -> comparable stem: no ``.gz``, dots as dashes, lower case."""
    return name.lower().removesuffix(".gz").replace(".", "-")


def find_idx_file(root: Path, stem: str) -> Path | None:
    """The IDX file named ``stem`` (plain or .gz, dots or dashes) under ``root``, searched recursively.

    The shallowest match wins; ties go to the plain-sorted first path. None when absent.
    """
    direct = [root / stem, root / f"{stem}.gz"]
    found = [p for p in direct if p.is_file()]
    if not found:
        found = [p for p in root.rglob("*") if p.is_file() and _normalise(p.name) == stem]
    return min(found, key=lambda p: (len(p.relative_to(root).parts), str(p)), default=None)


def _missing(name: str, root: Path, what: str = "") -> UserError:
    """The one-line error for an absent dataset (or one of its files, ``what``)."""
    title = "Fashion-MNIST" if name == "fashion-mnist" else "MNIST"
    fix = _FASHION_FIX if name == "fashion-mnist" else _FIX
    return UserError(f"{title}{' ' + what if what else ''} not found under {root}: {fix}")


def _read_split(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W) uint8, labels (N,) int64) of one split, checked against each other."""
    files = {kind: find_idx_file(root, IDX_STEMS[split, kind]) for kind in ("images", "labels")}
    for kind, file in files.items():
        if file is None:
            raise _missing(name, root, f"{split} {kind} ({IDX_STEMS[split, kind]}[.gz])")
    images, labels = read_idx(files["images"]), read_idx(files["labels"])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"IDX shapes do not match ({files['images']}: {images.shape}, {files['labels']}: "
                        f"{labels.shape}): point data.path at one dataset's images and labels")
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise UserError(f"labels in {files['labels']} are outside 0..9: replace it with an intact download")
    return images.astype(np.uint8), labels.astype(np.int64)


def load_idx_dataset(name: str, *, path: str | None = None, resolution: int | None = None,
                     channels: int | None = None, split: str = "train") -> ImageDataset:
    """MNIST or Fashion-MNIST from a folder of IDX files.

    Args:
        name: "mnist" or "fashion-mnist".
        path: the folder (searched recursively); None = ``/usr/share/datasets/fashion-mnist``
            for fashion-mnist, required for mnist.
        resolution: square side; None keeps the native 28 (others: bilinear, antialiased).
        channels: 1 (native) or 3 (the grey channel repeated).
        split: "train" (train-*) or "test" (t10k-*).

    Returns:
        An :class:`ImageDataset` with labels 0-9.

    Raises:
        UserError: no path for mnist, the folder or a file is missing, or a file is corrupt.
    """
    if path is None and name == "mnist":
        raise UserError(f"mnist has no default folder: {_FIX}")
    root = Path(path).expanduser() if path is not None else FASHION_DIR
    if not root.is_dir():
        raise _missing(name, root)
    pixels, labels = _read_split(name, root, split)
    images = torch.from_numpy(pixels)[:, None]  # (N, 1, H, W)
    if resolution is not None:
        images = resize_uint8(images, resolution)
    return ImageDataset(name=name, images=gray_to_channels(images, channels, name),
                        labels=torch.from_numpy(labels),
                        class_names=list(FASHION_CLASSES if name == "fashion-mnist" else MNIST_CLASSES), texts=None)
