"""Spoken words from nothing (task spoken-words): words' log-mels as images (trimmed, centred, 8-bit and back),
a tiny run trained by `difflab train` on a folder of two "words" (tones) and voiced by a tiny vocoder,
`difflab sample --prompt WORD` writing a WAV, its metrics, and the errors of a bad vocabulary or vocoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from difflab.cli import main
from difflab.config import Config, apply_overrides
from difflab.data.words import centre_word, from_model_range, to_pixels
from difflab.errors import UserError
from difflab.tasks import build_task, load_run
from difflab.tasks.spoken_words import SpokenWordsRun, within_word_diversity

from test_vocoder import RATE, TINY_VOCODER, write_audio_folder

AUDIO = [o for o in TINY_VOCODER if o.startswith("audio.")]
TINY_WORDS = ["task=spoken-words", "data.name=audio-folder", *AUDIO, "words.vocabulary=[low, high]",
              "model.base_channels=16", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
              "model.attention_levels=[]", "model.norm_groups=4", "diffusion.timesteps=100", "train.batch_size=8",
              "train.lr=2e-3", "train.warmup_steps=2", "train.log_every=2", "train.max_minutes=null",
              "sample.sampler=ddim", "sample.steps=4", "sample.batch_size=8"]


def _words(folder, per_word=6, seconds=0.5):
    """Two "words": a low and a high tone burst between silences, each file a different pitch and length."""
    rng = np.random.default_rng(0)
    files = []
    for word, base in (("low", 300.0), ("high", 1500.0)):
        for i in range(per_word):
            n = int(seconds * RATE * rng.uniform(0.6, 1.0))
            tone = 0.5 * np.sin(2 * np.pi * base * rng.uniform(0.9, 1.1) * np.arange(n) / RATE) * np.hanning(n)
            wave = np.concatenate([np.zeros(RATE // 10), tone, np.zeros(RATE // 10)])
            files.append((f"{word}{i}.wav", wave, word.upper() + ".", f"s{i % 3}", "test" if i < 2 else "train"))
    return write_audio_folder(folder, files)


def test_a_word_is_trimmed_and_centred_in_silence():
    floor = math.log(1e-5)
    mel = torch.full((4, 30), floor)
    mel[:, 5:11] = 0.0  # 6 loud frames, off centre
    out = centre_word(mel, 16, 40.0, floor)
    loud = torch.nonzero(out[0] > floor).flatten()
    assert out.shape == (4, 16) and loud.tolist() == list(range(5, 11))  # (16 - 6) // 2 = 5 on the left
    long = torch.zeros(4, 40)
    assert centre_word(long, 16, 40.0, floor).shape == (4, 16)  # cut equally at both ends


def test_pixels_round_trip_within_half_a_level():
    floor, top = math.log(1e-5), 2.0
    mel = torch.linspace(floor, top, 1000).reshape(10, 100)
    x = to_pixels(mel, floor, top).float() / 127.5 - 1.0  # what the model sees (to_model_range)
    assert (from_model_range(x, floor, top) - mel).abs().max() <= 0.5 * (top - floor) / 255 + 1e-5


def test_diversity_within_words_is_zero_for_copies():
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    assert within_word_diversity([a, a, b, b], ["x", "x", "y", "y"]) == 0.0
    assert within_word_diversity([a, b, a, b], ["x", "x", "y", "y"]) > 0


@pytest.fixture(scope="module")
def words_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("words")
    words = _words(root / "words")
    vocoder = root / "vocoder"
    assert main(["train", "--out", str(vocoder), "--no-progress", "--max-steps", "20", "--set", *TINY_VOCODER,
                 f"data.path={words}"]) == 0
    run = root / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "60", "--set", *TINY_WORDS,
                 f"data.path={words}", f"words.vocoder={vocoder}"]) == 0
    return run, vocoder, words


def test_training_stores_the_range_and_the_vocoder(words_run):
    run, vocoder, _ = words_run
    loaded = load_run(run)
    assert isinstance(loaded, SpokenWordsRun)
    w = loaded.config.words
    assert w.vocoder == str(vocoder.resolve()) and w.mel_max is not None and w.mel_max > math.log(1e-5)
    assert loaded.config.model.num_classes == 2 and loaded.config.data.resolution == 20  # n_mels frames


def test_the_dataset_holds_each_word_centred(words_run):
    _, _, words = words_run
    cfg = apply_overrides(Config(), [*TINY_WORDS, f"data.path={words}"])
    task = build_task(cfg)
    assert task.images.shape == (8, 1, 20, 20) and task.images.dtype == torch.uint8
    assert sorted(task.labels.tolist()) == [0] * 4 + [1] * 4
    assert task.dataset.class_names == ["low", "high"]
    high = task.images[task.labels == 1].float().mean(0)[0]  # (n_mels, frames)
    low = task.images[task.labels == 0].float().mean(0)[0]
    assert high[10:].sum() > low[10:].sum()  # the high tone's energy sits in the upper mel bands


def test_sample_a_word_writes_a_wav(words_run, tmp_path, capsys):
    run, _, _ = words_run
    out = tmp_path / "high.wav"
    assert main(["sample", str(run), "--prompt", "high", "--out", str(out)]) == 0
    wave, rate = sf.read(out)
    assert rate == RATE and wave.ndim == 1 and len(wave) == 19 * 64  # (n_mels frames - 1) x hop
    png = tmp_path / "words.png"
    assert main(["sample", str(run), "--n", "4", "--out", str(png)]) == 0 and png.stat().st_size > 0


def test_samples_carry_their_words_and_spectrograms(words_run):
    run, _, _ = words_run
    s = load_run(run).sample(4, cond=[1, 0, 1, 0], progress=False)
    assert list(s.conditions["texts"]) == ["high", "low", "high", "low"]
    assert s.conditions["mels"].shape == (4, 20, 20) and all(len(w) == 19 * 64 for w in s.data)


def test_eval_measures_word_recognition(words_run):
    run, _, _ = words_run
    loaded = load_run(run)
    metrics = loaded.evaluate(4, progress=False)
    assert 0.0 <= metrics["word_accuracy"] <= 1.0 and 0.0 <= metrics["word_accuracy_real"] <= 1.0
    assert metrics["chance"] == 0.5 and set(metrics["per_word"]) == {"low", "high"}
    assert metrics["diversity"] >= 0 and metrics["diversity_real"] > 0 and len(metrics["heard"]) == 4


def test_an_unknown_word_is_one_line(words_run, tmp_path, capsys):
    run, _, _ = words_run
    assert main(["sample", str(run), "--prompt", "seven", "--out", str(tmp_path / "x.wav")]) == 2
    assert "'seven' is not a word of this run: use one of low, high" in capsys.readouterr().err


def test_a_word_without_recordings_is_one_line(words_run):
    _, _, words = words_run
    cfg = apply_overrides(Config(), [*TINY_WORDS, f"data.path={words}", "words.vocabulary=[low, high, middle]"])
    with pytest.raises(UserError, match="no utterance of 'middle'"):
        build_task(cfg)


def test_a_vocoder_of_another_front_end_is_refused(words_run, tmp_path):
    _, vocoder, words = words_run
    other = [o for o in TINY_WORDS if not o.startswith("audio.n_mels")] + ["audio.n_mels=16"]
    cfg = apply_overrides(Config(), [*other, f"data.path={words}", f"words.vocoder={vocoder}"])
    with pytest.raises(UserError, match="another front end .*audio.n_mels 16 vs 20"):
        build_task(cfg)
    missing = apply_overrides(Config(), [*TINY_WORDS, f"data.path={words}", f"words.vocoder={tmp_path / 'none'}"])
    with pytest.raises(UserError, match="does not exist"):
        build_task(missing)


def test_flipping_a_word_is_refused():
    cfg = apply_overrides(Config(), [*TINY_WORDS, "data.random_flip=true"])
    with pytest.raises(UserError, match="backwards"):
        build_task(cfg)



def test_the_report_plays_generated_words(words_run):
    from difflab import report_html
    from difflab.tasks.spoken_words import LISTEN_PER_WORD, listen_section

    run, _, _ = words_run
    ctx = report_html.load_context(load_run(run), samples=2, progress=False)
    title, body = listen_section(ctx)
    assert title == "Listen" and body.count("<audio controls") == 2 * LISTEN_PER_WORD
    assert body.count("data:image/png;base64,") == 1 and "high" in body
