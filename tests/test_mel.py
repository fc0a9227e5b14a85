"""The log-mel front end (difflab.data.mel) against librosa, its shapes, its gradients and its checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from difflab.config import AudioConfig
from difflab.data.mel import LogMel, frames_for, log_mel, mel_filterbank, samples_for
from difflab.errors import UserError

librosa = pytest.importorskip("librosa")

CFG = AudioConfig()
SR = CFG.sample_rate


def _chirp_and_noise(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A 100 Hz - 8 kHz chirp plus white noise, silent for its first 2,000 samples (the floor is reached)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    x = 0.5 * librosa.chirp(fmin=100, fmax=8000, sr=SR, length=n) + 0.05 * rng.standard_normal(n)
    x[:2000] = 0
    return x.astype(np.float32)


def _librosa_log_mel(x: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=x, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                         win_length=cfg.win_length, window="hann", center=True, pad_mode="reflect",
                                         power=1.0, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max)
    return np.log(np.maximum(mel, cfg.log_floor))


@pytest.mark.parametrize("cfg", [CFG, AudioConfig(n_fft=1024, win_length=800, hop_length=200, n_mels=64,
                                                  f_min=50.0, f_max=None)], ids=["default", "short-window"])
def test_log_mel_matches_librosa(cfg: AudioConfig) -> None:
    x = _chirp_and_noise()
    ref = _librosa_log_mel(x, cfg)  # (n_mels, frames)
    got = log_mel(x, cfg).numpy()
    assert got.shape == ref.shape == (cfg.n_mels, frames_for(len(x), cfg))
    assert (ref <= np.log(cfg.log_floor) + 1e-6).any() and (ref > np.log(cfg.log_floor) + 1).mean() > 0.5
    # measured: max |difference| 8.6e-6 (default) and 4.8e-6 (short window) nats, float32 rounding
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_filterbank_is_librosas_and_a_copy() -> None:
    fb = mel_filterbank(CFG)
    assert fb.shape == (CFG.n_mels, CFG.n_fft // 2 + 1) and fb.dtype == torch.float32
    ref = librosa.filters.mel(sr=SR, n_fft=CFG.n_fft, n_mels=CFG.n_mels, fmin=CFG.f_min, fmax=CFG.f_max)
    np.testing.assert_allclose(fb.numpy(), ref, rtol=1e-6, atol=0)
    fb.zero_()  # the cached filterbank is not the one handed out
    assert mel_filterbank(CFG).abs().sum() > 0


@pytest.mark.parametrize("length", [1024, 5000, 5120, 22050])
def test_frame_count(length: int) -> None:
    frames = log_mel(np.zeros(length, np.float32), CFG).shape[-1]
    assert frames == length // CFG.hop_length + 1 == frames_for(length, CFG)
    assert frames_for(samples_for(frames, CFG), CFG) == frames
    assert samples_for(frames, CFG) == length - length % CFG.hop_length


def test_shapes_batch_and_channel() -> None:
    waves = torch.from_numpy(np.stack([_chirp_and_noise(0.5, seed) for seed in range(3)]))  # (B, L)
    module = LogMel(CFG)
    flat, chan = module(waves), module(waves[:, None])  # (B, L) and (B, 1, L)
    assert flat.shape == (3, CFG.n_mels, frames_for(waves.shape[1], CFG)) and flat.dtype == torch.float32
    torch.testing.assert_close(flat, chan)
    torch.testing.assert_close(flat[1], log_mel(waves[1], CFG))  # items do not mix
    torch.testing.assert_close(flat[1], log_mel(waves[1].numpy(), CFG))  # numpy in, same result
    assert "fb" not in module.state_dict()  # rebuilt from the saved AudioConfig, not saved
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        module(waves[:, None, None])


def test_sine_peaks_in_its_mel_band() -> None:
    """A 1 kHz sine: the loudest band is the one whose centre is nearest 1 kHz, and its filter covers 1 kHz."""
    t = np.arange(SR) / SR
    mel = log_mel(0.5 * np.sin(2 * np.pi * 1000 * t), CFG).mean(dim=1)  # (n_mels,)
    centres = librosa.mel_frequencies(CFG.n_mels + 2, fmin=CFG.f_min, fmax=CFG.f_max)[1:-1]
    band = int(mel.argmax())
    assert band == int(np.abs(centres - 1000).argmin())
    bin_1k = round(1000 * CFG.n_fft / SR)
    assert mel_filterbank(CFG)[band, bin_1k] > 0


def test_gradients_flow() -> None:
    wave = torch.from_numpy(_chirp_and_noise(0.25)).requires_grad_()
    log_mel(wave, CFG).mean().backward()
    assert torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


@pytest.mark.parametrize("change, message", [
    ({"win_length": 2048}, "win_length=2048 is longer than audio.n_fft"),
    ({"hop_length": 2000}, "hop_length=2000 is longer than audio.win_length"),
    ({"f_max": 12000.0}, "above the Nyquist frequency"),
    ({"f_min": 8000.0}, "f_min=8000.0 Hz is not below f_max"),
])
def test_bad_settings_are_one_line_user_errors(change: dict, message: str) -> None:
    cfg = dataclasses.replace(CFG, **change)
    with pytest.raises(UserError, match=message) as err:
        LogMel(cfg)
    assert "\n" not in str(err.value) and ": set" in str(err.value)


def test_too_short_waveform() -> None:
    with pytest.raises(UserError, match="too short"):
        log_mel(np.zeros(CFG.n_fft // 2, np.float32), CFG)
