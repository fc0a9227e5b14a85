"""The log-mel spectrogram: the one speech front end of training, sampling and metrics.

Notation (the settings are :class:`~difflab.config.AudioConfig`'s)::

    x            a waveform (B, L) at sample_rate, float in [-1, 1]
    S            its STFT, Hann window of win_length zero-padded to n_fft, hop hop_length, centred
                 (x reflect-padded by n_fft // 2 on both sides): (B, n_fft // 2 + 1, frames) complex
    M            the mel filterbank (n_mels, n_fft // 2 + 1): librosa's Slaney-style triangles from f_min
                 to f_max, each normalised to unit area (``librosa.filters.mel`` defaults)
    log-mel      log(max(M |S|, log_floor)): magnitudes (power 1), not power, as HiFi-GAN and DiffWave use
    frames       L // hop_length + 1 (frame t is centred on sample t * hop_length)

This is ``np.log(np.maximum(librosa.feature.melspectrogram(y=x, sr=sample_rate, n_fft=n_fft,
hop_length=hop_length, win_length=win_length, window="hann", center=True, pad_mode="reflect", power=1.0,
n_mels=n_mels, fmin=f_min, fmax=f_max), log_floor))`` computed with ``torch.stft`` so that it runs on the GPU
and is differentiable (tests/test_mel.py checks the parity).
"""

from __future__ import annotations

import functools
import importlib

import numpy as np
import torch
from torch import Tensor, nn

from difflab.config import AudioConfig
from difflab.errors import UserError

SPEECH_EXTRA = "pip install 'difflab[speech]'"


def need_speech_extra(module: str, what: str):
    """Import ``module`` (a package of the speech extra), or raise a one-line UserError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs {module}, part of the speech extra: {SPEECH_EXTRA}") from None


def nyquist_f_max(cfg: AudioConfig) -> float:
    """The upper edge of the mel filterbank in Hz: ``cfg.f_max``, or sample_rate / 2 where it is None."""
    return cfg.sample_rate / 2 if cfg.f_max is None else float(cfg.f_max)


def check_audio_config(cfg: AudioConfig) -> None:
    """UserError (one line) for settings no STFT or mel filterbank can have.

    Raises:
        UserError: win_length > n_fft, hop_length > win_length (samples between windows are never seen),
            f_max above the Nyquist frequency, or f_min >= f_max.
    """
    if cfg.win_length > cfg.n_fft:
        raise UserError(f"audio.win_length={cfg.win_length} is longer than audio.n_fft={cfg.n_fft}: set "
                        f"win_length <= n_fft (the window is zero-padded to n_fft)")
    if cfg.hop_length > cfg.win_length:
        raise UserError(f"audio.hop_length={cfg.hop_length} is longer than audio.win_length={cfg.win_length}, so "
                        f"samples between windows are never analysed: set hop_length <= win_length")
    nyquist = cfg.sample_rate / 2
    f_max = nyquist_f_max(cfg)
    if f_max > nyquist:
        raise UserError(f"audio.f_max={cfg.f_max} Hz is above the Nyquist frequency {nyquist:g} Hz of "
                        f"audio.sample_rate={cfg.sample_rate}: set f_max <= {nyquist:g}, or null")
    if cfg.f_min >= f_max:
        raise UserError(f"audio.f_min={cfg.f_min} Hz is not below f_max={f_max:g} Hz: set f_min < f_max")


@functools.lru_cache(maxsize=16)
def _filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    librosa = need_speech_extra("librosa", "the mel filterbank")
    fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)
    return torch.from_numpy(np.ascontiguousarray(fb, dtype=np.float32))  # (n_mels, n_fft // 2 + 1)


def mel_filterbank(cfg: AudioConfig) -> Tensor:
    """The mel filterbank M (n_mels, n_fft // 2 + 1), float32 on the CPU: ``librosa.filters.mel`` with its
    Slaney defaults (``htk=False``, ``norm="slaney"``), cached per setting (a fresh copy each call).

    Raises:
        UserError: settings :func:`check_audio_config` rejects, or librosa missing.
    """
    check_audio_config(cfg)
    return _filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, float(cfg.f_min), nyquist_f_max(cfg)).clone()


def frames_for(samples: int, cfg: AudioConfig) -> int:
    """Log-mel frames of a waveform of ``samples`` samples: samples // hop_length + 1 (centred STFT)."""
    return samples // cfg.hop_length + 1


def samples_for(frames: int, cfg: AudioConfig) -> int:
    """The shortest waveform with ``frames`` log-mel frames: (frames - 1) * hop_length samples, so that
    ``frames_for(samples_for(n)) == n``; a waveform of L samples maps back to L rounded down to whole hops."""
    return (frames - 1) * cfg.hop_length


def as_batch(wave: Tensor) -> Tensor:
    """Waveforms (B, L) from (B, L) or (B, 1, L).

    Raises:
        ValueError: any other shape.
    """
    if wave.ndim == 3 and wave.shape[1] == 1:
        return wave[:, 0]  # (B, L)
    if wave.ndim != 2:
        raise ValueError(f"need waveforms (B, L) or (B, 1, L), got shape {tuple(wave.shape)}")
    return wave


def stft_magnitude(wave: Tensor, n_fft: int, hop_length: int, win_length: int) -> Tensor:
    """|STFT| (B, n_fft // 2 + 1, L // hop_length + 1) of waveforms (B, L) or (B, 1, L), differentiable.

    A Hann window of win_length (zero-padded to n_fft), centred frames on the reflect-padded signal, as
    ``librosa.stft(..., center=True, pad_mode="reflect")``; computed in float32 on the waveform's device.

    Raises:
        UserError: a waveform of at most n_fft // 2 samples (reflect padding needs more).
    """
    wave = as_batch(wave).float()  # (B, L)
    if wave.shape[-1] <= n_fft // 2:
        raise UserError(f"a waveform of {wave.shape[-1]} samples is too short for an STFT of n_fft={n_fft}: "
                        f"give at least {n_fft // 2 + 1} samples")
    window = torch.hann_window(win_length, device=wave.device)  # periodic, as scipy's get_window("hann")
    spec = torch.stft(wave, n_fft, hop_length=hop_length, win_length=win_length, window=window, center=True,
                      pad_mode="reflect", return_complex=True)  # (B, n_fft // 2 + 1, frames) complex
    return spec.abs()  # the gradient of |z| at z = 0 is 0 in torch, so silence is safe


class LogMel(nn.Module):
    """Waveforms (B, L) or (B, 1, L) -> log-mel spectrograms (B, n_mels, L // hop_length + 1), float32.

    Differentiable, on whichever device the module is; the filterbank is a non-persistent buffer (it follows
    ``.to(device)`` but is not saved: the AudioConfig saved with the run rebuilds it).
    """

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("fb", mel_filterbank(cfg), persistent=False)  # (n_mels, n_fft // 2 + 1)

    def forward(self, wave: Tensor) -> Tensor:
        cfg = self.cfg
        mag = stft_magnitude(wave.to(self.fb.device), cfg.n_fft, cfg.hop_length, cfg.win_length)  # (B, F, frames)
        mel = torch.matmul(self.fb, mag)  # (B, n_mels, frames)
        return torch.log(mel.clamp(min=cfg.log_floor))  # (B, n_mels, frames)


def log_mel(wave: Tensor | np.ndarray, cfg: AudioConfig) -> Tensor:
    """The log-mel of one waveform (L,) -> (n_mels, frames), or of a batch (B, L) / (B, 1, L) ->
    (B, n_mels, frames); float32 on the waveform's device (CPU for numpy arrays).

    Raises:
        UserError: bad settings or a waveform too short for the STFT; ValueError: other shapes.
    """
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32)) if isinstance(wave, np.ndarray) else wave
    single = x.ndim == 1
    out = LogMel(cfg).to(x.device)(x[None] if single else x)  # (B, n_mels, frames)
    return out[0] if single else out


__all__ = ["LogMel", "SPEECH_EXTRA", "as_batch", "check_audio_config", "frames_for", "log_mel", "mel_filterbank",
           "need_speech_extra", "nyquist_f_max", "samples_for", "stft_magnitude"]
