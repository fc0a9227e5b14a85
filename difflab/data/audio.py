"""Audio files: one reader, one writer, and a folder of your own recordings as a dataset.

Layout of a folder (the Hugging Face ``audiofolder`` convention)::

    DIR/alice/0001.wav        the parent folder names the speaker (without a metadata.jsonl)
    DIR/bob/0002.flac
    DIR/metadata.jsonl        optional: {"file_name": "alice/0001.wav", "text": "...", "speaker": "alice",
                              "split": "train"} per line

Every file is decoded eagerly by :func:`read_audio` (soundfile: WAV, FLAC, OGG; integer PCM of 8 to 32 bits
and float), mixed down to mono by the mean of its channels and resampled with soxr to the run's rate.

The split without a ``"split"`` in metadata.jsonl is fixed by the file's name (:func:`split_of`): a file is in
"test" when the CRC-32 of its path relative to the folder is divisible by :data:`TEST_BUCKETS` (about 10%),
so the same file is always on the same side, on any machine, whatever else the folder holds.

Bad input never stops a run with a traceback: unreadable files (not audio, truncated, empty, no permission)
are skipped with one warning that counts them and names the first; none readable is a
:class:`~difflab.errors.UserError`, as is a metadata.jsonl line that is not a JSON object with a string
"file_name".
"""

from __future__ import annotations

import io
import posixpath
import re
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm.auto import tqdm

from difflab.errors import UserError
from difflab.files import os_error, read_manifest, require_file
from difflab.paths import atomic_path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
METADATA = "metadata.jsonl"
SPLITS = ("train", "test")
TEST_BUCKETS = 10  # a file is in "test" when crc32(its relative path) % TEST_BUCKETS == 0: about 1 in 10
DEFAULT_SEGMENT_SECONDS = 10.0
MIN_SEGMENT_SECONDS = 1.0  # the tail of a cut file shorter than this is dropped
PCM16_SCALE = 32768  # 16-bit PCM full scale, as libsndfile reads it back (sample / 32768)
PCM16_RANGE = (-32768, 32767)
PROGRESS_MIN_FILES = 500  # fewer files than this: no progress bar
REASON_CHARS = 120  # a decoder's message is cut to this many characters
AUDIO_FIX = "re-export it as WAV, FLAC or OGG, or delete it"
# libsndfile's header log for a WAV: "data : 44100 (should be 22028)" when the data chunk is cut short
_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_BLOCK_ALIGN = re.compile(r"Block Align\s*:\s*(\d+)")
_STREAMING_SIZES = (0, 0xFFFFFFFF)  # data sizes a streaming writer leaves in the header: not a truncation


@dataclass(frozen=True)
class AudioDataset:
    """Mono waveforms in memory, one entry per utterance (or per segment of a long file)."""

    waves: list[np.ndarray]     # float32 (L,) each, in [-1, 1], at sample_rate
    texts: list[str] | None     # transcripts ("" where a file has none or was cut); None without metadata.jsonl
    speakers: list[str]         # speaker (voice) name of each wave
    sample_rate: int            # Hz
    skipped: int                # files that could not be read
    names: list[str]            # file path relative to the folder; "#k" appended for the k-th segment of a cut file

    def __len__(self) -> int:
        return len(self.waves)

    @property
    def seconds(self) -> float:
        """Total duration of all waves."""
        return sum(len(w) for w in self.waves) / self.sample_rate


# ---------------------------------------------------------------- one file


def _check_rate(sample_rate: int) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
        raise UserError(f"sample rate {sample_rate!r} is not a positive integer (Hz): use e.g. 22050")


def _fail(path: Path, problem: str, fix: str = AUDIO_FIX) -> UserError:
    return UserError(f"audio file {path} {problem}: {fix}")


def _short(err: Exception) -> str:
    """An exception's message, one short line (its type name when it has none)."""
    return (str(err).splitlines()[0] if str(err) else type(err).__name__)[:REASON_CHARS]


def _check_complete(path: Path, extra_info: str) -> None:
    """UserError when libsndfile's header log says the WAV data chunk holds fewer frames than it promises."""
    m = _DATA_CHUNK.search(extra_info)
    if m is None:
        return
    promised, present = int(m.group(1)), int(m.group(2))
    align = _BLOCK_ALIGN.search(extra_info)
    frame = int(align.group(1)) if align else 1
    if promised not in _STREAMING_SIZES and promised // max(frame, 1) > present // max(frame, 1):
        raise _fail(path, f"is truncated (its header promises {promised} bytes of audio, it holds {present})")


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """float32 (L, C) samples as stored, and the file's sample rate; every failure one UserError line."""
    path = require_file(path, "audio file", "check the path")
    try:
        with open(path, "rb") as fh:
            if not fh.read(1):
                raise _fail(path, "is empty (0 bytes)")
            fh.seek(0)
            with sf.SoundFile(fh) as f:
                _check_complete(path, f.extra_info)
                data = f.read(dtype="float32", always_2d=True)  # (L, C)
                rate = f.samplerate
    except OSError as e:
        raise os_error(e, path, "audio file") from None
    except sf.LibsndfileError as e:
        text = e.error_string.strip()[:REASON_CHARS]  # libsndfile's own words, without the file object's repr
        if "Format not recognised" in text:
            raise _fail(path, "is not a WAV, FLAC or OGG file") from None
        raise _fail(path, f"is truncated or corrupt ({text})") from None
    except (RuntimeError, ValueError, TypeError, MemoryError) as e:  # soundfile's other complaints on bad headers
        raise _fail(path, f"could not be decoded ({_short(e)})") from None
    if data.shape[0] == 0:
        raise _fail(path, "holds no samples (zero length)")
    if not np.isfinite(data).all():
        raise _fail(path, "holds NaN or infinite samples")
    return data, rate


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """One audio file as mono float32 samples at ``sample_rate``.

    Args:
        path: a WAV, FLAC or OGG file (8/16/24/32-bit integer PCM or float; any number of channels).
        sample_rate: the rate to return, in Hz; the file is resampled with soxr when its own rate differs.

    Returns:
        float32 ``(L,)`` in [-1, 1]: the mean of the channels (float files clipped to [-1, 1]).

    Raises:
        UserError: one line naming the file, its problem (missing, a folder, no permission, empty, not audio,
            truncated or corrupt, zero length) and the fix.
    """
    _check_rate(sample_rate)
    data, rate = _decode(Path(path))
    wave = data.mean(axis=1, dtype=np.float32)  # (L, C) -> (L,)
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate)
    return np.clip(wave, -1.0, 1.0).astype(np.float32, copy=False)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write mono ``audio`` (float (L,), clipped to [-1, 1]) as a 16-bit PCM WAV, atomically.

    Returns:
        ``path``.

    Raises:
        UserError: the file cannot be written (no permission, disk full).
    """
    wave = np.clip(np.nan_to_num(np.asarray(audio, dtype=np.float32).reshape(-1)), -1.0, 1.0)  # (L,)
    pcm = np.clip(np.round(wave * PCM16_SCALE), *PCM16_RANGE).astype(np.int16)  # +1.0 -> 32767
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, subtype="PCM_16", format="WAV")
    with atomic_path(path, "audio file") as tmp:
        tmp.write_bytes(buf.getvalue())
    return Path(path)


# ---------------------------------------------------------------- the folder


def find_audio(root: Path) -> list[Path]:
    """Audio files under ``root``, recursively, sorted by relative path; hidden files and folders skipped.

    Entries named like audio that are folders are kept (reading them is a counted skip, not silence).
    """
    found = [p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def split_of(name: str) -> str:
    """The fixed split of a file without a "split" in metadata: "test" iff crc32(name) % TEST_BUCKETS == 0.

    Args:
        name: the file's path relative to the folder, with "/" separators.
    """
    return "test" if zlib.crc32(name.encode("utf-8")) % TEST_BUCKETS == 0 else "train"


def read_metadata(root: Path) -> dict[str, dict[str, str | None]] | None:
    """``file_name -> {"text", "speaker", "split"}`` from ``root/metadata.jsonl``; None without the file.

    Missing keys are None; blank lines are skipped.

    Raises:
        UserError: the file is not UTF-8, or a line is not a JSON object with a string "file_name", or its
            "text"/"speaker" is not a string, or its "split" is not "train" or "test".
    """
    meta = root / METADATA
    if not meta.is_file():
        return None
    rows: dict[str, dict[str, str | None]] = {}
    for n, row in read_manifest(meta, "metadata file", "a.wav"):
        for key in ("text", "speaker"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise UserError(f'{meta} line {n} has a "{key}" that is a {type(row[key]).__name__}, not a string: '
                                f'write it in quotes')
        if row.get("split") is not None and row["split"] not in SPLITS:
            raise UserError(f'{meta} line {n} has "split": {row["split"]!r}: use "train" or "test" (or leave it out)')
        rows[posixpath.normpath(row["file_name"])] = {k: row.get(k) for k in ("text", "speaker", "split")}
    return rows


def _segments(wave: np.ndarray, size: int, min_size: int) -> list[np.ndarray]:
    """``wave`` whole when it fits in ``size`` samples, else consecutive ``size`` pieces (a tail under ``min_size``
    dropped)."""
    if len(wave) <= size:
        return [wave]
    pieces = [wave[i:i + size] for i in range(0, len(wave), size)]
    return pieces if len(pieces[-1]) >= min_size else pieces[:-1]


def _check_args(path: str | Path, sample_rate: int, split: str, segment_seconds: float) -> Path:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    _check_rate(sample_rate)
    if not segment_seconds >= MIN_SEGMENT_SECONDS:
        raise UserError(f"segment_seconds={segment_seconds!r} is shorter than {MIN_SEGMENT_SECONDS:g} s: "
                        f"use e.g. {DEFAULT_SEGMENT_SECONDS:g}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"audio folder {root} does not exist or is not a folder: point it at a folder of "
                        f".wav/.flac/.ogg files")
    return root


def load_audio_folder(path: str | Path, sample_rate: int, split: str = "train",
                      segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> AudioDataset:
    """The audio files of one split of a folder, decoded into memory.

    Args:
        path: the folder, searched recursively for .wav/.flac/.ogg.
        sample_rate: the rate of the returned waves (files at other rates are resampled).
        split: "train" or "test": from metadata.jsonl's "split", else :func:`split_of` the file name.
        segment_seconds: files longer than this are cut into consecutive segments of this length (a tail
            shorter than :data:`MIN_SEGMENT_SECONDS` dropped); a cut file's segments have text "".

    Returns:
        An :class:`AudioDataset`. With metadata.jsonl: texts and speakers from it ("" text and the parent
        folder as speaker for files it does not list). Without: texts None, speaker = parent folder name.

    Raises:
        UserError: a missing folder, bad arguments, no audio files, none readable in the split, or a
            malformed metadata.jsonl.
    """
    root = _check_args(path, sample_rate, split, segment_seconds)
    files = find_audio(root)
    if not files:
        raise UserError(f"no audio files (.wav/.flac/.ogg) found under {root}: point it at a folder of audio")
    meta = read_metadata(root)
    names = [f.relative_to(root).as_posix() for f in files]
    if meta is not None:
        _warn_unmatched(root, meta, set(names))
    rows = [(meta or {}).get(n, {}) for n in names]
    chosen = [i for i, (n, row) in enumerate(zip(names, rows)) if (row.get("split") or split_of(n)) == split]
    if not chosen:
        raise UserError(f"none of the {len(files)} audio files under {root} is in the {split!r} split: "
                        f"add files, or set \"split\" in {METADATA}")
    waves, texts, speakers, out_names, failures = [], [], [], [], []
    size, min_size = round(segment_seconds * sample_rate), round(MIN_SEGMENT_SECONDS * sample_rate)
    quiet = len(chosen) < PROGRESS_MIN_FILES or not sys.stderr.isatty()
    for i in tqdm(chosen, desc="decoding audio", unit="file", disable=quiet):
        try:
            wave = read_audio(files[i], sample_rate)
        except UserError as err:
            failures.append(f"{names[i]}: {str(err).removeprefix(f'audio file {files[i]} ')}")
            continue
        pieces = _segments(wave, size, min_size)
        for k, piece in enumerate(pieces):
            waves.append(piece)
            texts.append((rows[i].get("text") or "") if len(pieces) == 1 else "")
            speakers.append(rows[i].get("speaker") or files[i].parent.name)
            out_names.append(names[i] if len(pieces) == 1 else f"{names[i]}#{k}")
    if failures:
        warnings.warn(f"skipped {len(failures)} of {len(chosen)} audio files in {root} that could not be read "
                      f"(first: {failures[0]})", stacklevel=2)
    if not waves:
        raise UserError(f"no audio under {root} could be read ({len(failures)} skipped; first: {failures[0]}): "
                        f"point it at a folder of readable .wav/.flac/.ogg files")
    return AudioDataset(waves=waves, texts=None if meta is None else texts, speakers=speakers,
                        sample_rate=sample_rate, skipped=len(failures), names=out_names)


def _warn_unmatched(root: Path, meta: dict[str, dict[str, str | None]], names: set[str]) -> None:
    """One warning counting the metadata rows whose file_name is no audio file of the folder."""
    unmatched = [name for name in meta if name not in names]
    if unmatched:
        warnings.warn(f"{root / METADATA} names {len(unmatched)} of {len(meta)} files that are not audio files "
                      f"under {root} (first: {unmatched[0]!r}): their rows are unused; fix those file_name values "
                      f"(relative to the folder) or add the files", stacklevel=3)
