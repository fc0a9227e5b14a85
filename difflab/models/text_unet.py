"""A UNet that reads a caption: the text encoder + generation model of the text-to-image system.

The text encoder (:mod:`difflab.models.text_encoders`) turns a caption into token vectors
(B, L, D) and one pooled vector (B, P). The UNet reads the tokens by cross-attention at its
attention levels (Rombach et al. 2022, Sec. 3.3) and adds the projected pooled vector to its
time embedding (Saharia et al. 2022, Sec. 2.2). A trainable encoder (``scratch``) is a
submodule, trained jointly and saved with the UNet; a frozen one (``minilm``, ``clip``) has
already turned the caption into vectors in ``tokenize`` and passes them through.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difflab.models.text_encoders import TextEncoder
from difflab.models.unet import UNet


class TextConditionedUNet(nn.Module):
    """``net(x_t, t, drop=..., **text) -> prediction`` where ``text = encoder.tokenize(captions)``.

    Args:
        unet: built with ``context_dim = encoder.dim`` and ``pooled_dim = encoder.pooled_dim``.
        text_encoder: any :class:`~difflab.models.text_encoders.TextEncoder`.
    """

    def __init__(self, unet: UNet, text_encoder: TextEncoder, *, context: str = "tokens", normalize: bool = False,
                 noise: float = 0.0) -> None:
        super().__init__()
        if unet.context_dim != text_encoder.dim:
            raise ValueError(f"UNet context_dim {unet.context_dim} != text encoder dim {text_encoder.dim}")
        if context == "pooled" and text_encoder.pooled_dim != text_encoder.dim:
            raise ValueError(f"a pooled context needs pooled_dim {text_encoder.pooled_dim} == dim {text_encoder.dim}")
        self.unet, self.text_encoder = unet, text_encoder
        self.context, self.normalize, self.noise = context, normalize, noise

    def read(self, **text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What the UNet reads of the encoder's output: the token states or (``context`` "pooled") the sentence
        vector as one token, each vector at unit RMS (``normalize``), with Gaussian noise of ``noise`` times its
        RMS while training (a frozen encoder's vectors of unseen words land near, not on, the training ones)."""
        context, context_mask, pooled = self.text_encoder(**text)  # (B, L, D), (B, L), (B, P)
        if self.context == "pooled":
            context, context_mask = pooled[:, None], torch.ones_like(context_mask[:, :1])  # (B, 1, D), (B, 1)
        if self.normalize:
            context, pooled = unit_rms(context), unit_rms(pooled)
        if self.training and self.noise > 0:
            context = context + self.noise * rms(context) * torch.randn_like(context)
            pooled = pooled + self.noise * rms(pooled) * torch.randn_like(pooled)
        return context, context_mask, pooled

    def forward(self, x: Tensor, t: Tensor, *, drop: Tensor | None = None, added_emb: Tensor | None = None,
                **text: Tensor) -> Tensor:
        """x (B, C, H, W), t (B,), drop (B,) bool, text: the tensors of ``tokenize``, added_emb (B, D) as the
        UNet's -> (B, C, H, W)."""
        context, context_mask, pooled = self.read(**text)  # (B, L, D), (B, L), (B, P)
        return self.unet(x, t, context=context, context_mask=context_mask, pooled=pooled, drop=drop,
                         added_emb=added_emb)


def rms(v: Tensor) -> Tensor:
    """Root mean square over the last dimension, kept: (..., 1)."""
    return v.pow(2).mean(-1, keepdim=True).sqrt()


def unit_rms(v: Tensor) -> Tensor:
    """``v`` scaled to unit RMS along its last dimension (zero vectors stay zero)."""
    return v / rms(v).clamp_min(torch.finfo(v.dtype).tiny)
