"""CLIP training glue: captioned dataset -> :class:`~difflab.models.clip.CLIPModel` -> contrastive loss.

The one training loop (:mod:`difflab.train`) does the rest (EMA, checkpoints, resume, progress).
Each step draws a batch of (image, caption) pairs with replacement, so a batch may hold the same
caption twice; such pairs are counted as positives of each other
(:func:`difflab.contrastive.clip_contrastive_loss` with ``groups``), not as negatives.

The built-in default (:func:`clip_config`, spelled out in configs/clip_shapes.yaml) is sized so
that ``difflab clip train --data shapes`` reaches >= 95% retrieval accuracy on held-out renders in
well under the 2-3 CPU-minutes asked of it (measured with OMP_NUM_THREADS=2: 300 steps in 58 s,
then ``difflab clip eval``: retrieval 1.000 among 299 captions on 1000 test renders, CLIP score
99.0 matched vs 11.5 mismatched; 100 steps already gave 1.000).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from difflab import io, report_html
from difflab.config import Config, apply_overrides
from difflab.contrastive import clip_contrastive_loss
from difflab.data import captioned_pairs
from difflab.data.images import to_model_range
from difflab.errors import UserError
from difflab.evaluate.clip_score import clip_eval
from difflab.evaluate.fid import fixed_subset
from difflab.evaluate.run_eval import update_eval_file
from difflab.models.clip import TOKENIZER_FILE, CLIPModel, build_clip
from difflab.models.text_encoders import WordTokenizer
from difflab.paths import cache_dir
from difflab.tasks.base import RunBase, Section, a_run
from difflab.tasks.gaussian import load_network

CLIP_DIR = "clip"  # cache_dir(CLIP_DIR)/{data}-{H}x{H}-c{C}[-{path hash}]: the default CLIP runs
PATH_HASH_CHARS = 8
EVAL_IMAGES = 1000  # held-out images of `difflab clip eval`

# The default budget of `difflab clip train` and of the cached CLIP behind `difflab eval`'s CLIP score.
CLIP_DEFAULTS = ("task=clip", "train.batch_size=128", "train.lr=2e-3", "train.weight_decay=0.01",
                 "train.warmup_steps=50", "train.lr_decay=cosine", "train.ema_decay=0.99",
                 "train.max_steps=300", "train.max_minutes=3", "train.checkpoint_every=100",
                 "train.log_every=25")


def clip_config(data: str, *, data_path: str | None = None, resolution: int | None = None,
                channels: int | None = None, overrides: Sequence[str] = ()) -> Config:
    """The default CLIP config (:data:`CLIP_DEFAULTS`) for a dataset, then ``overrides`` (``key=value``)."""
    d = replace(Config().data, name=data, path=data_path, resolution=resolution, channels=channels,
                class_conditional=False)
    return apply_overrides(replace(Config(), data=d), [*CLIP_DEFAULTS, *overrides])


def _pairs(cfg: Config, split: str = "train") -> tuple[Tensor, list[str], int]:
    d = cfg.data
    return captioned_pairs(d.name, path=d.path, resolution=d.resolution, channels=d.channels, split=split,
                           size=d.size, holdout=d.holdout)


class ClipTask:
    """Contrastive image-text pre-training (Radford et al. 2021) on a captioned image dataset."""

    name = "clip"

    def __init__(self, cfg: Config) -> None:
        if cfg.task not in (None, self.name):
            raise UserError(f"this config is {a_run(cfg.task)}'s, not a CLIP run's (a --resume of another kind of "
                            f"run?): choose another --out")
        images, texts, H = _pairs(cfg)
        self.config = replace(cfg, task=self.name, data=replace(cfg.data, resolution=H, channels=int(images.shape[1])))
        self.tokenizer = WordTokenizer.from_texts(texts)
        self.images: Tensor = images  # uint8 (N, C, H, W)
        self.tokens, self.mask = self.tokenizer.encode(texts, cfg.clip.max_length)  # (N, L) each, once
        ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        self.caption_ids: Tensor = torch.tensor([ids[t] for t in texts])  # (N,) equal for equal captions

    def run_files(self) -> dict[str, str]:
        """RUN/tokenizer.json: the vocabulary of the training captions (written by the loop)."""
        return {TOKENIZER_FILE: self.tokenizer.to_json()}

    def to(self, device: torch.device) -> None:
        """Keep the pairs on the training device (they are small)."""
        for name in ("images", "tokens", "mask", "caption_ids"):
            setattr(self, name, getattr(self, name).to(device))

    def preview(self, model: nn.Module) -> None:
        return None

    def build_model(self) -> CLIPModel:
        return build_clip(self.config, self.tokenizer.vocab_size)

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Symmetric InfoNCE on a random batch of pairs drawn with ``generator``."""
        idx = torch.randint(0, len(self.images), (batch_size,), device=self.images.device, generator=generator)
        image_embeds, text_embeds, logit_scale = model(to_model_range(self.images[idx]), self.tokens[idx],
                                                       self.mask[idx])
        return clip_contrastive_loss(image_embeds, text_embeds, logit_scale, groups=self.caption_ids[idx])


# -- a trained run -------------------------------------------------------------------------------
def read_tokenizer(run: str | Path) -> WordTokenizer:
    """The tokenizer saved in a CLIP run folder (RUN/tokenizer.json)."""
    return WordTokenizer.load(run, TOKENIZER_FILE, "difflab clip train")


class ClipRun(RunBase):
    """A trained CLIP: it embeds images and captions (the CLIP score, a frozen text encoder); it cannot sample."""

    task = "clip"

    def __init__(self, folder: Path, config: Config, model: CLIPModel, tokenizer: WordTokenizer,
                 checkpoint: Path) -> None:
        super().__init__(folder, config, checkpoint)
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def load(cls, folder: Path, config: Config, device: torch.device | str = "cpu", *, ema: bool = True,
             checkpoint: Path | None = None) -> ClipRun:
        checkpoint = checkpoint or io.require_checkpoint(folder)
        tokenizer = read_tokenizer(folder)
        model = load_network(build_clip(config, tokenizer.vocab_size), checkpoint, ema, device)
        return cls(folder, config, model, tokenizer, checkpoint)

    def report_sections(self) -> Sequence[Section]:
        h = report_html
        return h.config_section, h.training_section, clip_section, h.environment_section

    def evaluate(self, n: int = EVAL_IMAGES, write: bool = True) -> dict[str, Any]:
        """:func:`~difflab.evaluate.clip_score.clip_eval` on ``n`` held-out images of the run's dataset
        (split "test"), merged into RUN/metrics.json under ``clip`` when ``write``."""
        if n < 2:
            raise UserError(f"CLIP evaluation needs at least 2 images, got {n}: pass --n 2 or more")
        images, texts, _ = _pairs(self.config, split="test")
        idx = fixed_subset(np.arange(len(texts)), n)  # (n,) sorted
        result = {"checkpoint_step": self.checkpoint_step, "data": f"{self.config.data.name} (test split)",
                  "n": len(idx), **clip_eval(self.model, self.tokenizer, images[idx], [texts[i] for i in idx])}
        if write:
            update_eval_file(self.folder, {"clip": result})
        return result


def load_clip(run: str | Path, device: torch.device | str = "cpu") -> tuple[Config, CLIPModel, WordTokenizer]:
    """A run folder of ``difflab clip train``: its config, the EMA model (eval, no grad), the tokenizer.

    Raises:
        UserError: not a run folder, not a CLIP run, or no checkpoint yet.
    """
    loaded = load_clip_run(run, device)
    return loaded.config, loaded.model, loaded.tokenizer


def load_clip_run(run: str | Path, device: torch.device | str = "cpu") -> ClipRun:
    """:func:`difflab.tasks.load_run` of a CLIP run, else one line (checked before its checkpoint is read)."""
    from difflab.tasks import load_run, run_class

    cfg, cls = run_class(run)
    if cls is not ClipRun:
        raise UserError(f"{run} is {a_run(cfg.task)}, not a CLIP run: pass the --out folder of `difflab clip train`")
    return load_run(run, device)


def evaluate_clip_run(run: str | Path, *, n: int = EVAL_IMAGES, device: torch.device | str = "cpu",
                      write: bool = True) -> dict[str, Any]:
    """Retrieval accuracy and CLIP score of a CLIP run on ``n`` held-out images (:meth:`ClipRun.evaluate`)."""
    return load_clip_run(run, device).evaluate(n, write=write)


def clip_section(ctx: Any) -> tuple[str, str]:
    """Retrieval accuracy and CLIP scores of ``difflab clip eval`` (metrics.json's "clip" block)."""
    block = (ctx.evaluation or {}).get("clip")
    if not isinstance(block, dict):
        return "Retrieval", report_html._missing(f"not computed yet: run `difflab clip eval {ctx.run}`")
    f = report_html._fmt
    rows = [["retrieval accuracy (image -> caption)", f(block.get("retrieval")), f(block.get("chance"))],
            ["CLIP score, matched pairs", f(block.get("clip_score")), ""],
            ["CLIP score, mismatched pairs", f(block.get("clip_score_mismatched")), ""]]
    note = (f"{f(block.get('n'))} {f(block.get('data'))} images, {f(block.get('distinct_texts'))} distinct captions, "
            f"checkpoint step {f(block.get('checkpoint_step'))}")
    return "Retrieval", f'<p class="note">{note}</p>' + report_html._table(["measure", "value", "chance"], rows, (1, 2))


# -- the default CLIP of a dataset -----------------------------------------------------------------
def default_clip_path(data: str, resolution: int, channels: int, data_path: str | None = None) -> Path:
    """``cache_dir("clip")/{data}-{H}x{H}-c{C}``, plus a hash of the resolved ``data_path`` when given."""
    key = f"{data}-{resolution}x{resolution}-c{channels}"
    if data_path is not None:
        key += "-" + hashlib.sha256(str(Path(data_path).expanduser().resolve()).encode()).hexdigest()[:PATH_HASH_CHARS]
    return cache_dir(CLIP_DIR) / key


def get_default_clip(data: str, data_path: str | None = None, resolution: int | None = None,
                     channels: int | None = None, progress: bool = True) -> Path:
    """The run folder of the default CLIP of a dataset, trained once (default budget) when missing.

    Args:
        data, data_path: the captioned dataset (see :func:`difflab.data.load_dataset`).
        resolution, channels: of the images it will score; None = the dataset's native ones.
        progress: show the training bar.

    Returns:
        A run folder for :func:`load_clip`, cached under ``cache_dir("clip")``; an unfinished one (a
        killed training) is resumed.
    """
    from difflab.train import train

    cfg = clip_config(data, data_path=data_path, resolution=resolution, channels=channels)
    task = None
    if resolution is None or channels is None:
        task = ClipTask(cfg)
        resolution, channels = task.config.data.resolution, task.config.data.channels
    run = default_clip_path(data, resolution, channels, data_path)
    if not io.is_finished(run):
        print(f"no CLIP for {data} at {resolution}x{resolution} yet: training one once with the default "
              f"budget (cached in {run})")
        train(task or ClipTask(cfg), run, resume=True, progress=progress)
    return run


TASK = ClipTask
RUN = ClipRun
