"""CLIP training glue: captioned dataset -> :class:`~difflab.models.clip.CLIPModel` -> contrastive loss.

The one training loop (:mod:`difflab.train`) does the rest (EMA, checkpoints, resume, progress).
Each step draws a batch of (image, caption) pairs with replacement, so a batch may hold the same
caption twice; such pairs are counted as positives of each other
(:func:`difflab.losses.clip_contrastive_loss` with ``groups``), not as negatives.

The built-in default (:func:`clip_config`, spelled out in configs/clip_shapes.yaml) is sized so
that ``difflab clip train --data shapes`` reaches >= 95% retrieval accuracy on held-out renders in
well under the 2-3 CPU-minutes asked of it (measured with OMP_NUM_THREADS=2: 300 steps in 58 s,
then ``difflab clip eval``: retrieval 1.000 among 299 captions on 1000 test renders, CLIP score
99.0 matched vs 11.5 mismatched; 100 steps already gave 1.000).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from difflab.config import Config, apply_overrides
from difflab.data import load_dataset
from difflab.data.images import to_model_range
from difflab.errors import UserError
from difflab.losses import clip_contrastive_loss
from difflab.models.clip import TOKENIZER_FILE, CLIPModel, build_clip
from difflab.models.text_encoders import WordTokenizer

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


def captioned_pairs(cfg: Config, split: str = "train") -> tuple[Tensor, list[str], int]:
    """(uint8 images (N, C, H, W), captions) of a dataset's captioned images, and its resolution H.

    Raises:
        UserError: the dataset has no captions.
    """
    d = cfg.data
    ds = load_dataset(d.name, path=d.path, resolution=d.resolution, channels=d.channels, split=split,
                      size=d.size, holdout=d.holdout)
    keep = [i for i, t in enumerate(ds.texts or []) if t.strip()]
    if not keep:
        raise UserError(f"dataset {d.name} has no captions, and CLIP learns from image-text pairs: use "
                        f"--data shapes, or an image folder with a metadata.jsonl of captions")
    return ds.images[keep], [ds.texts[i] for i in keep], ds.resolution[0]


class ClipTask:
    """Contrastive image-text pre-training (Radford et al. 2021) on a captioned image dataset."""

    def __init__(self, cfg: Config) -> None:
        images, texts, H = captioned_pairs(cfg)
        self.config = replace(cfg, data=replace(cfg.data, resolution=H, channels=int(images.shape[1])))
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

    def build_model(self) -> CLIPModel:
        return build_clip(self.config, self.tokenizer.vocab_size)

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Symmetric InfoNCE on a random batch of pairs drawn with ``generator``."""
        idx = torch.randint(0, len(self.images), (batch_size,), device=self.images.device, generator=generator)
        image_embeds, text_embeds, logit_scale = model(to_model_range(self.images[idx]), self.tokens[idx],
                                                       self.mask[idx])
        return clip_contrastive_loss(image_embeds, text_embeds, logit_scale, groups=self.caption_ids[idx])
