"""Speech metrics: spectral distances, the Griffin-Lim baseline, speed, intelligibility and diversity.

Notation (Yamamoto et al. 2020, "Parallel WaveGAN", Eq. 4-6)::

    x, y         the reference and the estimated waveform (B, L)
    S, S_hat     |STFT| of x and of y at one resolution (n_fft, hop_length, win_length): (B, F, T)
    L_sc         spectral convergence ||S - S_hat||_F / ||S||_F                              (Eq. 5)
    L_mag        log STFT-magnitude distance (1 / N) ||log S - log S_hat||_1, N = F T       (Eq. 6)
    L_mr_stft    (1 / M) sum over the M resolutions of (L_sc + L_mag)                         (Eq. 4)

Both terms are per item (``reduction="none"``) and then averaged over the batch (``"mean"``); Parallel
WaveGAN's code takes the Frobenius norms over the whole batch instead, which weighs loud items more.

The other measures:

    log-mel L1   mean |log-mel(x) - log-mel(y)| in the front end of :mod:`difflab.data.mel` (nats)
    Griffin-Lim  the mel inverted by non-negative least squares, phases by Griffin & Lim (1984) with the
                 momentum of Perraudin et al. (2013): the baseline any vocoder has to beat
    RTF          real-time factor: compute seconds / audio seconds (below 1 is faster than real time)
    word acc.    1 - WER (Levenshtein word edits / reference words, over the whole list; clamped at 0) of
                 pocketsphinx's offline transcripts, as an intelligibility proxy
    diversity    mean pairwise L1 between the time-averaged log-mel profiles (n_mels,) of a set of samples

librosa, soxr, pocketsphinx and jiwer belong to the speech extra and are imported where they are used.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from difflab.config import AudioConfig
from difflab.data.mel import (as_batch, check_audio_config, log_mel as compute_log_mel, need_speech_extra,
                              nyquist_f_max, samples_for, stft_magnitude)

# (n_fft, hop_length, win_length) of each STFT of mr_stft_distance
MR_STFT_RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
# STFT magnitudes below this (silence, -100 dB re 1) count as it in the log term and in the denominator of
# L_sc, as AudioConfig.log_floor does for the log-mel: log(0) and 0 / 0 never happen
MAG_FLOOR = 1e-5
ASR_SAMPLE_RATE = 16000  # Hz: the rate of pocketsphinx's bundled en-us acoustic model
INT16_MAX = 32767  # full scale of the 16-bit PCM pocketsphinx reads
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ASR_WHAT = "speech recognition"


# -- spectral distances ----------------------------------------------------------------------
def _waves(x: Tensor) -> Tensor:
    """(B, L) from (L,), (B, L) or (B, 1, L)."""
    return x[None] if x.ndim == 1 else as_batch(x)


def mr_stft_distance(x: Tensor, y: Tensor, resolutions: Sequence[tuple[int, int, int]] = MR_STFT_RESOLUTIONS,
                     reduction: str = "mean") -> Tensor:
    """The multi-resolution STFT distance L_mr_stft of Parallel WaveGAN (Eq. 4-6, see the module doc).

    Differentiable in both arguments (a training loss as well as a metric); 0 for identical signals.

    Args:
        x: reference waveforms (L,), (B, L) or (B, 1, L); its magnitudes are the denominator of L_sc.
        y: estimated waveforms, the same shape.
        resolutions: (n_fft, hop_length, win_length) of each STFT (Hann window, centred, reflect padding).
        reduction: "mean" (a scalar, the mean over items) or "none" (one value per item, (B,)).

    Raises:
        ValueError: shapes that differ, an unknown reduction, or no resolutions.
        UserError: waveforms too short for the largest n_fft (at least n_fft // 2 + 1 samples).
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"unknown reduction {reduction!r}: use 'mean' or 'none'")
    if x.shape != y.shape:
        raise ValueError(f"need waveforms of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not resolutions:
        raise ValueError("need at least one (n_fft, hop_length, win_length) resolution")
    x, y = _waves(x), _waves(y)  # (B, L)
    total = x.new_zeros(x.shape[0], dtype=torch.float32)  # (B,)
    for n_fft, hop, win in resolutions:
        s, s_hat = stft_magnitude(x, n_fft, hop, win), stft_magnitude(y, n_fft, hop, win)  # (B, F, T)
        sc = torch.linalg.vector_norm(s - s_hat, dim=(1, 2)) / \
            torch.linalg.vector_norm(s, dim=(1, 2)).clamp(min=MAG_FLOOR)  # (B,)  Eq. 5
        mag = (s.clamp(min=MAG_FLOOR).log() - s_hat.clamp(min=MAG_FLOOR).log()).abs().mean(dim=(1, 2))  # Eq. 6
        total = total + sc + mag
    total = total / len(resolutions)  # (B,)  Eq. 4
    return total.mean() if reduction == "mean" else total


def log_mel_l1(reference: Tensor | np.ndarray, estimate: Tensor | np.ndarray, cfg: AudioConfig) -> float:
    """Mean |log-mel(reference) - log-mel(estimate)| (nats) of two waveforms (L,) or batches (B, L), in the
    front end of :mod:`difflab.data.mel`; the longer one's frames are trimmed to the shorter's."""
    a, b = compute_log_mel(reference, cfg), compute_log_mel(estimate, cfg)  # (..., n_mels, frames)
    t = min(a.shape[-1], b.shape[-1])
    return float((a[..., :t] - b[..., :t].to(a.device)).abs().mean())


def griffin_lim(log_mel: np.ndarray | Tensor, cfg: AudioConfig, n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """A waveform (samples_for(frames),) float32 from one log-mel (n_mels, frames), without a vocoder.

    exp(log-mel) is inverted to an STFT magnitude by non-negative least squares through the same filterbank
    (``librosa.feature.inverse.mel_to_stft``, power 1), then ``librosa.griffinlim`` finds phases in ``n_iter``
    iterations from random phases drawn with ``seed``, with the front end's window, hop and padding.

    Raises:
        ValueError: a log-mel that is not (cfg.n_mels, frames), or n_iter < 1.
    """
    librosa = need_speech_extra("librosa", "Griffin-Lim")
    check_audio_config(cfg)
    m = log_mel.detach().cpu().numpy() if isinstance(log_mel, Tensor) else np.asarray(log_mel)
    if m.ndim != 2 or m.shape[0] != cfg.n_mels:
        raise ValueError(f"need one log-mel ({cfg.n_mels}, frames), got shape {m.shape}")
    if n_iter < 1:
        raise ValueError(f"n_iter={n_iter}: Griffin-Lim needs at least 1 iteration")
    mag = librosa.feature.inverse.mel_to_stft(np.exp(m.astype(np.float32)), sr=cfg.sample_rate, n_fft=cfg.n_fft,
                                              power=1.0, fmin=cfg.f_min, fmax=nyquist_f_max(cfg))  # (F, frames)
    wave = librosa.griffinlim(mag, n_iter=n_iter, hop_length=cfg.hop_length, win_length=cfg.win_length,
                              n_fft=cfg.n_fft, window="hann", center=True, pad_mode="reflect",
                              length=samples_for(m.shape[1], cfg), init="random",
                              random_state=np.random.default_rng(seed))
    return wave.astype(np.float32)


def real_time_factor(seconds: float, samples: int, sample_rate: int) -> float:
    """Compute time / duration of the ``samples`` made (below 1: faster than real time).

    Raises:
        ValueError: no samples or a sample rate that is not positive.
    """
    if samples <= 0 or sample_rate <= 0:
        raise ValueError(f"need a positive number of samples and sample rate, got {samples} and {sample_rate}")
    return float(seconds) / (samples / sample_rate)


# -- speech recognition ------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _decoder():
    """The one pocketsphinx decoder (bundled en-us acoustic model, language model and CMUdict), made once."""
    pocketsphinx = need_speech_extra("pocketsphinx", ASR_WHAT)
    return pocketsphinx.Decoder(samprate=ASR_SAMPLE_RATE, loglevel="FATAL")


def _pcm16(wave: np.ndarray | Tensor, sample_rate: int) -> bytes:
    """A mono waveform (L,) in [-1, 1] as 16-bit PCM at ASR_SAMPLE_RATE (soxr, clipped to full scale)."""
    x = wave.detach().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave)
    x = np.squeeze(x).astype(np.float32)
    if x.ndim != 1:
        raise ValueError(f"need one mono waveform (L,) per utterance, got shape {np.shape(wave)}")
    if sample_rate != ASR_SAMPLE_RATE and x.size:
        x = need_speech_extra("soxr", ASR_WHAT).resample(x, sample_rate, ASR_SAMPLE_RATE)
    return (np.clip(x, -1.0, 1.0) * INT16_MAX).astype(np.int16).tobytes()


def _decode(waves: Sequence[np.ndarray | Tensor], sample_rate: int, search: str | None) -> list[str]:
    """The hypothesis of each waveform, one utterance each, under the named search (None = the language model)."""
    decoder = _decoder()
    decoder.activate_search(search)
    out = []
    for wave in waves:
        pcm = _pcm16(wave, sample_rate)
        if not pcm:  # pocketsphinx cannot take an empty buffer: nothing said
            out.append("")
            continue
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)  # full_utt: cepstral mean normalisation over the whole wave
        decoder.end_utt()
        hyp = decoder.hyp()
        out.append(normalise_text(hyp.hypstr) if hyp is not None else "")
    return out


def transcribe(waves: Sequence[np.ndarray | Tensor], sample_rate: int) -> list[str]:
    """pocketsphinx's transcript of each mono waveform (L,) at ``sample_rate``: lowercase words, normalised as
    :func:`normalise_text` does ("" where nothing was recognised). Offline; the decoder is made on first use."""
    return _decode(waves, sample_rate, None)


def _grammar_search(words: Sequence[str]) -> str:
    """The name of a JSGF search ``public <w> = word | word | ... ;`` over ``words``, added once."""
    decoder = _decoder()
    words = [normalise_text(w) for w in words]
    if not words or not all(words):
        raise ValueError(f"need a non-empty vocabulary of non-empty words, got {words!r}")
    missing = [part for w in words for part in w.split() if decoder.lookup_word(part) is None]
    if missing:
        raise ValueError(f"not in pocketsphinx's dictionary: {', '.join(sorted(set(missing)))}")
    name = "words_" + hashlib.sha1(" | ".join(words).encode()).hexdigest()[:12]
    try:
        decoder.activate_search(name)
    except KeyError:
        grammar = f"#JSGF V1.0;\ngrammar {name};\npublic <w> = {' | '.join(words)} ;\n"
        decoder.add_jsgf_string(name, grammar)
    return name


def recognise_words(waves: Sequence[np.ndarray | Tensor], sample_rate: int,
                    words: Sequence[str] = DIGITS) -> list[str]:
    """The one word of ``words`` recognised in each mono waveform (L,) ("" where none was): pocketsphinx
    restricted to that closed vocabulary by a JSGF grammar, e.g. a spoken-digit accuracy.

    Raises:
        ValueError: an empty vocabulary, or words missing from pocketsphinx's dictionary.
    """
    return _decode(waves, sample_rate, _grammar_search(words))


def normalise_text(text: str) -> str:
    """Lowercase words: punctuation becomes a space (apostrophes inside words stay: "don't"), whitespace
    collapsed. "Hello, World-wide!" -> "hello world wide"."""
    text = re.sub(r"[^\w\s']|_", " ", text.lower())
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())


def word_accuracy(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """1 - WER of ``hypotheses`` against ``references`` after :func:`normalise_text`, clamped at 0.

    The WER is jiwer's over the whole list: word edits (substitutions, deletions, insertions) over reference
    words, so long utterances weigh more.

    Raises:
        ValueError: lists of different lengths, or references without a single word.
    """
    jiwer = need_speech_extra("jiwer", "the word error rate")
    if len(references) != len(hypotheses):
        raise ValueError(f"need one hypothesis per reference, got {len(hypotheses)} for {len(references)}")
    refs, hyps = [normalise_text(r) for r in references], [normalise_text(h) for h in hypotheses]
    if not any(refs):
        raise ValueError("the references have no words, so the word error rate is undefined")
    return max(0.0, 1.0 - float(jiwer.wer(refs, hyps)))


# -- diversity -----------------------------------------------------------------------------------
def diversity(mels: Sequence[Tensor | np.ndarray]) -> float:
    """Mean pairwise L1 (nats per mel band) between the time-averaged profiles (n_mels,) of log-mels
    (n_mels, frames) of any lengths: 0 when all samples are alike in spectrum.

    Raises:
        ValueError: fewer than two log-mels, or ones that are not (n_mels, frames) of one n_mels.
    """
    if len(mels) < 2:
        raise ValueError(f"diversity needs at least two log-mels, got {len(mels)}")
    profiles = [torch.as_tensor(np.asarray(m)) if not isinstance(m, Tensor) else m.detach().cpu() for m in mels]
    if any(p.ndim != 2 for p in profiles) or len({p.shape[0] for p in profiles}) != 1:
        raise ValueError(f"need log-mels (n_mels, frames) of one n_mels, got {[tuple(p.shape) for p in profiles]}")
    p = torch.stack([m.double().mean(dim=1) for m in profiles])  # (N, n_mels)
    pairwise = torch.cdist(p, p, p=1) / p.shape[1]  # (N, N) mean |difference| per band
    n = len(profiles)
    return float(pairwise.sum() / (n * (n - 1)))  # the diagonal is 0: the mean over ordered pairs i != j


__all__ = ["ASR_SAMPLE_RATE", "DIGITS", "MAG_FLOOR", "MR_STFT_RESOLUTIONS", "diversity", "griffin_lim",
           "log_mel_l1", "mr_stft_distance", "normalise_text", "real_time_factor", "recognise_words",
           "stft_magnitude", "transcribe", "word_accuracy"]
