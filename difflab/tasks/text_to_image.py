"""Text-to-image glue: captioned images -> text encoder + UNet -> loss; prompts -> conditions.

The lecture's system: a text encoder (``model.text_encoder``: ``scratch``, trained jointly;
``minilm``, frozen and pretrained; ``clip``, frozen text tower of difflab's own CLIP), a
generation model (the UNet of :mod:`difflab.models.unet`, reading the caption by
cross-attention and a pooled vector) and, in pixel space, no separate decoder. Captions are
dropped to the learned null condition with probability ``model.cond_drop_prob`` so that
classifier-free guidance (``sample.guidance``) can be used at sampling; an empty caption or
prompt always means "no caption" (unconditional).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from difflab import files
from difflab.config import Config
from difflab.data import caption_table, captioned_pairs, load_dataset
from difflab.data.images import to_model_range
from difflab.denoisers import Cond
from difflab.errors import UserError
from difflab.evaluate.fid import fixed_subset
from difflab.evaluate.run_eval import text_metrics
from difflab.models.text_encoders import TextEncoder, WordTokenizer, build_text_encoder
from difflab.models.text_unet import TextConditionedUNet
from difflab.schedules import Schedule, schedule_from_config
from difflab.tasks.base import GridRow, SampleRequest, Samples
from difflab.tasks.gaussian import algorithm1
from difflab.tasks.image import (PREVIEW_SAMPLES, ImageRun, build_unet, image_channels, load_images, preview_grid,
                                 warn_narrow_patches)

TOKENIZER_FILE = "tokenizer.json"  # the scratch encoder's vocabulary, beside the run's config
TEXT_ENCODERS = ("scratch", "minilm", "clip")
DEFAULT_PER_PROMPT = 8  # difflab sample with --prompt / --prompts: images per prompt (one grid row)


def load_text_encoder(cfg: Config, *, texts: Sequence[str] | None = None, run: str | Path | None = None) -> TextEncoder:
    """The text encoder of ``cfg``: a scratch vocabulary is built from ``texts`` or read from ``run``;
    a CLIP encoder is the text tower of the run ``model.clip_run``."""
    from difflab.tasks.clip import load_clip

    m = cfg.model
    if m.text_encoder not in TEXT_ENCODERS:
        raise UserError(f"task text-to-image needs a text encoder, but model.text_encoder is {m.text_encoder!r}: "
                        f"set it to one of {', '.join(TEXT_ENCODERS)}, or set task=image")
    tokenizer = None
    if m.text_encoder == "scratch" and texts is None:
        if run is None:
            raise UserError("a scratch text encoder needs its run folder's vocabulary, or training captions")
        tokenizer = WordTokenizer.load(run, TOKENIZER_FILE, "difflab train")
    clip = load_clip(m.clip_run) if m.text_encoder == "clip" and m.clip_run is not None else None
    return build_text_encoder(m.text_encoder, texts=texts, tokenizer=tokenizer, clip=clip,
                              max_length=m.text_max_length, width=m.text_width, layers=m.text_layers,
                              heads=m.text_heads, layer=m.text_layer)


def build_text_unet(cfg: Config, channels: int, encoder: TextEncoder, *, cond_channels: int = 0) -> TextConditionedUNet:
    """The UNet of ``cfg.model`` reading ``encoder``'s token vectors and pooled vector (and ``cond_channels``
    more input channels, as :func:`~difflab.tasks.image.build_unet`)."""
    m = cfg.model
    if m.text_context == "pooled" and encoder.pooled_dim != encoder.dim:
        raise UserError(f"model.text_context=pooled needs a sentence vector as wide as the token states, but the "
                        f"{m.text_encoder} encoder gives {encoder.pooled_dim} and {encoder.dim}: set "
                        f"model.text_context=tokens")
    return TextConditionedUNet(build_unet(cfg, channels, context_dim=encoder.dim, pooled_dim=encoder.pooled_dim,
                                          cond_channels=cond_channels), encoder, context=m.text_context,
                               normalize=m.text_normalize, noise=m.text_noise)


def is_empty(prompts: Sequence[str]) -> Tensor:
    """(B,) bool: True where a prompt is empty (= unconditional)."""
    return torch.tensor([not p.strip() for p in prompts], dtype=torch.bool)


def prompt_condition(model: TextConditionedUNet, prompts: Sequence[str], device: torch.device) -> dict[str, Tensor]:
    """The denoiser's ``cond`` for ``prompts`` on a :class:`TextConditionedUNet` (empty prompt = null)."""
    cond = {k: v.to(device) for k, v in model.text_encoder.tokenize(list(prompts)).items()}
    cond["drop"] = is_empty(prompts).to(device)
    return cond


def default_prompts(cfg: Config, n: int, seed: int = 0) -> list[str]:
    """``n`` captions of the run's dataset (its test split where it has one), drawn with ``seed``."""
    d = cfg.data
    texts = load_dataset(d.name, path=d.path, resolution=d.resolution, channels=d.channels, split="test").texts
    if not texts:
        raise UserError(f"dataset {d.name} has no captions to draw prompts from: pass --prompt or --prompts FILE")
    pick = np.random.default_rng(seed).integers(0, len(texts), size=n)
    return [texts[i] for i in pick]


def sample_prompts(cfg: Config, n: int, cond: Any, seed: int) -> list[str]:
    """The prompt of each of ``n`` samples: ``cond`` (n strings), or None = captions drawn from the data with
    ``seed`` (:func:`default_prompts`)."""
    prompts = default_prompts(cfg, n, seed) if cond is None and n > 0 else list(cond or [])
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} samples")
    return prompts


class TextToImageTask:
    """Caption-conditioned image diffusion on an in-memory captioned dataset."""

    name = "text-to-image"

    def __init__(self, cfg: Config, check: Callable[[int], None] | None = None) -> None:
        d = cfg.data
        dataset = load_images(cfg, check=check)
        if not dataset.texts:
            raise UserError(f"dataset {d.name} has no captions, but model.text_encoder is {cfg.model.text_encoder}: "
                            "train on captioned images (data.name=shapes, or an image-folder with metadata.jsonl) "
                            "or set model.text_encoder=none")
        H, _ = dataset.resolution
        self.channels = dataset.channels
        self.config = replace(cfg, task=self.name, data=replace(d, resolution=H, channels=dataset.channels),
                              model=replace(cfg.model, num_classes=0))
        self.schedule: Schedule = schedule_from_config(cfg.diffusion)
        self.images: Tensor = dataset.images  # uint8 (N, C, H, W)
        if check is None:  # pixels (a latent task checks, and warns about, its own sides)
            warn_narrow_patches(self.config, self.channels)
        self.captions, self.caption_ids = caption_table(dataset, d.captions, d.caption_variants)  # U, (N, K)
        self.caption_index = self.caption_ids[:, 0]  # (N,): each image's own caption
        self.encoder = load_text_encoder(self.config, texts=self.captions)
        self.text = self.encoder.tokenize(self.captions)  # tensors (U, ...), encoded once
        self.empty = is_empty(self.captions)  # (U,)

    def to(self, device: torch.device) -> None:
        """Keep images and encoded captions on the training device (they are small)."""
        self.images, self.caption_index, self.caption_ids, self.empty = (
            self.images.to(device), self.caption_index.to(device), self.caption_ids.to(device), self.empty.to(device))
        self.text = {k: v.to(device) for k, v in self.text.items()}

    def run_files(self) -> dict[str, str]:
        """The scratch encoder's vocabulary, written beside the run's config."""
        return {TOKENIZER_FILE: self.encoder.tokenizer.to_json()} if self.config.model.text_encoder == "scratch" else {}

    def build_model(self) -> nn.Module:
        return build_text_unet(self.config, self.channels, self.encoder)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """A random batch of (image, caption) pairs drawn with ``generator`` (reproducible per step).

        Returns:
            x0 (B, C, H, W) in [-1, 1] and the network's condition: the tokenized captions and ``drop`` (B,),
            True for empty captions and at ``model.cond_drop_prob`` (for guidance).
        """
        device = self.caption_index.device
        idx = torch.randint(0, len(self.caption_index), (batch_size,), device=device, generator=generator)
        x0 = self.x0(idx)
        cap = self.caption_of(idx, generator)  # (B,)
        drop = (torch.rand(batch_size, device=device, generator=generator) < self.config.model.cond_drop_prob)
        return x0, {**{k: v[cap] for k, v in self.text.items()}, "drop": drop | self.empty[cap]}

    def caption_of(self, idx: Tensor, generator: torch.Generator) -> Tensor:
        """(B,) ids into ``captions`` of the training images ``idx``: one of each image's K variants, drawn with
        ``generator`` (K = 1: its own caption, and nothing drawn)."""
        K = self.caption_ids.shape[1]
        if K == 1:
            return self.caption_index[idx]
        pick = torch.randint(0, K, (len(idx),), device=idx.device, generator=generator)  # (B,)
        return self.caption_ids[idx, pick]

    def x0(self, idx: Tensor) -> Tensor:
        """What the diffusion models of the training images ``idx``: the images in [-1, 1] (B, C, H, W)."""
        return to_model_range(self.images[idx])

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Algorithm 1 on a random :meth:`batch` of (image, caption) pairs."""
        x0, cond = self.batch(batch_size, generator)
        return algorithm1(model, x0, cond, self.schedule, self.config, generator)

    def preview(self, model: nn.Module) -> np.ndarray:
        """A grid of samples for training captions (in turn)."""
        prompts = [self.captions[i % len(self.captions)] for i in range(PREVIEW_SAMPLES)]
        return preview_grid(model, self.schedule, self.config,
                            prompt_condition(model, prompts, next(model.parameters()).device))


# -- a trained run -------------------------------------------------------------------------------
REPORT_ROWS = 4  # report grid rows: prompts drawn from the data


class TextToImageRun(ImageRun):
    """A trained text-to-image run: ``cond`` is the prompt of every image (n strings, "" = unconditional;
    None = prompts drawn from the data's test captions with the seed)."""

    task = "text-to-image"

    @classmethod
    def build(cls, cfg: Config, folder: Path) -> nn.Module:
        return build_text_unet(cfg, image_channels(cfg), load_text_encoder(cfg, run=folder))

    @property
    def conditional(self) -> bool:
        return True

    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, **options: Any) -> Samples:
        """``n`` images uint8 (n, H, W, C) with their ``prompts``."""
        self.sampler_options(sampler, steps, {})
        prompts = sample_prompts(self.config, n, cond, seed)

        def cond_of(start: int, stop: int) -> Cond:
            return prompt_condition(self.model, prompts[start:stop], self.device)

        batches = self.draw(n, self.sample_shape, cond_of, sampler=sampler, steps=steps, seed=seed, guidance=guidance,
                            batch_size=batch_size, progress=progress, unit="img", **options)
        return Samples(self._images(batches), {"labels": np.full(n, -1, dtype=np.int64),
                                               "prompts": np.asarray(prompts, dtype=str)})

    def metrics(self, samples: Samples, *, data: str | None = None, data_path: str | None = None,
                features: str | Path | None = None, clip_run: str | Path | None = None,
                progress: bool = True) -> dict[str, Any]:
        """The image metrics plus how well the images follow their prompts (:meth:`prompt_metrics`)."""
        out = super().metrics(samples, data=data, data_path=data_path, features=features, progress=progress)
        return out | self.prompt_metrics(samples, clip_run=clip_run, progress=progress)

    def prompt_metrics(self, samples: Samples, *, clip_run: str | Path | None = None,
                       progress: bool = True) -> dict[str, Any]:
        """CLIP score and retrieval of the images with their prompts under difflab's own CLIP (``clip_run``,
        or the dataset's default, trained once and cached), beside as many real test pairs, and attribute
        accuracy (:func:`difflab.evaluate.run_eval.text_metrics`)."""
        from difflab.tasks.clip import get_default_clip, load_clip

        d = self.config.data
        clip_run = clip_run or get_default_clip(d.name, data_path=d.path, resolution=d.resolution,
                                                channels=d.channels, progress=progress)
        _, clip, tokenizer = load_clip(clip_run)
        prompts = samples.conditions["prompts"].tolist()
        real_images, real_texts, _ = captioned_pairs(d.name, path=d.path, resolution=d.resolution,
                                                     channels=d.channels, split="test", size=d.size)
        pick = fixed_subset(np.arange(len(real_texts)), len(prompts))
        return text_metrics(samples.data, prompts, clip, tokenizer, real_images[pick],
                            [real_texts[i] for i in pick]) | {"clip_run": str(clip_run)}

    def grid_rows(self, rows: int, seed: int) -> list[GridRow]:
        """REPORT_ROWS prompts drawn from the data with ``seed``, each printed under its row."""
        return [GridRow(f"#{r + 1}", p, p) for r, p in enumerate(default_prompts(self.config, REPORT_ROWS, seed))]

    @staticmethod
    def add_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--prompt", dest="prompt_list", action="append", metavar="TEXT",
                            help='caption to draw (text-to-image runs; repeatable; "" = unconditional)')
        parser.add_argument("--prompts", dest="prompts_file", metavar="FILE", help="text file with one prompt per line")

    def request(self, args: argparse.Namespace, n: int | None, default_n: int) -> SampleRequest:
        """``--prompt`` / ``--prompts``: ``n`` images per prompt (default DEFAULT_PER_PROMPT), one grid row each;
        without them ``n`` images for captions drawn from the data."""
        given = read_prompts(getattr(args, "prompt_list", None), getattr(args, "prompts_file", None))
        if not given:
            n = n or default_n
            return SampleRequest(n, default_prompts(self.config, n, getattr(args, "seed", 0)))
        per_prompt = n or DEFAULT_PER_PROMPT
        return SampleRequest(len(given) * per_prompt, [p for p in given for _ in range(per_prompt)], per_prompt)


def read_prompts(prompts: Sequence[str] | None, path: str | None) -> list[str]:
    """``prompts`` then the lines of the text file ``path`` (blank lines skipped)."""
    out = list(prompts or [])
    if path:
        text = files.read_text(path, "prompts file", "pass a text file with one prompt per line")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise UserError(f"prompts file {path} holds no prompt: write one prompt per line")
        out += lines
    return out


TASK = TextToImageTask
RUN = TextToImageRun
