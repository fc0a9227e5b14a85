"""The image data layer: loaders, the IDX format, image folders and pixel conversions."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import DATASETS, load_dataset
from difflab.data.images import random_flip, to_model_range, to_uint8
from difflab.errors import UserError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- digits


def test_digits_shapes_labels_range() -> None:
    train = load_dataset("digits")
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 8, 8)
    assert train.labels is not None and train.labels.dtype == torch.int64
    assert set(train.labels.tolist()) == set(range(10))
    assert train.class_names == [str(d) for d in range(10)] and train.num_classes == 10
    assert train.images.max() == 255 and train.images.min() == 0  # 16 -> 255, 0 -> 0
    assert train.channels == 1 and train.resolution == (8, 8) and train.texts is None


def test_digits_split_disjoint_and_deterministic() -> None:
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert len(train) + len(test) == 1797 and len(train) == int(0.8 * 1797)
    assert torch.equal(train.images, load_dataset("digits", split="train").images)
    # Together the splits are exactly load_digits (as a multiset of (image, label)): disjoint, covering.
    full = load_digits()
    raw = np.rint(full.images * (255 / 16)).astype(np.uint8).reshape(1797, -1)
    expected = sorted(r.tobytes() + bytes([y]) for r, y in zip(raw, full.target))
    got = sorted(x.numpy().tobytes() + bytes([int(y)]) for ds in (train, test)
                 for x, y in zip(ds.images.reshape(len(ds), -1), ds.labels))
    assert got == expected


def test_digits_resolution_and_channels() -> None:
    ds = load_dataset("digits", resolution=16, channels=3, split="test")
    assert ds.images.shape[1:] == (3, 16, 16)
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])


def test_unknown_name_and_split() -> None:
    with pytest.raises(UserError, match="fashion-mnist"):
        load_dataset("cifar")
    with pytest.raises(UserError, match="split"):
        load_dataset("digits", split="val")
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "image-folder", "photos", "shapes")


# ---------------------------------------------------------------- pixel conversions


def test_model_range_round_trip_exact() -> None:
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    y = to_model_range(x)
    assert y.dtype == torch.float32 and y.min() == -1 and y.max() == 1
    assert torch.equal(to_uint8(y), x)
    assert to_uint8(torch.tensor([-3.0, 5.0])).tolist() == [0, 255]  # clamped


def test_random_flip_chosen_samples_and_reproducible() -> None:
    x = torch.randn(64, 2, 3, 5)
    out = random_flip(x, torch.Generator().manual_seed(7))
    chosen = torch.rand(64, generator=torch.Generator().manual_seed(7)) < 0.5
    assert torch.equal(out[chosen], x[chosen].flip(-1)) and torch.equal(out[~chosen], x[~chosen])
    assert 0 < chosen.sum() < 64
    assert torch.equal(out, random_flip(x, torch.Generator().manual_seed(7)))


# ---------------------------------------------------------------- IDX (MNIST family)


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written out by hand: 00 00 08 ndim, big-endian uint32 sizes, uint8 data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_idx(folder: Path, stem: str, array: np.ndarray, gz: bool) -> None:
    data = _idx_bytes(array.astype(np.uint8))
    (folder / (stem + ".gz")).write_bytes(gzip.compress(data)) if gz else (folder / stem).write_bytes(data)


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (7, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 7),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3)}
    for i, (stem, array) in enumerate(arrays.items()):
        _write_idx(tmp_path, stem, array, gz=i % 2 == 0)  # mix plain and gzipped
    return tmp_path, arrays


def test_idx_round_trip(tiny_mnist: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, arrays = tiny_mnist
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("mnist", path=str(folder), split=split)
        assert np.array_equal(ds.images[:, 0].numpy(), arrays[f"{prefix}-images-idx3-ubyte"])
        assert np.array_equal(ds.labels.numpy(), arrays[f"{prefix}-labels-idx1-ubyte"])
        assert ds.class_names == [str(d) for d in range(10)]
    resized = load_dataset("mnist", path=str(folder), resolution=32, channels=3)
    assert resized.images.shape == (7, 3, 32, 32) and resized.images.dtype == torch.uint8


def test_idx_found_recursively_with_dotted_names(tmp_path: Path) -> None:
    sub = tmp_path / "raw"
    sub.mkdir()
    _write_idx(sub, "train-images.idx3-ubyte", np.zeros((2, 28, 28)), gz=False)
    _write_idx(sub, "train-labels.idx1-ubyte", np.array([3, 4]), gz=True)
    ds = load_dataset("fashion-mnist", path=str(tmp_path))
    assert ds.labels.tolist() == [3, 4] and ds.class_names[9] == "Ankle boot"


def test_idx_corrupt_file(tiny_mnist: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, _ = tiny_mnist
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")  # 1 of 5 labels
    with pytest.raises(UserError, match="truncated"):
        load_dataset("mnist", path=str(folder), split="test")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"GIF89a not idx")
    with pytest.raises(UserError, match="magic"):
        load_dataset("mnist", path=str(folder), split="test")


def test_missing_fashion_and_mnist(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="make data") as err:
        load_dataset("fashion-mnist", path=str(tmp_path / "nowhere"))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="make data"):
        load_dataset("fashion-mnist", path=str(tmp_path))  # exists, but no IDX files
    with pytest.raises(UserError, match="data.path"):
        load_dataset("mnist")


def test_real_fashion_mnist() -> None:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed: run make data")
    train, test = load_dataset("fashion-mnist"), load_dataset("fashion-mnist", split="test")
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
    for ds in (train, test):
        assert ds.labels.min() == 0 and ds.labels.max() == 9 and ds.num_classes == 10


# ---------------------------------------------------------------- image folders


def _save(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_classes_captions_and_corrupt_file(tmp_path: Path) -> None:
    _save(tmp_path / "dog" / "a.png", (40, 40), (255, 0, 0))
    _save(tmp_path / "cat" / "b.jpg", (50, 40), (0, 255, 0))
    _save(tmp_path / "cat" / "deep" / "c.webp", (40, 60), (0, 0, 255))
    (tmp_path / "dog" / "broken.png").write_bytes(np.random.default_rng(0).bytes(300))
    rows = [{"file_name": "dog/a.png", "text": "a red dog"}, {"file_name": "cat/deep/c.webp", "text": "blue cat"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.warns(UserWarning) as record:
        ds = load_dataset("image-folder", path=str(tmp_path), resolution=16)
    messages = [str(w.message) for w in record]
    assert any("broken.png" in m for m in messages) and any("skipped 1 unreadable" in m for m in messages)
    assert ds.skipped == 1 and len(ds) == 3 and ds.images.shape == (3, 3, 16, 16)
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]  # cat/b, cat/deep/c, dog/a
    assert ds.texts == ["", "blue cat", "a red dog"]
    assert ds.images[2, 0].min() >= 250 and ds.images[2, 1:].max() <= 5  # dog/a is red


def test_image_folder_root_images_unlabelled_and_greyscale(tmp_path: Path) -> None:
    _save(tmp_path / "x.png", (8, 8), (10, 10, 10))
    _save(tmp_path / "sub" / "y.png", (8, 8), (20, 20, 20))
    ds = load_dataset("image-folder", path=str(tmp_path), resolution=8, channels=1, split="test")
    assert ds.labels is None and ds.class_names == [] and ds.texts is None and ds.images.shape == (2, 1, 8, 8)


def test_image_folder_resize_and_centre_crop(tmp_path: Path) -> None:
    img = np.zeros((20, 60, 3), dtype=np.uint8)  # H=20, W=60: black sides, white band around the centre 20
    img[:, 14:46] = 255
    Image.fromarray(img).save(tmp_path / "wide.png")
    ds = load_dataset("image-folder", path=str(tmp_path), resolution=10)
    assert ds.resolution == (10, 10) and ds.channels == 3
    assert ds.images.min() >= 250  # 20x60 -> 10x30, centre 10x10 kept: white (an off-centre crop has black)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no images"):
        load_dataset("image-folder", path=str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("image-folder", path=str(tmp_path / "missing"))
    with pytest.raises(UserError, match="data.path"):
        load_dataset("image-folder")
    (tmp_path / "only.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no images"):
        load_dataset("image-folder", path=str(tmp_path))
