"""difflab's own CLIP: a small image CNN and a text transformer trained into one embedding space.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
(https://arxiv.org/abs/2103.00020), Fig. 3, at toy scale::

    I_e = normalize(W_i f(image))        f: conv stages with stride-2 downsampling, global pooling
    T_e = normalize(W_t g(tokens)[CLS])  g: models.text_encoders.TextTransformer
    logits = exp(t) I_e T_e^T            t = log(1 / temperature), learned, clamped at log(100)

The network only embeds; the contrastive loss is :func:`difflab.contrastive.clip_contrastive_loss`.
Training is ``difflab clip train`` (:mod:`difflab.tasks.clip`); a run folder loads with
:func:`difflab.tasks.clip.load_clip`.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.config import Config
from difflab.errors import UserError
from difflab.models.text_encoders import TextTransformer
from difflab.nn.blocks import conv_block
from difflab.nn.embeddings import COORD_CHANNELS, coordinate_channels

TOKENIZER_FILE = "tokenizer.json"  # RUN/tokenizer.json: the vocabulary of the training captions
MAX_LOGIT_SCALE = math.log(100)  # t is clamped here: temperature >= 0.01 (Radford et al. 2021, Sec. 2.5)
IMAGE_STAGES = 3  # stride-2 stages: 32x32 -> 4x4 before pooling; channels double at each
NORM_GROUPS = 8  # GroupNorm groups of the image encoder (no batch statistics: eval equals train)


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv -> GroupNorm -> SiLU (:func:`difflab.nn.blocks.conv_block`)."""
    return conv_block(c_in, c_out, stride=stride, norm=partial(nn.GroupNorm, NORM_GROUPS))


class ImageEncoder(nn.Module):
    """Small CNN: stem -> ``IMAGE_STAGES`` stride-2 blocks (channels doubled) -> global mean -> linear.

    Args:
        in_channels: C of the images.
        width: channels of the stem.
        out_dim: size of the output vector (not normalised).
    """

    def __init__(self, in_channels: int, width: int, out_dim: int) -> None:
        super().__init__()
        layers, c = [_conv_block(in_channels + COORD_CHANNELS, width)], width
        for _ in range(IMAGE_STAGES):
            layers.append(_conv_block(c, 2 * c, stride=2))
            c *= 2
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(c, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) in [-1, 1] -> (B, out_dim)."""
        h = self.body(coordinate_channels(x))  # (B, C', H', W')
        return self.proj(h.mean(dim=(2, 3)))  # (B, out_dim)


class CLIPModel(nn.Module):
    """Image and text encoders into one unit-sphere embedding space, and the learned logit scale.

    Args:
        image_channels: C of the images.
        resolution: side of the images it is trained on (others are resized to it by the evaluators).
        vocab_size: tokens of the :class:`~difflab.models.text_encoders.WordTokenizer`.
        embed_dim: E of the joint embedding.
        image_width: channels of the image encoder's stem.
        text_width, text_layers, text_heads, max_length: the text transformer.
        temperature: initial softmax temperature; t = log(1 / temperature) is learned.
    """

    def __init__(self, image_channels: int, resolution: int, vocab_size: int, *, embed_dim: int,
                 image_width: int, text_width: int, text_layers: int, text_heads: int, max_length: int,
                 temperature: float) -> None:
        super().__init__()
        if temperature <= 0:
            raise UserError(f"clip.temperature must be positive, got {temperature}: set e.g. clip.temperature=0.07")
        self.image_channels, self.resolution, self.max_length = image_channels, resolution, max_length
        self.image_encoder = ImageEncoder(image_channels, image_width, embed_dim)
        self.text_encoder = TextTransformer(vocab_size, text_width, text_layers, text_heads, max_length)
        self.text_proj = nn.Linear(text_width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def clamped_logit_scale(self) -> Tensor:
        """t clamped at log(100), as the loss uses it (scalar)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE)

    def encode_image(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) in [-1, 1] -> I_e (B, E) unit vectors."""
        return F.normalize(self.image_encoder(images).float(), dim=-1)

    def text_states(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, L), mask (B, L) bool -> (states (B, L, text_width), T_e (B, E) unit vectors)."""
        states, pooled = self.text_encoder(tokens, mask)  # (B, L, D), (B, D)
        return states, F.normalize(self.text_proj(pooled).float(), dim=-1)

    def encode_text(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens (B, L), mask (B, L) bool -> T_e (B, E) unit vectors."""
        return self.text_states(tokens, mask)[1]

    def forward(self, images: Tensor, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(I_e (B, E), T_e (B, E), clamped t): everything :func:`~difflab.losses.clip_contrastive_loss` takes."""
        return self.encode_image(images), self.encode_text(tokens, mask), self.clamped_logit_scale()


def build_clip(cfg: Config, vocab_size: int) -> CLIPModel:
    """The CLIP described by ``cfg.clip`` for the resolved ``cfg.data`` (channels, resolution)."""
    d, c = cfg.data, cfg.clip
    if d.channels is None or d.resolution is None:
        raise UserError("config has no data.channels / data.resolution: it was not written by `difflab clip train`;"
                        " retrain the run")
    return CLIPModel(d.channels, d.resolution, vocab_size, embed_dim=c.embed_dim, image_width=c.image_width,
                     text_width=c.text_width, text_layers=c.text_layers, text_heads=c.text_heads,
                     max_length=c.max_length, temperature=c.temperature)
