"""Spoken words from nothing (``task: spoken-words``): DiffWave's unconditional SC09 experiment done the way
Grad-TTS splits it, diffusion on log-mel spectrograms and a vocoder after it.

The spectrogram of one word is an image, (1, n_mels, n_mels frames) (:mod:`difflab.data.words`), so the image
machinery trains it unchanged: a class-conditional UNet with classifier-free guidance (:class:`ImageTask`,
one class per word of ``words.vocabulary``). Sampling draws the log-mel with any sampler, then the vocoder run
``words.vocoder`` (``task: vocoder``, the same ``audio:`` front end) turns it into a waveform.

=============  =====================================================================================
symbol         meaning
=============  =====================================================================================
``x0``         a word's log-mel image (B, 1, n_mels, n_mels) in [-1, 1]: log(audio.log_floor)..mel_max
``labels``     the word's class id (B,), its index in ``words.vocabulary``
=============  =====================================================================================

Measured by recognition: pocketsphinx restricted to the vocabulary (a JSGF grammar) names the word of each
generated WAV; the accuracy of the intended word (chance 1 / |vocabulary|) beside the same recogniser on the
real held-out words, and the diversity of the drawn spectrograms within each word beside the real ones'.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from difflab import report_html
from difflab.config import Config
from difflab.data.images import ImageDataset
from difflab.data.words import from_model_range, silence, vocabulary_utterances, word_mels
from difflab.errors import UserError
from difflab.models.unet import check_resolution
from difflab.tasks.base import GridRow, SampleRequest, Samples, Section, a_run
from difflab.tasks.image import ImageRun, ImageTask
from difflab.tasks.text_to_image import TextToImageRun, read_prompts

LISTEN_PER_WORD = 2  # generated samples of each word a report plays


def check_words(cfg: Config) -> None:
    """One line for settings of ``task: spoken-words`` that cannot work."""
    from difflab.data.mel import check_audio_config
    from difflab.tasks.vocoder import AUDIO_DATASETS

    check_audio_config(cfg.audio)
    w, m = cfg.words, cfg.model
    if cfg.data.name not in AUDIO_DATASETS:
        raise UserError(f"task spoken-words trains on speech, but data.name is {cfg.data.name}: set data.name to "
                        "speech (the built-in words) or audio-folder (your recordings, with data.path)")
    if cfg.data.random_flip:
        raise UserError("data.random_flip would play the words backwards: set data.random_flip=false")
    if len(w.vocabulary) < 2 or len(set(w.vocabulary)) != len(w.vocabulary):
        raise UserError(f"words.vocabulary needs two or more distinct words, got {list(w.vocabulary)}")
    check_resolution(cfg.audio.n_mels, m.channel_mult, m.patch_size)


def vocoder_folder(ref: str | Path | None) -> Path:
    """The vocoder run ``ref`` names (a run folder of ``task: vocoder``), checked; one line otherwise."""
    from difflab.tasks import run_class
    from difflab.tasks.vocoder import VocoderRun

    if ref is None:
        raise UserError("this run has no vocoder to turn spectrograms into sound: train one (configs/speech_vocoder"
                        ".yaml) and pass --vocoder RUN (or train with --set words.vocoder=RUN)")
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        raise UserError(f"vocoder run {folder} does not exist: train one with `difflab train "
                        f"configs/speech_vocoder.yaml --out {folder}` or pass --vocoder RUN")
    cfg, cls = run_class(folder)
    if cls is not VocoderRun:
        raise UserError(f"{folder} is {a_run(cfg.task)}, not a vocoder run: pass a run of configs/speech_vocoder.yaml")
    return folder.resolve()


def check_same_audio(words: Config, vocoder: Config, folder: Path) -> None:
    """One line when the vocoder's front end is not the words model's (its spectrograms would not fit)."""
    a, b = asdict(words.audio), asdict(vocoder.audio)
    a.pop("segment_seconds"), b.pop("segment_seconds")  # how files are cut, not the spectrogram
    diff = [f"audio.{k} {a[k]} vs {b[k]}" for k in a if a[k] != b[k]]
    if diff:
        raise UserError(f"vocoder {folder} was trained on another front end ({', '.join(diff)}): use a vocoder of "
                        f"the same audio settings")


class SpokenWordsTask(ImageTask):
    """Class-conditional diffusion on the log-mel images of single words."""

    name = "spoken-words"

    def __init__(self, cfg: Config) -> None:
        check_words(cfg)
        vocoder = None
        if cfg.words.vocoder is not None:  # checked now, not after training; stored as an absolute path
            from difflab import io

            folder = vocoder_folder(cfg.words.vocoder)
            check_same_audio(cfg, io.read_run_config(folder), folder)
            vocoder = str(folder)
        self.mel_max = 0.0
        super().__init__(cfg)
        self.config = replace(self.config, words=replace(self.config.words, mel_max=self.mel_max, vocoder=vocoder))

    def load_data(self, cfg: Config) -> ImageDataset:
        dataset, self.mel_max = word_mels(cfg, "train")
        return dataset


class SpokenWordsRun(ImageRun):
    """A trained spoken-words run: ``cond`` the word's class id of every sample ((n,) ints; None = words in turn);
    a sample is a float32 waveform (L,) (``Samples.data`` an object array), with its ``labels``, ``texts`` (the
    word) and ``mels`` (n, n_mels, n_mels) log-mels."""

    task = "spoken-words"
    outputs: ClassVar[dict[str, str]] = {".wav": "a .wav file (one word)", ".png": "a .png of the spectrograms",
                                          "": "a new folder (one WAV per word)"}
    flags_of = (ImageRun, TextToImageRun)  # --class K, --prompt WORD

    _vocoder: Any = None

    @property
    def vocabulary(self) -> tuple[str, ...]:
        return tuple(self.config.words.vocabulary)

    def vocoder(self, ref: str | Path | None = None):
        """The loaded vocoder run (``ref``, else ``words.vocoder``), once."""
        from difflab.tasks import load_run

        folder = vocoder_folder(ref if ref is not None else self.config.words.vocoder)
        if self._vocoder is None or self._vocoder.folder.resolve() != folder:
            loaded = load_run(folder, self.device)
            check_same_audio(self.config, loaded.config, folder)
            self._vocoder = loaded
        return self._vocoder

    def _images(self, batches: list[Tensor]) -> np.ndarray:
        """float32 log-mels (n, n_mels, n_mels) of the drawn images."""
        floor, top = silence(self.config.audio), self.config.words.mel_max
        return torch.cat([from_model_range(x[:, 0].float().cpu(), floor, top) for x in batches]).numpy()

    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, vocoder: str | Path | None = None, **options: Any) -> Samples:
        """``n`` words: log-mels drawn by the run's sampler, vocoded (at the vocoder's own sampling settings)."""
        voc = self.vocoder(vocoder)  # a missing vocoder fails before any sampling
        drawn = super().sample(n, cond=cond, sampler=sampler, steps=steps, seed=seed, guidance=guidance,
                               batch_size=batch_size, progress=progress, **options)
        mels, labels = drawn.data, drawn.conditions["labels"]
        data = np.empty(n, dtype=object)
        data[:] = voc.vocode(list(torch.from_numpy(mels)), seed=seed, progress=progress)
        texts = np.asarray([self.vocabulary[k] for k in labels], dtype=str)
        return Samples(data, {"labels": labels, "texts": texts, "mels": mels})

    def save(self, samples: Samples, out: Path) -> Path:
        """``.wav`` one word, ``.png`` the spectrograms captioned with their words, else a folder of WAVs."""
        from difflab import grids
        from difflab.tasks.vocoder import save_waves

        if Path(out).suffix.lower() == ".png":
            mels, texts = samples.conditions["mels"], samples.conditions["texts"]
            return grids.save_png(Path(out), grids.spectrograms(list(mels), [str(t) for t in texts]))
        return save_waves(samples, out, self.config.audio.sample_rate)

    def default_output(self, sampler: str, steps: int) -> Path:
        return self.folder / "samples" / f"words-{sampler}-{steps}"

    def grid_rows(self, rows: int, seed: int) -> list[GridRow]:
        return [GridRow(word, k) for k, word in enumerate(self.vocabulary)]

    def check_metrics(self, **_: Any) -> None:
        self.vocoder()

    def metrics(self, samples: Samples, **_: Any) -> dict[str, Any]:
        """Recognition accuracy of the intended word (pocketsphinx restricted to the vocabulary) and diversity
        within each word, beside the same two on the real held-out words."""
        from difflab.data.mel import log_mel
        from difflab.evaluate.audio import recognise_words

        rate, words = self.config.audio.sample_rate, self.vocabulary
        heard = recognise_words(list(samples.data), rate, words)
        intended = [str(t) for t in samples.conditions["texts"]]
        waves, ids, _ = vocabulary_utterances(self.config, "test")
        real = [words[k] for k in ids]
        real_heard = recognise_words(waves, rate, words)
        real_mels = [log_mel(w, self.config.audio) for w in waves]
        return {"data": f"{self.config.data.name} words, test split ({len(waves)} utterances)",
                "word_accuracy": float(np.mean([h == t for h, t in zip(heard, intended)])),
                "word_accuracy_real": float(np.mean([h == t for h, t in zip(real_heard, real)])),
                "chance": 1.0 / len(words),
                "per_word": {w: float(np.mean([h == w for h, t in zip(heard, intended) if t == w] or [np.nan]))
                             for w in words},
                "diversity": within_word_diversity(list(samples.conditions["mels"]), intended),
                "diversity_real": within_word_diversity(real_mels, real),
                "heard": heard}

    def test_images(self) -> Tensor:
        return word_mels(self.config, "test")[0].images

    def report_sections(self) -> Sequence[Section]:
        h = report_html
        return h.config_section, h.training_section, listen_section, h.metrics_section, h.environment_section

    @staticmethod
    def add_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--vocoder", metavar="RUN", help="vocoder run that voices the spectrograms (spoken-words "
                                                             "runs; default: the run's words.vocoder)")

    def request(self, args: argparse.Namespace, n: int | None, default_n: int) -> SampleRequest:
        """``--prompt WORD`` (repeatable): ``n`` samples of each (default 1); ``--class K``: ``n`` of class K;
        else every word in turn, ``n`` in all (default one each)."""
        options = {"vocoder": args.vocoder} if getattr(args, "vocoder", None) else {}
        given = read_prompts(getattr(args, "prompt_list", None), getattr(args, "prompts_file", None))
        if given:
            index = {w: k for k, w in enumerate(self.vocabulary)}
            unknown = [p for p in given if p.strip().lower() not in index]
            if unknown:
                raise UserError(f"{unknown[0]!r} is not a word of this run: use one of {', '.join(self.vocabulary)}")
            per = n or 1
            return SampleRequest(len(given) * per, [index[p.strip().lower()] for p in given for _ in range(per)],
                                 per, options)
        class_id = getattr(args, "class_id", None)
        if class_id is not None:
            return SampleRequest(n or 1, [class_id] * (n or 1), None, options)
        K = len(self.vocabulary)
        return SampleRequest(n or K, None, K, options)


def within_word_diversity(mels: Sequence[Tensor | np.ndarray], words: Sequence[str]) -> float:
    """Mean over words (with two samples or more) of :func:`~difflab.evaluate.audio.diversity` among that word's
    log-mels: 0 when every sample of a word is the same."""
    from difflab.evaluate.audio import diversity

    groups = [[m for m, w in zip(mels, words) if w == word] for word in dict.fromkeys(words)]
    values = [diversity(g) for g in groups if len(g) >= 2]
    return float(np.mean(values)) if values else float("nan")


def listen_section(ctx: Any) -> tuple[str, str]:
    """A report's "Listen": generated words (players) with their spectrograms, and a real held-out one of each."""
    import html

    from difflab import grids

    run: SpokenWordsRun = ctx.loaded
    h, rate, K = report_html, run.config.audio.sample_rate, len(run.vocabulary)
    try:
        samples = run.sample(K * LISTEN_PER_WORD, cond=[k for k in range(K) for _ in range(LISTEN_PER_WORD)],
                             seed=ctx.seed, progress=False)
    except UserError as e:
        return "Listen", f'<p class="missing">{html.escape(str(e))}</p>'
    waves, texts = samples.data, samples.conditions["texts"]
    players = "".join(h.audio_tag(h.wav_data_uri(w, rate), str(t)) for w, t in zip(waves, texts))
    picture = grids.spectrograms(list(samples.conditions["mels"]), [str(t) for t in texts])
    note = (f"checkpoint step {ctx.checkpoint_step} (EMA weights), seed {ctx.seed}, {run.config.sample.sampler} "
            f"{run.config.sample.steps} steps, guidance {run.config.sample.guidance}, vocoder {run.config.words.vocoder}")
    return "Listen", (f'<p class="note">{html.escape(note)}</p><div class="words">{players}</div>'
                      f'<img src="{h.png_data_uri(picture)}" alt="generated log-mel spectrograms">')


TASK = SpokenWordsTask
RUN = SpokenWordsRun
