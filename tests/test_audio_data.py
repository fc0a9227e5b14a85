"""Audio files, audio folders and the synthesised speech corpus (difflab.data.audio, difflab.data.speech)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from difflab.data.audio import load_audio_folder, read_audio, split_of, write_wav
from difflab.data.speech import (
    SAMPLE_RATE,
    TEST_SPEAKERS,
    load_speech,
    make_speech_corpus,
    synthesize_espeak,
    synthesize_piper,
)
from difflab.errors import UserError

RATE = 22050


def tone(seconds: float, rate: int = RATE, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---------------------------------------------------------------- read_audio / write_wav

# subtype -> how far a decoded sample may be from the written float (one quantisation step, with slack)
SUBTYPES = {"PCM_16": 2 / 2**15, "PCM_24": 2 / 2**23, "PCM_32": 2 / 2**31, "PCM_U8": 2 / 2**7,
            "FLOAT": 1e-7, "DOUBLE": 1e-7}


@pytest.mark.parametrize("subtype", sorted(SUBTYPES))
def test_read_wav_subtypes(tmp_path: Path, subtype: str) -> None:
    x = tone(0.25)
    sf.write(tmp_path / "a.wav", x, RATE, subtype=subtype)
    assert sf.info(tmp_path / "a.wav").subtype == subtype
    y = read_audio(tmp_path / "a.wav", RATE)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= SUBTYPES[subtype]


@pytest.mark.parametrize("fmt", ["FLAC", "OGG"])
def test_read_compressed(tmp_path: Path, fmt: str) -> None:
    x = tone(0.5)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, RATE, format=fmt)
    y = read_audio(path, RATE)
    assert y.dtype == np.float32 and abs(len(y) - len(x)) <= RATE // 100
    if fmt == "FLAC":  # lossless (16-bit)
        assert np.abs(y - x).max() <= SUBTYPES["PCM_16"]
    else:  # Vorbis is lossy: the tone's energy is kept
        assert abs(np.sqrt(np.mean(y**2)) - np.sqrt(np.mean(x**2))) < 0.05


def test_stereo_mixdown_is_channel_mean(tmp_path: Path) -> None:
    left, right = tone(0.2, freq=300), tone(0.2, freq=500, amp=0.3)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(tmp_path / "s.wav", RATE), (left + right) / 2, atol=1e-6)


def test_resample_keeps_frequency_and_duration(tmp_path: Path) -> None:
    seconds, freq = 2.0, 1000.0
    sf.write(tmp_path / "hi.wav", tone(seconds, 44100, freq), 44100, subtype="PCM_16")
    y = read_audio(tmp_path / "hi.wav", RATE)
    assert abs(len(y) - seconds * RATE) <= 2
    peak = np.argmax(np.abs(np.fft.rfft(y))) * RATE / len(y)  # Hz of the strongest bin
    assert abs(peak - freq) <= RATE / len(y)


def test_write_read_round_trip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(-1.2, 1.2, RATE // 4).astype(np.float32)  # out of range: clipped
    path = write_wav(tmp_path / "sub" / "r.wav", x, RATE)
    info = sf.info(path)
    assert (info.subtype, info.samplerate, info.channels) == ("PCM_16", RATE, 1)
    assert np.abs(read_audio(path, RATE) - np.clip(x, -1, 1)).max() <= 1 / 2**15 + 1e-6
    assert [p.name for p in path.parent.iterdir()] == ["r.wav"]  # no temporary left behind


def _bad_files(root: Path) -> list[Path]:
    """A .wav holding text, an empty one, a truncated one and a folder named like a WAV."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "text.wav").write_text("this is not audio at all " * 20)
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "full.wav", tone(0.5), RATE, subtype="PCM_16")
    data = (root / "full.wav").read_bytes()
    (root / "truncated.wav").write_bytes(data[:len(data) // 2])
    (root / "full.wav").unlink()
    (root / "x.wav").mkdir()
    return [root / n for n in ("text.wav", "empty.wav", "truncated.wav", "x.wav")]


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    for path in _bad_files(tmp_path) + [tmp_path / "missing.wav"]:
        with pytest.raises(UserError) as err:
            read_audio(path, RATE)
        message = str(err.value)
        assert str(path) in message and "\n" not in message and ": " in message, message
        e = err.value  # no soundfile traceback printed under it
        assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_one_line_error(tmp_path: Path) -> None:
    sf.write(tmp_path / "locked.wav", tone(0.1), RATE, subtype="PCM_16")
    (tmp_path / "locked.wav").chmod(0)
    with pytest.raises(UserError, match="permission denied"):
        read_audio(tmp_path / "locked.wav", RATE)


# ---------------------------------------------------------------- load_audio_folder


def _write_folder(root: Path, n: int, seconds: float = 0.1) -> list[str]:
    names = []
    for i in range(n):
        name = f"spk{i % 3}/utt{i:03d}.wav"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, tone(seconds, freq=200 + 10 * i), RATE, subtype="PCM_16")
        names.append(name)
    return names


def test_folder_without_metadata(tmp_path: Path) -> None:
    names = _write_folder(tmp_path, 40)
    train, test = (load_audio_folder(tmp_path, RATE, split) for split in ("train", "test"))
    assert train.texts is None and train.skipped == 0
    assert set(train.names).isdisjoint(test.names) and sorted(train.names + test.names) == sorted(names)
    assert test.names and all(split_of(n) == "test" for n in test.names)
    assert load_audio_folder(tmp_path, RATE, "train").names == train.names  # deterministic
    assert all(s == n.split("/")[0] for s, n in zip(train.speakers, train.names))


def test_folder_with_metadata(tmp_path: Path) -> None:
    names = _write_folder(tmp_path, 4)
    rows = [{"file_name": n, "text": f"words {i}", "speaker": f"voice{i}", "split": "test" if i == 3 else "train"}
            for i, n in enumerate(names)]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = load_audio_folder(tmp_path, RATE, "train")
    test = load_audio_folder(tmp_path, RATE, "test")
    assert train.names == names[:3] and test.names == names[3:]
    assert train.texts == ["words 0", "words 1", "words 2"] and train.speakers == ["voice0", "voice1", "voice2"]
    assert test.texts == ["words 3"]


def test_long_files_are_cut_into_segments(tmp_path: Path) -> None:
    sf.write(tmp_path / "long.wav", tone(25.0), RATE, subtype="PCM_16")      # 10 + 10 + 5
    sf.write(tmp_path / "tail.wav", tone(20.5), RATE, subtype="PCM_16")      # 10 + 10 (+ 0.5 dropped)
    sf.write(tmp_path / "short.wav", tone(0.5), RATE, subtype="PCM_16")      # whole
    meta = [{"file_name": n, "split": "train"} for n in ("long.wav", "tail.wav", "short.wav")]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in meta))
    ds = load_audio_folder(tmp_path, RATE, "train", segment_seconds=10.0)
    lengths = {n: len(w) / RATE for n, w in zip(ds.names, ds.waves)}
    assert lengths == {"long.wav#0": 10.0, "long.wav#1": 10.0, "long.wav#2": 5.0,
                       "short.wav": 0.5, "tail.wav#0": 10.0, "tail.wav#1": 10.0}


def test_bad_files_skipped_with_one_warning(tmp_path: Path) -> None:
    _bad_files(tmp_path / "bad")
    good = _write_folder(tmp_path, 3)
    meta = [{"file_name": n, "split": "train"} for n in good + [f"bad/{b}" for b in
                                                                ("text.wav", "empty.wav", "truncated.wav", "x.wav")]]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in meta))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_audio_folder(tmp_path, RATE, "train")
    assert ds.names == good and ds.skipped == 4
    assert len(caught) == 1 and "skipped 4 of 7 audio files" in str(caught[0].message)


def test_empty_or_unreadable_folder_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no audio files"):
        load_audio_folder(tmp_path, RATE)
    _bad_files(tmp_path)
    meta = [{"file_name": n, "split": "train"} for n in ("text.wav", "empty.wav", "truncated.wav", "x.wav")]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in meta))
    with pytest.warns(UserWarning), pytest.raises(UserError, match="could be read"):
        load_audio_folder(tmp_path, RATE)


# ---------------------------------------------------------------- the engines and the corpus


def _check_word(wave: np.ndarray, rate: int) -> None:
    assert rate == SAMPLE_RATE and wave.dtype == np.float32
    assert 0.2 <= len(wave) / rate <= 3.0
    assert np.sqrt(np.mean(wave**2)) > 0.01 and np.abs(wave).max() <= 1.0


def test_piper_says_a_word() -> None:
    _check_word(*synthesize_piper("seven", length_scale=1.0))


def test_espeak_says_a_word() -> None:
    _check_word(*synthesize_espeak("seven", "en-gb-scotland+m3", rate=160, pitch=60))
    with pytest.raises(UserError, match="no voice"):
        synthesize_espeak("seven", "xx-nonexistent")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_speech_corpus(tmp_path_factory.mktemp("speech") / "corpus", sentences=2, digit_repeats=1,
                              progress=False)


def test_corpus_manifest(corpus: Path) -> None:
    rows = [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines()]
    assert {r["text"] for r in rows} >= {"zero", "nine"} and len(rows) > 10
    for r in rows:
        assert set(r) == {"file_name", "text", "speaker", "split"} and r["split"] in ("train", "test")
        assert set(r["text"]) <= set("abcdefghijklmnopqrstuvwxyz' ")
        assert len(read_audio(corpus / r["file_name"], SAMPLE_RATE)) > 0
    train = [r for r in rows if r["split"] == "train"]
    assert train and not {r["speaker"] for r in train} & set(TEST_SPEAKERS)
    assert {r["speaker"] for r in rows if r["split"] == "test"} >= set(TEST_SPEAKERS)
    sentences = {r["text"] for r in rows} - {r["text"] for r in rows if len(r["text"].split()) == 1}
    assert len(sentences) == 2 and len({r["text"] for r in train} & sentences) == 1  # one held out
    assert not list(corpus.parent.glob(".tmp-*"))


def test_corpus_loads_and_refuses_overwrite(corpus: Path) -> None:
    rows = [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines()]
    test = load_speech(corpus, SAMPLE_RATE, "test")
    assert len(test) == sum(r["split"] == "test" for r in rows) and test.skipped == 0
    assert set(test.speakers) >= set(TEST_SPEAKERS)
    with pytest.raises(UserError, match="not empty"):
        make_speech_corpus(corpus, sentences=1, digit_repeats=0, progress=False)
    with pytest.raises(UserError, match="no metadata.jsonl"):
        load_speech(corpus / "wavs", SAMPLE_RATE, "train")


def test_difflab_data_speech_writes_a_corpus_of_chosen_words(tmp_path: Path, capsys) -> None:
    from difflab.cli import main

    out = tmp_path / "words"
    assert main(["data", "speech", "--out", str(out), "--sentences", "0", "--repeats", "1", "--words", "Hello"]) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert {r["text"] for r in rows} == {"hello"} and len(rows) == len({r["speaker"] for r in rows}) == 15
    assert all(r["file_name"].endswith("word-hello-0.wav") for r in rows)
    assert main(["data", "speech", "--out", str(tmp_path / "x"), "--sentences", "0", "--words", "two words"]) == 2
    assert "not single lowercase words" in capsys.readouterr().err
