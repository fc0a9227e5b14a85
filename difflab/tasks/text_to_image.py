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

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from difflab.config import Config
from difflab.data import load_dataset
from difflab.data.images import to_model_range
from difflab.errors import UserError
from difflab.losses import diffusion_loss
from difflab.models.text_encoders import TextEncoder, build_text_encoder
from difflab.models.text_unet import TextConditionedUNet
from difflab.schedules import Schedule, make_schedule

TOKENIZER_FILE = "tokenizer.json"  # the scratch encoder's vocabulary, beside the run's config
TEXT_ENCODERS = ("none", "scratch", "minilm", "clip")


def is_text_to_image(cfg: Config) -> bool:
    """Whether a config describes a text-to-image model."""
    if cfg.model.text_encoder not in TEXT_ENCODERS:
        raise UserError(f"unknown model.text_encoder {cfg.model.text_encoder!r}: use one of {', '.join(TEXT_ENCODERS)}")
    return cfg.model.text_encoder != "none"


def load_text_encoder(cfg: Config, *, texts: Sequence[str] | None = None, run: str | Path | None = None) -> TextEncoder:
    """The text encoder of ``cfg``: a scratch vocabulary is built from ``texts`` or read from ``run``."""
    m = cfg.model
    vocab_json = None
    if m.text_encoder == "scratch" and texts is None:
        vocab = Path(run) / TOKENIZER_FILE if run is not None else None
        if vocab is None or not vocab.is_file():
            raise UserError(f"{run} has no {TOKENIZER_FILE} (the scratch encoder's vocabulary): retrain the run")
        vocab_json = vocab.read_text(encoding="utf-8")
    return build_text_encoder(m.text_encoder, texts=texts, vocab_json=vocab_json, clip_run=m.clip_run,
                              max_length=m.text_max_length, width=m.text_width, layers=m.text_layers,
                              heads=m.text_heads)


def build_text_unet(cfg: Config, channels: int, encoder: TextEncoder) -> TextConditionedUNet:
    """The UNet of ``cfg.model`` reading ``encoder``'s token vectors and pooled vector."""
    from difflab.tasks.image import build_unet

    return TextConditionedUNet(build_unet(cfg, channels, context_dim=encoder.dim, pooled_dim=encoder.pooled_dim),
                               encoder)


def is_empty(prompts: Sequence[str]) -> Tensor:
    """(B,) bool: True where a prompt is empty (= unconditional)."""
    return torch.tensor([not p.strip() for p in prompts], dtype=torch.bool)


def prompt_condition(model: nn.Module, prompts: Sequence[str], device: torch.device) -> dict[str, Tensor]:
    """The denoiser's ``cond`` for ``prompts`` on a :class:`TextConditionedUNet` (empty prompt = null)."""
    encoder = getattr(model, "text_encoder", None)
    if encoder is None:
        raise UserError("this run has no text encoder, so --prompt cannot be used: drop --prompt")
    cond = {k: v.to(device) for k, v in encoder.tokenize(list(prompts)).items()}
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


class TextToImageTask:
    """Caption-conditioned image diffusion on an in-memory captioned dataset."""

    def __init__(self, cfg: Config) -> None:
        d = cfg.data
        dataset = load_dataset(d.name, path=d.path, resolution=d.resolution, channels=d.channels,
                               size=d.size, holdout=d.holdout)
        if not dataset.texts:
            raise UserError(f"dataset {d.name} has no captions, but model.text_encoder is {cfg.model.text_encoder}: "
                            "train on captioned images (data.name=shapes, or an image-folder with metadata.jsonl) "
                            "or set model.text_encoder=none")
        H, _ = dataset.resolution
        self.channels = dataset.channels
        self.config = replace(cfg, data=replace(d, resolution=H, channels=dataset.channels),
                              model=replace(cfg.model, num_classes=0))
        self.schedule: Schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
        self.images: Tensor = dataset.images  # uint8 (N, C, H, W)
        captions, index = np.unique(np.asarray(dataset.texts, dtype=object).astype(str), return_inverse=True)
        self.captions: list[str] = captions.tolist()  # the U distinct captions
        self.caption_index = torch.from_numpy(index.reshape(-1)).long()  # (N,) into captions
        self.encoder = load_text_encoder(self.config, texts=self.captions)
        self.text = self.encoder.tokenize(self.captions)  # tensors (U, ...), encoded once
        self.empty = is_empty(self.captions)  # (U,)

    def to(self, device: torch.device) -> None:
        """Keep images and encoded captions on the training device (they are small)."""
        self.images, self.caption_index, self.empty = (self.images.to(device), self.caption_index.to(device),
                                                       self.empty.to(device))
        self.text = {k: v.to(device) for k, v in self.text.items()}

    def run_files(self) -> dict[str, str]:
        """The scratch encoder's vocabulary, written beside the run's config."""
        tokenizer = getattr(self.encoder, "tokenizer", None)
        return {TOKENIZER_FILE: tokenizer.to_json()} if self.config.model.text_encoder == "scratch" else {}

    def build_model(self) -> nn.Module:
        return build_text_unet(self.config, self.channels, self.encoder)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """A random batch of (image, caption) pairs drawn with ``generator`` (reproducible per step).

        Returns:
            x0 (B, C, H, W) in [-1, 1] and the network's condition: the tokenized captions and ``drop`` (B,),
            True for empty captions and at ``model.cond_drop_prob`` (for guidance).
        """
        device = self.images.device
        idx = torch.randint(0, len(self.images), (batch_size,), device=device, generator=generator)
        x0 = to_model_range(self.images[idx])
        cap = self.caption_index[idx]  # (B,)
        drop = (torch.rand(batch_size, device=device, generator=generator) < self.config.model.cond_drop_prob)
        return x0, {**{k: v[cap] for k, v in self.text.items()}, "drop": drop | self.empty[cap]}

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Algorithm 1 on a random :meth:`batch` of (image, caption) pairs."""
        x0, cond = self.batch(batch_size, generator)
        dc = self.config.diffusion
        return diffusion_loss(lambda x_t, t: model(x_t, t, **cond), x0, self.schedule,
                              prediction=dc.prediction, weighting=dc.weighting,
                              min_snr_gamma=dc.min_snr_gamma, generator=generator)
