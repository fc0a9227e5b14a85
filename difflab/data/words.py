"""Single spoken words as log-mel "images" (``task: spoken-words``): each utterance's log-mel spectrogram
(:mod:`difflab.data.mel`, the run's ``audio:`` front end) trimmed of the silence around the word, centred in
``n_mels`` frames (a square (1, n_mels, n_mels) image; padded with silence, the log floor) and stored as 8-bit
pixels like every image dataset: the range ``log(audio.log_floor) .. words.mel_max`` maps to 0..255 (a step of
about 0.05 nats at the defaults, a third of Griffin-Lim's log-mel error).

The built-in data is a corpus of the vocabulary only (:func:`~difflab.data.speech.make_speech_corpus` with no
sentences, every corpus voice saying each word ``words.repeats`` times; the test split is the voices no training
voice matches), synthesised once into the cache. ``data.path`` (a corpus folder) or ``data.name: audio-folder`` use
a folder of the user's recordings whose ``metadata.jsonl`` texts are the words.
"""

from __future__ import annotations

import math
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from difflab.config import AudioConfig, Config
from difflab.data.audio import METADATA, AudioDataset, load_audio_folder
from difflab.data.images import ImageDataset
from difflab.errors import UserError
from difflab.paths import cache_dir

WORDS_CORPUS_VERSION = 1  # bump when the words corpus' recipe changes


def words_corpus_dir(vocabulary: tuple[str, ...], repeats: int) -> Path:
    """Where the built-in corpus of ``vocabulary`` said ``repeats`` times per voice is kept (the name carries the
    recipe version, the repeats and a checksum of the words)."""
    tag = zlib.crc32(" ".join(vocabulary).encode()) & 0xFFFFFFFF
    return cache_dir("speech") / f"words-v{WORDS_CORPUS_VERSION}-r{repeats}-{tag:08x}"


def word_utterances(cfg: Config, split: str) -> AudioDataset:
    """The utterances of ``cfg.data`` (all of them; :func:`word_mels` keeps the vocabulary's)."""
    from difflab.data.speech import make_speech_corpus
    from difflab.tasks.vocoder import speech_dataset

    d, w = cfg.data, cfg.words
    if d.name == "speech" and d.path is None:
        root = words_corpus_dir(w.vocabulary, w.repeats)
        if not (root / METADATA).is_file():
            print(f"note: synthesising the built-in corpus of {len(w.vocabulary)} words into {root} (once)",
                  file=sys.stderr)
            make_speech_corpus(root, sentences=0, digit_repeats=w.repeats, words=w.vocabulary,
                               progress=sys.stderr.isatty())
        return load_audio_folder(root, cfg.audio.sample_rate, split)
    return speech_dataset(cfg, split)


def silence(cfg: AudioConfig) -> float:
    """The log-mel of silence: log(audio.log_floor)."""
    return math.log(cfg.log_floor)


def centre_word(mel: Tensor, frames: int, trim_db: float, floor: float) -> Tensor:
    """A log-mel (n_mels, F) cut to its frames within ``trim_db`` of the loudest (energy over the bands), then
    centred in ``frames`` frames: padded with ``floor`` or cut equally at both ends -> (n_mels, frames)."""
    db = 10.0 * torch.log10(torch.exp(2.0 * mel).sum(0))  # (F,) frame power in dB
    loud = torch.nonzero(db >= db.max() - trim_db).flatten()
    mel = mel[:, int(loud[0]):int(loud[-1]) + 1]
    F = mel.shape[1]
    if F >= frames:
        start = (F - frames) // 2
        return mel[:, start:start + frames]
    left = (frames - F) // 2
    return torch.nn.functional.pad(mel, (left, frames - F - left), value=floor)


def to_pixels(mel: Tensor, floor: float, mel_max: float) -> Tensor:
    """Log-mels -> uint8 pixels: ``floor`` .. ``mel_max`` to 0..255 (clamped; same shape)."""
    return ((mel - floor) / (mel_max - floor) * 255.0).round().clamp(0, 255).to(torch.uint8)


def from_model_range(x: Tensor, floor: float, mel_max: float) -> Tensor:
    """The model's [-1, 1] images -> log-mels (clamped to the range; same shape)."""
    return floor + (x.clamp(-1.0, 1.0) + 1.0) / 2.0 * (mel_max - floor)


def vocabulary_utterances(cfg: Config, split: str) -> tuple[list[np.ndarray], list[int], int]:
    """The waveforms (L,) of ``split`` whose transcript is a word of ``words.vocabulary``, their class ids (the
    word's index there), and the files skipped while loading.

    Raises:
        UserError: the data has no transcripts.
    """
    from difflab.evaluate.audio import normalise_text

    dataset = word_utterances(cfg, split)
    if dataset.texts is None:
        raise UserError(f"the {split} audio has no metadata.jsonl texts, so its words are unknown: add a "
                        f"metadata.jsonl with file_name and text (the word) for each file")
    index = {word: k for k, word in enumerate(cfg.words.vocabulary)}
    keep = [(i, index[t]) for i, t in enumerate(normalise_text(t) for t in dataset.texts) if t in index]
    return [dataset.waves[i] for i, _ in keep], [k for _, k in keep], dataset.skipped


def word_mels(cfg: Config, split: str) -> tuple[ImageDataset, float]:
    """The vocabulary's utterances of one split as an :class:`ImageDataset` of uint8 (N, 1, n_mels, n_mels)
    log-mel images with their word's class id, and the ``mel_max`` of their range (``words.mel_max``, else the
    largest log-mel value of these utterances).

    Raises:
        UserError: a word of the vocabulary has no utterance, or the data has no transcripts.
    """
    from difflab.data.mel import log_mel

    a, w = cfg.audio, cfg.words
    waves, labels, skipped = vocabulary_utterances(cfg, split)
    missing = sorted(set(w.vocabulary) - {w.vocabulary[k] for k in labels})
    if missing:
        raise UserError(f"the {split} split has no utterance of {', '.join(map(repr, missing))}: record them, or "
                        f"leave them out of words.vocabulary")
    floor = silence(a)
    mels = torch.stack([centre_word(log_mel(wave, a), a.n_mels, w.trim_db, floor)
                        for wave in waves])  # (N, n_mels, n_mels)
    mel_max = w.mel_max if w.mel_max is not None else float(mels.max())
    if mel_max <= floor:
        raise UserError(f"words.mel_max={mel_max} must be above the log floor {floor:.2f}: leave it unset (fitted)")
    images = to_pixels(mels, floor, mel_max)[:, None]  # (N, 1, n_mels, n_mels)
    return ImageDataset(f"{cfg.data.name} words", images, torch.tensor(labels, dtype=torch.long),
                        list(w.vocabulary), None, skipped=skipped), mel_max
