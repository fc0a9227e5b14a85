"""The config sections of the speech and text run kinds (``audio:``, ``vocoder:``, ``words:``, ``text:``), apart from
the image ones in :mod:`difflab.config`, which re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

from difflab.config_rules import (HALF_OPEN, NON_NEGATIVE, OPEN_UNIT, POSITIVE, UNIT_INTERVAL, at_least, checked,
                                  one_of)


@dataclass(frozen=True)
class AudioConfig:
    """Waveforms and their log-mel spectrogram (:mod:`difflab.data.mel`): one front end for training, sampling and
    metrics, saved in every speech run. The defaults are the common 22,050 Hz vocoder setting (HiFi-GAN, DiffWave
    on LJSpeech): 80 mels from 0 to 8 kHz, hop 256 (86 frames per second)."""

    sample_rate: int = checked(22050, POSITIVE)  # Hz; every file is resampled to it (soxr)
    n_fft: int = checked(1024, at_least(16))
    hop_length: int = checked(256, POSITIVE)  # samples per mel frame
    win_length: int = checked(1024, at_least(16))  # Hann window; at most n_fft
    n_mels: int = checked(80, POSITIVE)
    f_min: float = checked(0.0, NON_NEGATIVE)  # Hz
    f_max: float | None = checked(8000.0, POSITIVE)  # Hz; None = sample_rate / 2
    log_floor: float = checked(1e-5, POSITIVE)  # log(max(mel magnitude, log_floor)): silence is log(1e-5)
    segment_seconds: float = checked(10.0, POSITIVE)  # audio-folder: longer files are cut into segments this long


@dataclass(frozen=True)
class VocoderConfig:
    """The DiffWave vocoder (``task: vocoder``; :mod:`difflab.models.wavenet`), its training crops and its chunked
    sampling of long spectrograms."""

    channels: int = checked(64, POSITIVE)  # residual channels (DiffWave base: 64)
    layers: int = checked(12, POSITIVE)  # residual layers (DiffWave base: 30)
    dilation_cycle: int = checked(6, POSITIVE)  # dilations 1 .. 2^(cycle - 1), repeated (DiffWave: 10)
    step_features: int = checked(128, POSITIVE)  # sinusoidal features of the diffusion step (DiffWave: 128)
    step_width: int = checked(256, POSITIVE)  # the step embedding after its two layers (DiffWave: 512)
    fold: int = checked(4, POSITIVE)  # samples per network position (1 = DiffWave); must divide audio.hop_length
    segment_frames: int = checked(32, at_least(2))  # training crops, in mel frames of audio.hop_length samples
    chunk_frames: int = checked(64, at_least(2))  # sampling: mels cut into chunks this long, drawn as one batch
    overlap_frames: int = checked(4, NON_NEGATIVE)  # ... overlapping by this much, cross-faded
    # 0: sampling starts from noise; s in (0, 1]: from the Griffin-Lim waveform of the mel noised to time s (T - 1)
    # (SDEdit, Meng et al. 2022: the diffusion model refines Griffin-Lim's phase instead of drawing a waveform)
    refine: float = checked(0.0, UNIT_INTERVAL)
    refine_iters: int = checked(32, POSITIVE)  # Griffin-Lim iterations of that start
    # standard: eps ~ N(0, I); priorgrad: eps ~ N(0, diag(sigma^2)) with sigma of each sample from its mel frame's
    # energy (PriorGrad, Lee et al. 2022): quiet where the speech is quiet, so the model need not carve silence
    # out of unit noise
    prior: str = checked("standard", one_of("standard", "priorgrad"))
    # priorgrad: the smallest sigma (of the [-1, 1] waveform), about a tenth of speech's RMS: PriorGrad floors its
    # normalised energy at 0.1; a floor of 1e-3 weighted silent samples 1e5 times more and did not learn (loss 1.0)
    prior_min_std: float = checked(1e-2, POSITIVE)
    # priorgrad: sigma = prior_scale * (RMS over bands of the mel magnitude); None = fitted on the training frames
    # (least squares against the waveform's frame RMS) when training starts, and stored in the run
    prior_scale: float | None = checked(None, POSITIVE, example=0.05)


@dataclass(frozen=True)
class WordsConfig:
    """Spoken words from nothing (``task: spoken-words``; :mod:`difflab.tasks.spoken_words`): class-conditional
    diffusion on log-mel "images" (1, n_mels, n_mels frames) of single words, then a trained vocoder."""

    # the words (classes), in class-id order; utterances of other texts are left out of training
    vocabulary: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    repeats: int = checked(8, POSITIVE)  # data.name speech: times each corpus voice says each word
    trim_db: float = checked(40.0, POSITIVE)  # silence below peak - trim_db (dB) is cut before centring the word
    # the log-mel range mapped to [-1, 1]: audio.log_floor .. mel_max; None = the training words' maximum, stored
    mel_max: float | None = None
    vocoder: str | None = None  # the vocoder run (`task: vocoder`) that turns the drawn log-mels into waveforms


TEXT_METHODS = ("masked", "uniform", "embedding", "mask-predict", "autoregressive", "block")


@dataclass(frozen=True)
class TextConfig:
    """Text (``task: text``; :mod:`difflab.tasks.text`): the corpus of ``data.name`` (bible | fortunes | text-file),
    its tokens, one transformer for every method, and each method's noise."""

    # masked (MDLM) | uniform (D3PM) | embedding (Diffusion-LM) | mask-predict (CMLM) | autoregressive (baseline) |
    # block (BD3-LM: masked inside blocks of text.block_size tokens, autoregressive across them)
    method: str = checked("masked", one_of(*TEXT_METHODS))
    tokenizer: str = checked("char", one_of("char", "bpe"))  # bpe: trained on the corpus, saved in the run
    vocab_size: int = checked(1024, at_least(260))  # bpe only: merges up to this many tokens (256 bytes + merges)
    length: int = checked(256, at_least(2))  # tokens per training sequence and per sample
    test_fraction: float = checked(0.05, OPEN_UNIT)  # documents held out for the bound
    # training documents held out too, to choose settings on (never the test split's); 0 = none
    validation_fraction: float = checked(0.0, HALF_OPEN)
    errors: str = checked("strict", one_of("strict", "replace"))  # bytes that are not UTF-8: an error | U+FFFD
    labels: bool = False  # condition on each document's category (a Bible book, a fortune file)
    width: int = checked(256, POSITIVE)  # transformer width
    depth: int = checked(4, POSITIVE)  # blocks
    heads: int = checked(4, POSITIVE)  # attention heads, dividing width
    mlp_ratio: int = checked(4, POSITIVE)
    dropout: float = checked(0.0, HALF_OPEN)
    # the network sees the diffusion time; None = the method's default (masked, mask-predict: off, as MDLM; uniform,
    # embedding: on; autoregressive: never)
    time_conditioning: bool | None = None
    schedule: str = checked("log-linear", one_of("log-linear", "cosine"))  # masked, uniform: alpha(t)
    eps: float = checked(1e-3, OPEN_UNIT)  # alpha(1) = eps: the last time is not quite all noise
    timesteps: int = checked(1000, at_least(2))  # uniform: D3PM's T
    antithetic: bool = True  # masked, block: low-discrepancy times (counts) in a batch (lower variance)
    # masked: how the bound is estimated: time = MDLM's t ~ U[0, 1] and Bernoulli masks; count = its any-order form
    # (RADD): exactly k ~ U{1..L} tokens masked, weight L / k; the same bound, lower variance
    estimator: str = checked("time", one_of("time", "count"))
    # masked with estimator count, and block (always the count form, per block): k drawn with probability
    # proportional to k^-gamma and reweighted (importance sampling of the same bound) in training; the measured
    # bound always draws k ~ U{1..L}; 0 = k ~ U{1..L}
    count_gamma: float = checked(0.0, NON_NEGATIVE)
    block_size: int = checked(16, POSITIVE)  # block: L', tokens per block, dividing text.length (1 = autoregressive)
    embed_dim: int = checked(16, POSITIVE)  # embedding: the space the Gaussian diffusion runs in
    rounding_weight: float = checked(1.0, NON_NEGATIVE)  # embedding: weight of the rounding loss -log p(w | x0_hat)
    label_drop_prob: float = checked(0.1, UNIT_INTERVAL)  # labels: category dropped to the null while training
