"""A residual MLP denoiser network for low-dimensional data (the 2-D known-density check).

Vectors x_t (B, D) and times t (B,) in, a prediction (eps, x0 or v; see
:mod:`difflab.denoisers`) of the same shape out, so :class:`difflab.denoisers.NetworkDenoiser`
wraps it like the UNet. The time enters every block through the sinusoidal embedding of
:mod:`difflab.nn.embeddings` (as in the UNet), added to the hidden features; each block is
pre-norm residual (LayerNorm -> SiLU -> Linear (+ time) -> SiLU -> Linear) with its last
layer zero-initialised, so a fresh block is the identity (as :class:`difflab.nn.ResBlock`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from difflab.nn.blocks import zero_init
from difflab.nn.embeddings import TimestepEmbedding


class MLPBlock(nn.Module):
    """h + Linear(SiLU(Linear(SiLU(LayerNorm(h))) + proj(emb))), zero-initialised last Linear.

    Args:
        width: W, the hidden width.
        embed_dim: D of the time embedding.
    """

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, width))
        self.fc2 = zero_init(nn.Linear(width, width))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """h (B, W), emb (B, E) -> (B, W)."""
        z = self.fc1(F.silu(self.norm(h))) + self.emb_proj(emb)  # (B, W)
        return h + self.fc2(F.silu(z))  # (B, W)


class ResidualMLP(nn.Module):
    """Input Linear -> ``num_blocks`` :class:`MLPBlock` -> LayerNorm -> SiLU -> output Linear.

    Args:
        data_dim: D, the dimension of a sample.
        width: W, the hidden width (also the width of the time embedding).
        num_blocks: the number of residual blocks.
    """

    def __init__(self, data_dim: int, *, width: int, num_blocks: int) -> None:
        super().__init__()
        self.time_embed = TimestepEmbedding(width, width)
        self.inp = nn.Linear(data_dim, width)
        self.blocks = nn.ModuleList(MLPBlock(width, width) for _ in range(num_blocks))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, data_dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, D), t (B,) float times -> prediction (B, D)."""
        emb = self.time_embed(t)  # (B, W)
        h = self.inp(x)  # (B, W)
        for block in self.blocks:
            h = block(h, emb)  # (B, W)
        return self.out(h)  # (B, D)
