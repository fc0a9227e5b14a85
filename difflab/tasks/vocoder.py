"""A diffusion vocoder (``task: vocoder``): Gaussian diffusion on waveforms conditioned on their log-mel
spectrogram, DiffWave's framing (Kong et al. 2021; WaveGrad, Chen et al. 2021), with the core unchanged: the
schedule, Algorithm 1, every sampler (and DiffWave's 6-step fast schedule as the step grid ``diffwave``).

=============  =====================================================================================
symbol         meaning
=============  =====================================================================================
``x0``         a waveform crop (B, 1, L), L = ``vocoder.segment_frames`` x ``audio.hop_length``, in [-1, 1]
``mel``        its log-mel frames (B, n_mels, segment_frames) (:mod:`difflab.data.mel`, ``audio:``)
``eps_hat``    the network's output (:class:`~difflab.models.wavenet.DiffWave`)
=============  =====================================================================================

Training crops random segments of the utterances (the log-mel of each utterance computed once, with the same
front end sampling and metrics use), frame-aligned: frames s .. s+F-1 with samples s hop .. (s+F) hop.
Vocoding cuts a spectrogram into chunks of ``vocoder.chunk_frames`` overlapping by ``vocoder.overlap_frames``,
draws every chunk of every input in batches, and cross-fades the overlaps (:func:`stitch`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from difflab import report_html
from difflab.config import AudioConfig, Config
from difflab.errors import UserError
from difflab.models.wavenet import DiffWave, Whitened
from difflab.schedules import Schedule, schedule_from_config
from difflab.tasks.base import SampleRequest, Samples, Section, check_sample_folder
from difflab.tasks.gaussian import GaussianRunBase, algorithm1

AUDIO_DATASETS = ("speech", "audio-folder")


# -- data ----------------------------------------------------------------------------------------
def check_vocoder(cfg: Config) -> None:
    """One line for audio and vocoder settings that cannot work together."""
    from difflab.data.mel import check_audio_config

    check_audio_config(cfg.audio)
    v, hop = cfg.vocoder, cfg.audio.hop_length
    if hop % v.fold:
        raise UserError(f"vocoder.fold={v.fold} must divide audio.hop_length={hop} (a frame is whole positions): "
                        f"use a divisor such as {next(d for d in (4, 2, 1) if hop % d == 0)}")
    if v.overlap_frames >= v.chunk_frames // 2:
        raise UserError(f"vocoder.overlap_frames={v.overlap_frames} must be below half of vocoder.chunk_frames="
                        f"{v.chunk_frames}: e.g. --set vocoder.overlap_frames=4")
    if cfg.data.name not in AUDIO_DATASETS:
        raise UserError(f"task vocoder trains on speech, but data.name is {cfg.data.name}: set data.name to speech "
                        "(the built-in corpus) or audio-folder (your WAV/FLAC files, with data.path)")


def speech_dataset(cfg: Config, split: str = "train"):
    """The waveforms of ``cfg.data`` at ``audio.sample_rate``: the built-in corpus (``speech``; ``data.path`` another
    corpus folder) or a folder of the user's audio (``audio-folder``)."""
    from difflab.data.audio import load_audio_folder
    from difflab.data.speech import load_speech

    d, a = cfg.data, cfg.audio
    if d.name == "speech":
        return load_speech(d.path, a.sample_rate, split)
    if d.path is None:
        raise UserError("data.name=audio-folder needs data.path: the folder of your WAV/FLAC/OGG files")
    return load_audio_folder(d.path, a.sample_rate, split, a.segment_seconds)


def build_vocoder(cfg: Config) -> nn.Module:
    """The DiffWave network of ``cfg.vocoder`` for the log-mels of ``cfg.audio`` (seen in the whitened variable
    with ``vocoder.prior: priorgrad``)."""
    v, a = cfg.vocoder, cfg.audio
    net = DiffWave(n_mels=a.n_mels, hop=a.hop_length, channels=v.channels, layers=v.layers,
                   dilation_cycle=v.dilation_cycle, step_features=v.step_features, step_width=v.step_width,
                   fold=v.fold)
    return Whitened(net) if v.prior == "priorgrad" else net


# -- PriorGrad's data-dependent prior ------------------------------------------------------------
def mel_energy(mel: Tensor) -> Tensor:
    """(..., n_mels, F) log-mels -> (..., F): the RMS over bands of the mel magnitude exp(mel)."""
    return mel.exp().pow(2).mean(dim=-2).sqrt()


def frame_of(samples: int, hop: int, frames: int, device: torch.device | None = None) -> Tensor:
    """(samples,) the frame whose centre (j hop) is nearest each sample, at most ``frames`` - 1."""
    return ((torch.arange(samples, device=device) + hop // 2) // hop).clamp(max=frames - 1)


def fit_prior_scale(waves: Sequence[Tensor], mels: Sequence[Tensor], hop: int) -> float:
    """c of sigma = c * mel energy: least squares of each frame's waveform RMS (its nearest samples) on its
    :func:`mel_energy`, over every frame of ``waves`` (L,) and their ``mels`` (n_mels, F)."""
    num = den = 0.0
    for w, m in zip(waves, mels):
        index = frame_of(len(w), hop, m.shape[-1], w.device)  # (L,)
        sums = torch.zeros(m.shape[-1], device=w.device).index_add_(0, index, w.double().pow(2).float())
        counts = torch.bincount(index, minlength=m.shape[-1]).clamp(min=1)
        rms, e = (sums / counts).sqrt(), mel_energy(m)  # (F,) each
        num, den = num + float((rms * e).sum()), den + float((e * e).sum())
    if not den > 0:
        raise UserError("the training audio is silent: PriorGrad's prior cannot be fitted (vocoder.prior=standard)")
    return num / den


def prior_sigma(mel: Tensor, samples: int, cfg: Config) -> Tensor:
    """PriorGrad's per-sample std (B, 1, samples) of log-mels (B, n_mels, F): vocoder.prior_scale times each
    sample's nearest frame's energy, at least vocoder.prior_min_std."""
    v = cfg.vocoder
    if v.prior_scale is None:
        raise ValueError("vocoder.prior_scale is unset: the task fits it (fit_prior_scale)")
    sigma = (v.prior_scale * mel_energy(mel)).clamp(min=v.prior_min_std)  # (B, F)
    return sigma[:, frame_of(samples, cfg.audio.hop_length, mel.shape[-1], mel.device)][:, None]  # (B, 1, samples)


class VocoderTask:
    """Waveform crops and their log-mel frames from the utterances of ``cfg.data`` (all in memory)."""

    name = "vocoder"

    def __init__(self, cfg: Config) -> None:
        from difflab.data.mel import LogMel

        check_vocoder(cfg)
        self.config = replace(cfg, task=self.name)
        self.schedule: Schedule = schedule_from_config(cfg.diffusion)
        F, hop = cfg.vocoder.segment_frames, cfg.audio.hop_length
        dataset = speech_dataset(cfg, "train")
        front = LogMel(cfg.audio)
        self.waves: list[Tensor] = []  # (L,) each
        self.mels: list[Tensor] = []  # (n_mels, frames) each
        with torch.no_grad():
            for wave in dataset.waves:
                if len(wave) // hop >= F:  # at least one whole crop
                    w = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
                    self.waves.append(w)
                    self.mels.append(front(w[None])[0])
        if not self.waves:
            raise UserError(f"no utterance of {cfg.data.name} is {F} frames ({F * hop / cfg.audio.sample_rate:.2f} s) "
                            "long: lower vocoder.segment_frames or add longer audio")
        # crops start at frame s = 0 .. L // hop - F of an utterance; utterances drawn by their count of crops
        self.last_start = torch.tensor([len(w) // hop - F for w in self.waves])  # (U,)
        self.weights = (self.last_start + 1).double()  # (U,) crops per utterance
        v = self.config.vocoder
        if v.prior == "priorgrad" and v.prior_scale is None:  # fitted once, stored in the run's config
            scale = fit_prior_scale(self.waves, self.mels, hop)
            self.config = replace(self.config, vocoder=replace(v, prior_scale=scale))

    def to(self, device: torch.device) -> None:
        self.waves = [w.to(device) for w in self.waves]
        self.mels = [m.to(device) for m in self.mels]

    def run_files(self) -> dict[str, str]:
        return {}

    def build_model(self) -> nn.Module:
        return build_vocoder(self.config)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """x0 (B, 1, F hop) random crops and ``mel`` (B, n_mels, F), their frames; with PriorGrad, x0 / sigma and
        ``sigma`` (B, 1, F hop) (:class:`~difflab.models.wavenet.Whitened`)."""
        F, hop = self.config.vocoder.segment_frames, self.config.audio.hop_length
        g_device = generator.device
        index = torch.multinomial(self.weights.to(g_device), batch_size, replacement=True,
                                  generator=generator).cpu()  # (B,)
        u = torch.rand(batch_size, generator=generator, device=g_device).cpu()  # (B,)
        starts = (u * (self.last_start[index] + 1)).long().clamp(max=self.last_start[index])  # (B,)
        x0 = torch.stack([self.waves[i][s * hop:(s + F) * hop] for i, s in zip(index.tolist(), starts.tolist())])
        mel = torch.stack([self.mels[i][:, s:s + F] for i, s in zip(index.tolist(), starts.tolist())])
        x0 = x0[:, None]  # (B, 1, F hop)
        if self.config.vocoder.prior == "priorgrad":
            sigma = prior_sigma(mel, x0.shape[-1], self.config)  # (B, 1, F hop)
            return x0 / sigma, {"mel": mel, "sigma": sigma}
        return x0, {"mel": mel}

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Algorithm 1 on a random :meth:`batch` of crops, the mel a condition."""
        x0, cond = self.batch(batch_size, generator)
        return algorithm1(model, x0, cond, self.schedule, self.config, generator)

    def preview(self, model: nn.Module) -> np.ndarray | None:
        return None


# -- chunked vocoding ----------------------------------------------------------------------------
def chunk_mel(mel: Tensor, chunk: int, overlap: int, floor: float) -> Tensor:
    """(n_mels, F) -> (K, n_mels, chunk): windows starting every chunk - overlap frames; the last padded with
    silence (log ``floor``)."""
    n_mels, F = mel.shape
    hop = chunk - overlap
    K = max(1, -(-(F - overlap) // hop))  # ceil((F - overlap) / hop)
    padded = torch.full((n_mels, (K - 1) * hop + chunk), float(np.log(floor)), dtype=mel.dtype, device=mel.device)
    padded[:, :F] = mel
    return torch.stack([padded[:, k * hop:k * hop + chunk] for k in range(K)])  # (K, n_mels, chunk)


def chunk_wave(wave: Tensor, chunks: int, chunk: int, overlap: int, hop: int) -> Tensor:
    """The waveform (L,) under the mel chunks of :func:`chunk_mel` (``chunks`` of ``chunk`` frames, ``overlap``
    apart, ``hop`` samples a frame): (K, chunk hop), zero past its end."""
    step, S = (chunk - overlap) * hop, chunk * hop
    padded = torch.zeros((chunks - 1) * step + S, dtype=wave.dtype)
    n = min(len(wave), len(padded))
    padded[:n] = wave[:n]
    return torch.stack([padded[k * step:k * step + S] for k in range(chunks)])  # (K, S)


def stitch(pieces: Tensor, overlap: int) -> Tensor:
    """Waveform chunks (K, S) overlapping by ``overlap`` samples, joined with a linear cross-fade: (K S - (K-1) o,)."""
    K, S = pieces.shape
    if K == 1 or overlap == 0:
        return pieces.reshape(-1)
    fade = torch.linspace(0, 1, overlap + 2, dtype=pieces.dtype, device=pieces.device)[1:-1]  # (o,), ends excluded
    out = pieces[0]
    for piece in pieces[1:]:
        mixed = out[-overlap:] * (1 - fade) + piece[:overlap] * fade
        out = torch.cat([out[:-overlap], mixed, piece[overlap:]])
    return out


def fidelity(references: Sequence[np.ndarray], outputs: Sequence[np.ndarray], cfg: AudioConfig) -> dict[str, float]:
    """Mean MR-STFT distance and log-mel L1 of waveforms ``outputs`` against their ``references`` (each pair cut
    to the shorter)."""
    from difflab.evaluate.audio import log_mel_l1, mr_stft_distance

    mr, l1 = [], []
    for ref, out in zip(references, outputs):
        L = min(len(ref), len(out))
        r, o = (torch.from_numpy(np.asarray(w[:L], dtype=np.float32)) for w in (ref, out))
        mr.append(float(mr_stft_distance(r[None], o[None])))
        l1.append(log_mel_l1(r, o, cfg))
    return {"mr_stft": float(np.mean(mr)), "log_mel_l1": float(np.mean(l1))}


# -- a trained run -------------------------------------------------------------------------------
def save_waves(samples: Samples, out: Path, rate: int) -> Path:
    """Waveforms (``Samples.data``, float32 (L,) each) at ``rate`` Hz into a ``.wav`` (one sample) or a new folder
    of ``000000.wav`` ... with ``metadata.jsonl`` (each one's ``texts`` condition as its text)."""
    import json

    from difflab.data.audio import write_wav
    from difflab.paths import atomic_path

    out = Path(out)
    if out.suffix.lower() == ".wav":
        if len(samples) != 1:
            raise UserError(f"{len(samples)} waveforms cannot go into one file {out}: pass --n 1 or a folder")
        return write_wav(out, samples.data[0], rate)
    check_sample_folder(out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        texts = samples.conditions.get("texts", [""] * len(samples))
        lines = []
        for i, (wave, text) in enumerate(zip(samples.data, texts)):
            write_wav(tmp / f"{i:06d}.wav", wave, rate)
            lines.append(json.dumps({"file_name": f"{i:06d}.wav", "text": str(text)}))
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return out


class VocoderRun(GaussianRunBase):
    """A trained vocoder: ``cond`` is a list of log-mel spectrograms (n_mels, F) (None = held-out test utterances);
    a sample is a float32 waveform (L,), ``Samples.data`` an object array of them."""

    task = "vocoder"
    outputs: ClassVar[dict[str, str]] = {".wav": "a .wav file (one sample)", "": "a new folder (one WAV per sample)"}

    @classmethod
    def build(cls, cfg: Config, folder: Path) -> nn.Module:
        return build_vocoder(cfg)

    @property
    def conditional(self) -> bool:
        return False  # the mel is never dropped: no classifier-free guidance

    @property
    def denoising_config(self) -> Config:
        """The run's config; with PriorGrad without the static clip (x0 / sigma is not in [-1, 1]: the waveform is
        clipped when it is made)."""
        cfg = self.config
        return replace(cfg, sample=replace(cfg.sample, clip_x0=False)) if cfg.vocoder.prior == "priorgrad" else cfg

    def mel_of(self, wave: np.ndarray | Tensor) -> Tensor:
        """The log-mel (n_mels, frames) of a waveform (L,) at the run's sample rate: the front end it trained on."""
        from difflab.data.mel import log_mel

        return log_mel(torch.as_tensor(np.asarray(wave, dtype=np.float32)), self.config.audio)

    def check_mel(self, mel: Tensor) -> Tensor:
        n_mels = self.config.audio.n_mels
        if mel.ndim != 2 or mel.shape[0] != n_mels or mel.shape[1] < 2:
            raise UserError(f"a log-mel spectrogram for this vocoder is ({n_mels}, frames) with 2 frames or more, got "
                            f"shape {tuple(mel.shape)}: compute it with the run's audio settings (difflab.data.mel)")
        return mel.float()

    def vocode(self, mels: Sequence[Tensor | np.ndarray], *, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, batch_size: int | None = None, progress: bool = True, refine: float | None = None,
               **options: Any) -> list[np.ndarray]:
        """Waveforms float32 (samples_for(F),) of log-mels (n_mels, F): every chunk of every mel drawn in batches
        by ``sampler`` (``config.sample``'s when None), then stitched; ``refine`` (None = ``vocoder.refine``; 0 =
        from noise) starts each chunk from its Griffin-Lim waveform noised to that strength (SDEdit)."""
        from difflab.data.mel import samples_for
        from difflab.evaluate.audio import griffin_lim

        v, a = self.config.vocoder, self.config.audio
        mels = [self.check_mel(torch.as_tensor(m)) for m in mels]
        C = min(v.chunk_frames, max(m.shape[1] for m in mels))  # short inputs: chunks no longer than the longest
        O = min(v.overlap_frames, C // 2 - 1) if C > 2 else 0
        chunks = [chunk_mel(m, C, O, a.log_floor) for m in mels]  # (K_i, n_mels, C)
        stacked = torch.cat(chunks)  # (K, n_mels, C)
        S = C * a.hop_length

        whitened = v.prior == "priorgrad"
        sigma = prior_sigma(stacked, S, self.config) if whitened else torch.ones(1)  # (K, 1, S)

        def cond_of(start: int, stop: int) -> dict[str, Tensor]:
            cond = {"mel": stacked[start:stop].to(self.device)}
            return cond | {"sigma": sigma[start:stop].to(self.device)} if whitened else cond

        strength = v.refine if refine is None else refine
        if not 0 <= strength <= 1:
            raise UserError(f"--refine must be in [0, 1] (0: from noise), got {strength}: e.g. --refine 0.1")
        start_of = None
        if strength > 0:
            guesses = torch.cat([chunk_wave(torch.from_numpy(griffin_lim(m, a, n_iter=v.refine_iters, seed=seed)),
                                            len(c), C, O, a.hop_length) for m, c in zip(mels, chunks)])  # (K, S)

            def start_of(start: int, stop: int) -> Tensor:
                return guesses[start:stop, None] / (sigma[start:stop] if whitened else 1.0)  # (B, 1, S)

        waves = torch.cat([w.cpu() for w in self.draw(len(stacked), (1, S), cond_of, sampler=sampler, steps=steps,
                                                       seed=seed, batch_size=batch_size, progress=progress,
                                                       unit="chunk", start_of=start_of, strength=strength or 1.0,
                                                       **options)])  # (K, 1, S)
        waves = (waves * sigma if whitened else waves)[:, 0]  # (K, S)
        out, start = [], 0
        for m, c in zip(mels, chunks):
            wave = stitch(waves[start:start + len(c)], O * a.hop_length)
            out.append(wave[:samples_for(m.shape[1], a)].clamp(-1, 1).numpy())
            start += len(c)
        return out

    def held_out(self, n: int, seed: int = 0):
        """``n`` test utterances (drawn with ``seed`` without repeats while the split has that many)."""
        dataset = speech_dataset(self.config, "test")
        pick = np.random.default_rng(seed).choice(len(dataset), size=n, replace=n > len(dataset))
        return [dataset.waves[i] for i in pick], [(dataset.texts or [""] * len(dataset))[i] for i in pick], \
            [dataset.speakers[i] for i in pick]

    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, **options: Any) -> Samples:
        """``n`` waveforms vocoded from the log-mels ``cond`` (None: of ``n`` held-out test utterances)."""
        texts = [""] * n
        if cond is None:
            waves, texts, _ = self.held_out(n, seed)
            cond = [self.mel_of(w) for w in waves]
        if len(cond) != n:
            raise ValueError(f"{len(cond)} spectrograms for {n} samples")
        out = self.vocode(cond, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, progress=progress,
                          **options)
        data = np.empty(n, dtype=object)
        data[:] = out
        return Samples(data, {"texts": np.asarray(texts, dtype=str)})

    def save(self, samples: Samples, out: Path) -> Path:
        """A ``.wav`` (one sample) or a new folder of ``000000.wav`` ... with ``metadata.jsonl``."""
        return save_waves(samples, out, self.config.audio.sample_rate)

    def default_output(self, sampler: str, steps: int) -> Path:
        return self.folder / "samples" / f"vocoded-{sampler}-{steps}"

    def evaluate(self, n: int, *, seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 batch_size: int | None = None, progress: bool = True, griffin_lim_iters: int = 32,
                 asr: bool = True, **options: Any) -> dict[str, Any]:
        """``n`` held-out utterances vocoded from their log-mels, against the originals: MR-STFT distance, log-mel
        L1 and real-time factor, beside Griffin-Lim (``griffin_lim_iters``) on the same mels; with ``asr`` (and
        transcripts), the word accuracy of offline recognition on each and on the originals."""
        from difflab.evaluate.audio import griffin_lim, real_time_factor, transcribe, word_accuracy

        a = self.config.audio
        waves, texts, speakers = self.held_out(n, seed)
        mels = [self.mel_of(w) for w in waves]
        t0 = time.perf_counter()
        vocoded = self.vocode(mels, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size,
                              progress=progress, **options)
        seconds = time.perf_counter() - t0
        baseline = [griffin_lim(m, a, n_iter=griffin_lim_iters, seed=seed) for m in mels]
        samples = sum(len(w) for w in vocoded)
        out: dict[str, Any] = {"data": f"{self.config.data.name} test split", "outputs": "vocoded test utterances",
                               **self.made_with(sampler, steps), "n": n, **fidelity(waves, vocoded, a),
                               "real_time_factor": real_time_factor(seconds, samples, a.sample_rate),
                               "baseline": f"griffin-lim-{griffin_lim_iters}",
                               **{f"baseline_{k}": v for k, v in fidelity(waves, baseline, a).items()},
                               "speakers": sorted(set(speakers))}
        if asr and any(texts):
            out |= {"asr_original": word_accuracy(texts, transcribe(waves, a.sample_rate)),
                    "asr": word_accuracy(texts, transcribe(vocoded, a.sample_rate)),
                    "asr_baseline": word_accuracy(texts, transcribe(baseline, a.sample_rate))}
        return out

    def nll(self, n: int, **_: Any) -> dict[str, Any]:
        raise self._cannot("likelihood bound (`difflab eval --nll`): it is conditional on a spectrogram")

    def report_sections(self) -> Sequence[Section]:
        h = report_html
        return h.config_section, h.training_section, listen_section, h.metrics_section, h.environment_section

    def request(self, args: argparse.Namespace, n: int | None, default_n: int) -> SampleRequest:
        """``n`` held-out utterances vocoded (``difflab vocode`` takes a file of the user's)."""
        return SampleRequest(n or default_n)


LISTEN_UTTERANCES = 4  # held-out utterances a report plays


def listen_section(ctx: Any) -> tuple[str, str]:
    """A report's "Listen": held-out utterances as players (original, Griffin-Lim 32, the vocoder at the run's
    sampler) and their log-mel spectrograms side by side."""
    import html

    from difflab import grids
    from difflab.evaluate.audio import griffin_lim

    run: VocoderRun = ctx.loaded
    a, h = run.config.audio, report_html
    waves, texts, speakers = run.held_out(min(ctx.samples, LISTEN_UTTERANCES), ctx.seed)
    mels = [run.mel_of(w) for w in waves]
    vocoded = run.vocode(mels, seed=ctx.seed, progress=False)
    parts = []
    for wave, mel, voc, text, speaker in zip(waves, mels, vocoded, texts, speakers):
        gl = griffin_lim(mel, a, seed=ctx.seed)
        versions = {"original": wave, "griffin-lim 32": gl, f"difflab ({run.config.sample.sampler}, "
                    f"{run.config.sample.steps} steps)": voc}
        players = "".join(h.audio_tag(h.wav_data_uri(w, a.sample_rate), k) for k, w in versions.items())
        picture = grids.spectrograms([run.mel_of(w).numpy() for w in versions.values()], list(versions))
        parts.append(f'<div class="utterance"><p>{html.escape(speaker)}: "{html.escape(text)}"</p>{players}'
                     f'<img src="{h.png_data_uri(picture)}" alt="log-mel spectrograms"></div>')
    note = f"checkpoint step {ctx.checkpoint_step} (EMA weights), seed {ctx.seed}, held-out test utterances"
    return "Listen", f'<p class="note">{html.escape(note)}</p>{"".join(parts)}'


def vocode_file(run: str | Path, source: str | Path, out: str | Path, *, device: torch.device | str = "cpu",
                **sampling: Any) -> Path:
    """``difflab vocode``: the waveform of ``source`` (an audio file, whose log-mel is taken with the run's front
    end, or a ``.npy`` log-mel (n_mels, frames)) vocoded by the run ``run`` into the WAV ``out`` (checked first)."""
    from difflab.data.audio import read_audio, write_wav
    from difflab.files import check_output, read_npy, require_file
    from difflab.tasks import load_run, run_class

    out, source = Path(out), Path(source)
    if out.suffix.lower() != ".wav":
        raise UserError(f"cannot write a waveform to {out}: name a .wav file")
    check_output(out, "output")
    cfg, cls = run_class(run)
    if cls is not VocoderRun:
        from difflab.tasks.base import a_run
        raise UserError(f"{run} is {a_run(cfg.task)}, not a vocoder run: pass a run of configs/speech_vocoder.yaml")
    require_file(source, "input", "pass an audio file (.wav, .flac, .ogg) or a log-mel .npy (n_mels, frames)")
    if source.suffix.lower() == ".npy":
        mel = torch.from_numpy(read_npy(source, "log-mel file", "save a float array (n_mels, frames) with np.save"))
    else:
        mel = None
        wave = read_audio(source, cfg.audio.sample_rate)
    loaded = load_run(run, device)
    assert isinstance(loaded, VocoderRun)
    mel = loaded.check_mel(mel) if mel is not None else loaded.mel_of(wave)
    return write_wav(out, loaded.vocode([mel], **sampling)[0], cfg.audio.sample_rate)


TASK = VocoderTask
RUN = VocoderRun
