"""Odd but valid images decode right; bad image files and bad metadata.jsonl lines never give a traceback."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from difflab.cli import main
from difflab.data import load_dataset
from difflab.data.image_folder import METADATA, read_image
from difflab.errors import UserError

RED, WHITE, GREEN = (255, 0, 0), (255, 255, 255), (0, 255, 0)
SIDE = 8  # side of the small test images
JPEG_QUALITY = 95
JPEG_TOLERANCE = 12  # JPEG's lossy colours: per-channel distance allowed from the colour saved
ORIENTATION_TAG = 0x0112  # EXIF "Orientation"
ROTATE_90_CW = 6  # its value for "rotate 90 degrees clockwise to display"


# ---------------------------------------------------------------- odd but valid images


def _half_transparent_rgba(path: Path) -> None:
    """Left half opaque red, right half fully transparent black (dropping alpha would leave it black)."""
    x = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    x[:, :SIDE // 2] = (*RED, 255)
    Image.fromarray(x).save(path)  # RGBA


def _half_transparent_la(path: Path) -> None:
    """Top half opaque grey 50, bottom half transparent black."""
    x = np.zeros((SIDE, SIDE, 2), dtype=np.uint8)
    x[:SIDE // 2] = (50, 255)
    Image.fromarray(x, mode="LA").save(path)


def _palette(path: Path, transparent: bool) -> None:
    """Palette image: left half index 0 (red), right half index 1 (black; the transparency entry if ``transparent``)."""
    im = Image.new("P", (SIDE, SIDE), 0)
    im.putpalette([*RED, 0, 0, 0])
    im.paste(1, (SIDE // 2, 0, SIDE, SIDE))
    im.save(path, **({"transparency": 1} if transparent else {}))


def _cmyk_jpeg(path: Path) -> None:
    """A red JPEG stored as CMYK."""
    Image.new("RGB", (SIDE, SIDE), RED).convert("CMYK").save(path, quality=JPEG_QUALITY)


def _sixteen_bit(path: Path) -> None:
    """16-bit greyscale PNG: left half 65535 (white), right half 32768 (mid grey)."""
    x = np.full((SIDE, SIDE), 32768, dtype=np.uint16)
    x[:, :SIDE // 2] = 65535
    Image.fromarray(x).save(path)  # I;16


def _exif_rotated(path: Path) -> None:
    """Stored 16 wide x 8 high, white with a red top-left corner; EXIF says rotate 90 degrees clockwise."""
    x = np.full((SIDE, 2 * SIDE, 3), 255, dtype=np.uint8)  # (H, W, C)
    x[:SIDE // 2, :SIDE // 2] = RED
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = ROTATE_90_CW
    Image.fromarray(x).save(path, quality=JPEG_QUALITY, exif=exif.tobytes())


def _one_bit(path: Path) -> None:
    """1-bit image: left half black, right half white."""
    im = Image.new("1", (SIDE, SIDE), 0)
    im.paste(1, (SIDE // 2, 0, SIDE, SIDE))
    im.save(path)


ODD = {"rgba.png": _half_transparent_rgba, "la.png": _half_transparent_la,
       "palette.png": lambda p: _palette(p, transparent=False),
       "palette_transparent.png": lambda p: _palette(p, transparent=True),
       "cmyk.jpg": _cmyk_jpeg, "gray16.png": _sixteen_bit, "exif6.jpg": _exif_rotated, "bits.png": _one_bit,
       "tiny.png": lambda p: Image.new("RGB", (1, 1), GREEN).save(p),
       "thin.webp": lambda p: Image.new("RGB", (1, 200), GREEN).save(p, lossless=True)}


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "odd"
    folder.mkdir()
    for name, make in ODD.items():
        make(folder / name)
    return folder


def _close(pixels: np.ndarray, colour: tuple[int, ...], tol: int = 1) -> bool:
    return bool(np.abs(pixels.astype(int) - np.asarray(colour)).max() <= tol)


def test_transparency_is_composited_onto_white(odd_folder: Path) -> None:
    half = SIDE // 2
    rgba = read_image(odd_folder / "rgba.png", 3)
    assert rgba.shape == (SIDE, SIDE, 3) and _close(rgba[:, :half], RED) and _close(rgba[:, half:], WHITE)
    assert _close(read_image(odd_folder / "rgba.png", 1)[:, half:], (255,))
    kept = read_image(odd_folder / "rgba.png", 4)  # RGBA runs keep the alpha
    assert _close(kept[:, :half], (*RED, 255)) and _close(kept[:, half:, 3], (0,))
    la = read_image(odd_folder / "la.png", 1)
    assert la.shape == (SIDE, SIDE, 1) and _close(la[:half], (50,)) and _close(la[half:], (255,))
    assert _close(read_image(odd_folder / "la.png", 3)[half:], WHITE)
    trans = read_image(odd_folder / "palette_transparent.png", 3)
    assert _close(trans[:, :half], RED) and _close(trans[:, half:], WHITE)
    assert _close(read_image(odd_folder / "palette_transparent.png", 4)[:, half:, 3], (0,))


def test_palette_cmyk_sixteen_bit_and_one_bit(odd_folder: Path) -> None:
    half = SIDE // 2
    pal = read_image(odd_folder / "palette.png", 3)
    assert _close(pal[:, :half], RED) and _close(pal[:, half:], (0, 0, 0))  # no transparency entry: black stays
    assert _close(read_image(odd_folder / "cmyk.jpg", 3), RED, JPEG_TOLERANCE)
    gray = read_image(odd_folder / "gray16.png", 1)
    assert gray.shape == (SIDE, SIDE, 1) and (gray[:, :half] == 255).all() and (gray[:, half:] == 128).all()
    assert (read_image(odd_folder / "gray16.png", 3)[:, half:] == 128).all()
    bits = read_image(odd_folder / "bits.png", 3)
    assert (bits[:, :half] == 0).all() and (bits[:, half:] == 255).all()


def test_exif_orientation_is_applied(odd_folder: Path) -> None:
    x = read_image(odd_folder / "exif6.jpg", 3)
    assert x.shape == (2 * SIDE, SIDE, 3)  # a viewer shows it 8 wide x 16 high
    q = SIDE // 4  # centre of the red corner block, in from the edge
    assert _close(x[q, SIDE - 1 - q], RED, JPEG_TOLERANCE)  # stored top-left -> shown top-right
    assert _close(x[q, q], WHITE, JPEG_TOLERANCE) and _close(x[-1 - q, -1 - q], WHITE, JPEG_TOLERANCE)


def test_odd_folder_loads_without_warnings_and_trains(odd_folder: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset("image-folder", path=str(odd_folder), resolution=16)
    assert len(ds) == len(ODD) and ds.skipped == 0 and ds.images.shape[1:] == (3, 16, 16)
    names = sorted(ODD)
    tiny = ds.images[names.index("tiny.png")].permute(1, 2, 0).numpy()  # (H, W, C)
    assert _close(tiny, GREEN) and _close(ds.images[names.index("thin.webp")].permute(1, 2, 0).numpy(), GREEN)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "2", "--set", "data.name=image-folder",
                 f"data.path={odd_folder}", "data.resolution=16", *TINY]) == 0


# ---------------------------------------------------------------- bad image files


@pytest.fixture
def bad_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """3 good images, and files that are truncated, text, empty, unreadable and too large (sorted in that order)."""
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), GREEN).save(folder / f"good{i}.png")
    noisy = Image.effect_noise((64, 64), 50).convert("RGB")  # noise: a PNG long enough to cut in half
    noisy.save(folder / "a_truncated.png")
    data = (folder / "a_truncated.png").read_bytes()
    (folder / "a_truncated.png").write_bytes(data[:len(data) // 2])
    (folder / "b_text.png").write_text("this is not an image\n")
    (folder / "c_empty.png").write_bytes(b"")
    denied = folder / "d_denied.png"
    Image.new("RGB", (16, 16), GREEN).save(denied)
    denied.chmod(0)
    if os.access(denied, os.R_OK):  # root reads anything: make the read fail as it would for a user
        real = pathlib.Path.read_bytes

        def read_bytes(self: Path) -> bytes:
            if self == denied:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self)
        monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 64x64 fine, 80x80 over it (PIL warns), 110x110 twice
    Image.new("RGB", (80, 80), GREEN).save(folder / "e_big.png")
    Image.new("RGB", (110, 110), GREEN).save(folder / "f_bomb.png")  # PIL raises
    return folder


BAD = {"a_truncated.png": "is truncated", "b_text.png": "is not PNG, JPEG or WebP data",
       "c_empty.png": "is empty", "d_denied.png": "permission denied",
       "e_big.png": "too many pixels", "f_bomb.png": "too many pixels"}


def test_each_bad_file_is_one_line(bad_folder: Path) -> None:
    for name, words in BAD.items():
        with pytest.raises(UserError) as err:
            read_image(bad_folder / name)
        message = str(err.value)
        assert words in message and str(bad_folder / name) in message and "\n" not in message, message


def test_bad_files_are_skipped_with_one_warning(bad_folder: Path) -> None:
    with pytest.warns(UserWarning) as record:
        ds = load_dataset("image-folder", path=str(bad_folder), resolution=16)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"skipped {len(BAD)} unreadable files of {len(BAD) + 3} under {bad_folder}")
    assert f"{bad_folder / 'a_truncated.png'} is truncated" in messages[0]
    assert len(ds) == 3 and ds.skipped == len(BAD) and _close(ds.images.permute(0, 2, 3, 1).numpy(), GREEN)


def test_no_readable_image_is_one_error_line(bad_folder: Path, tmp_path: Path, capsys) -> None:
    for name in ("good0.png", "good1.png", "good2.png"):
        (bad_folder / name).unlink()
    with pytest.warns(UserWarning, match="skipped"):
        code = main(["train", "--out", str(tmp_path / "run"), "--no-progress", "--max-steps", "2",
                     "--set", "data.name=image-folder", f"data.path={bad_folder}", "data.resolution=16", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: no images under "), err
    assert "a_truncated.png is truncated" in err[0] and "data.path" in err[0]


# ---------------------------------------------------------------- metadata.jsonl


def _captioned(folder: Path, metadata: bytes) -> Path:
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), GREEN).save(folder / name)
    (folder / METADATA).write_bytes(metadata)
    return folder


E_ACUTE = "\u00e9".encode("latin-1")  # one byte, never valid UTF-8 on its own
LATIN_1 = b'{"file_name": "a.png", "text": "a"}\n{"file_name": "b.png", "text": "caf' + E_ACUTE + b'"}\n'
BAD_METADATA = {
    "not UTF-8": (LATIN_1, f"is not UTF-8 text (byte {LATIN_1.index(E_ACUTE)}, line 2): save it as UTF-8"),
    "not JSON": (b'{"file_name": "a.png", "text": "a"}\n{"file_name": "b.png", text: "b"}\n',
                 "line 2 is not JSON"),
    "no file_name": (b'{"text": "a"}\n', 'line 1 has no "file_name"'),
    "not an object": (b'["a.png", "a"]\n', 'line 1 has no "file_name"'),
    "file_name not a string": (b'{"file_name": 3, "text": "a"}\n', 'line 1 has no "file_name"'),
    "text not a string": (b'\n{"file_name": "a.png", "text": 5}\n', 'line 2 has a "text" that is a int, not a string'),
}


@pytest.mark.parametrize("case", BAD_METADATA)
def test_bad_metadata_is_one_line(case: str, tmp_path: Path) -> None:
    metadata, words = BAD_METADATA[case]
    folder = _captioned(tmp_path / "cap", metadata)
    with pytest.raises(UserError) as err:
        load_dataset("image-folder", path=str(folder), resolution=8)
    message = str(err.value)
    assert words in message and str(folder / METADATA) in message and "\n" not in message, message


def test_bad_metadata_through_the_cli(tmp_path: Path, capsys) -> None:
    folder = _captioned(tmp_path / "cap", BAD_METADATA["not JSON"][0])
    code = main(["train", "--out", str(tmp_path / "run"), "--no-progress", "--max-steps", "2",
                 "--set", "data.name=image-folder", f"data.path={folder}", "data.resolution=16", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "line 2 is not JSON" in err[0], err


def test_captions_of_missing_files_warn_once(tmp_path: Path) -> None:
    rows = [{"file_name": "a.png", "text": "first"}, {"file_name": "gone.png", "text": "x"},
            {"file_name": "sub/gone.jpg", "text": "y"}, {"file_name": "b.png", "text": None}]
    text = "\ufeff" + "\n".join(json.dumps(r) for r in rows) + "\n"  # a byte-order mark, as Notepad writes
    folder = _captioned(tmp_path / "cap", text.encode("utf-8"))
    with pytest.warns(UserWarning) as record:
        ds = load_dataset("image-folder", path=str(folder), resolution=8)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "names 2 of 4 files that are not images" in messages[0], messages
    assert "'gone.png'" in messages[0]
    assert ds.texts == ["first", ""] and ds.skipped == 0
