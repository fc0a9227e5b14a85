"""DALL-E 2's two networks around a CLIP: the diffusion prior and the decoder's conditioning.

Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents"
(https://arxiv.org/abs/2204.06125), at toy scale::

    z_i = sqrt(E) normalize(I_e)      the CLIP image embedding (E values) the prior generates (Sec. 2.2)
    z_t = sqrt(E) normalize(T_e)      the CLIP text embedding it is conditioned on
    P(z_i | y)                        the prior: Gaussian diffusion on (B, E) vectors, z_t as condition
    P(x | z_i, y)                     the decoder: an image UNet reading z_i (Sec. 2.1)

Both embeddings are unit vectors scaled by sqrt(E) (:func:`embedding_scale`), so a component has unit
variance on average: the scale of the N(0, I) the Gaussian core noises towards (unit vectors would be
drowned by the noise of the first steps).

* :class:`PriorMLP` is the prior's denoiser: x_t (B, E), t (B,) and the text embedding -> a prediction
  (B, E). The paper's prior is a decoder-only transformer over the text tokens, the text embedding, the
  timestep and the noised image embedding; here it is difflab's residual MLP
  (:class:`~difflab.models.mlp.MLPBlock`) that reads the text embedding twice: concatenated to x_t at the
  input, and added (projected) to the time embedding of every block. A learned null vector replaces the
  text embedding where the condition is dropped (classifier-free guidance).
* :class:`ImageEmbeddingEncoder` is what the decoder reads: as DALL-E 2 does, z_i is projected into
  ``tokens`` extra context tokens for cross-attention and passed as the pooled vector the UNet adds to
  its time embedding; optionally the caption's token states (the CLIP text tower's) follow. It has the
  :class:`~difflab.models.text_encoders.TextEncoder` interface, so the decoder is the text-to-image
  :class:`~difflab.models.text_unet.TextConditionedUNet` with this encoder.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from difflab.models.mlp import MLPBlock
from difflab.models.text_encoders import TextEncoder
from difflab.nn.embeddings import TimestepEmbedding


def embedding_scale(embed_dim: int) -> float:
    """sqrt(E): unit CLIP embeddings times this have components of unit variance on average."""
    return math.sqrt(embed_dim)


def scaled_embedding(embeds: Tensor) -> Tensor:
    """(B, E) embeddings -> sqrt(E) * normalize(embeds): the space the prior samples in and the decoder reads."""
    return nn.functional.normalize(embeds.float(), dim=-1) * embedding_scale(embeds.shape[-1])


def _dropped(vec: Tensor | None, null: Tensor, drop: Tensor | None, batch: int) -> Tensor:
    """(B, E): ``vec`` with the learned ``null`` (E,) where ``drop`` (B,) is True or ``vec`` is None."""
    nulls = null[None].expand(batch, -1)  # (B, E)
    if vec is None:
        return nulls
    return vec if drop is None else torch.where(drop[:, None], nulls.to(vec.dtype), vec)  # (B, E)


class PriorMLP(nn.Module):
    """The diffusion prior's denoiser: ``net(x_t, t, text_embed=..., drop=...) -> prediction`` on (B, E).

    Args:
        embed_dim: E, the CLIP embedding dimension (of x_t, the prediction and the text embedding).
        width: W, the hidden width (also the width of the time embedding).
        num_blocks: residual blocks (:class:`~difflab.models.mlp.MLPBlock`).
    """

    def __init__(self, embed_dim: int, *, width: int, num_blocks: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.time_embed = TimestepEmbedding(width, width)
        self.null_text = nn.Parameter(torch.zeros(embed_dim))  # (E,) the dropped condition
        self.text_proj = nn.Linear(embed_dim, width)
        self.inp = nn.Linear(2 * embed_dim, width)
        self.blocks = nn.ModuleList(MLPBlock(width, width) for _ in range(num_blocks))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, embed_dim))

    def forward(self, x: Tensor, t: Tensor, *, text_embed: Tensor | None = None,
                drop: Tensor | None = None) -> Tensor:
        """x (B, E) noisy image embeddings, t (B,) float times, text_embed (B, E) scaled text embeddings
        (None = the null condition for all), drop (B,) bool -> prediction (B, E)."""
        B = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.embed_dim:
            raise ValueError(f"the prior takes (B, E={self.embed_dim}) embeddings, got {tuple(x.shape)}")
        c = _dropped(text_embed, self.null_text, drop, B).to(x.dtype)  # (B, E)
        emb = self.time_embed(t.expand(B) if t.ndim == 0 else t) + self.text_proj(c)  # (B, W)
        h = self.inp(torch.cat([x, c], dim=1))  # (B, 2E) -> (B, W)
        for block in self.blocks:
            h = block(h, emb)  # (B, W)
        return self.out(h)  # (B, E)


class ImageEmbeddingEncoder(TextEncoder):
    """The decoder's condition: z_i (B, E) -> (context (B, K [+ L], E), context_mask, pooled z_i (B, E)).

    Trained with the decoder (``trainable``); the CLIP that made z_i (and the caption's states) is frozen
    and ran once, in the task. A sample without z_i (``image_embed`` None) gets the UNet's null condition.

    Args:
        embed_dim: E of z_i; also the width of the context tokens.
        tokens: K, context tokens projected from z_i (DALL-E 2: 4).
        text_dim: width of the caption's token states to append (projected to E); 0 = no caption.
    """

    kind = "clip-image"
    trainable = True

    def __init__(self, embed_dim: int, *, tokens: int, text_dim: int = 0) -> None:
        super().__init__(embed_dim, embed_dim, tokens)
        self.tokens = tokens
        self.token_proj = nn.Linear(embed_dim, tokens * embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim) if text_dim else None

    def forward(self, image_embed: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """image_embed (B, E) scaled z_i; context (B, L, text_dim) and context_mask (B, L) the caption's states
        (with ``text_dim`` only) -> (context (B, K + L, E), context_mask (B, K + L), pooled (B, E)), or Nones
        (the UNet's null condition) without ``image_embed``."""
        if image_embed is None:
            return None, None, None
        B, E = image_embed.shape
        tokens = self.token_proj(image_embed).reshape(B, self.tokens, E)  # (B, K, E)
        mask = torch.ones(B, self.tokens, dtype=torch.bool, device=image_embed.device)  # (B, K)
        if self.text_proj is not None:
            if context is None or context_mask is None:
                raise ValueError("this decoder reads the caption too: pass its context and context_mask")
            tokens = torch.cat([tokens, self.text_proj(context.to(tokens.dtype))], dim=1)  # (B, K + L, E)
            mask = torch.cat([mask, context_mask], dim=1)  # (B, K + L)
        return tokens, mask, image_embed


__all__ = ["ImageEmbeddingEncoder", "PriorMLP", "embedding_scale", "scaled_embedding"]
