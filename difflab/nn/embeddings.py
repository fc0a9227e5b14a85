"""Timestep embeddings: sinusoidal features of a (possibly fractional) time, then an MLP.

The sinusoid is the Transformer's positional encoding (Vaswani et al. 2017, Sec. 3.5) applied
to the diffusion time, as in DDPM (Ho et al. 2020, Appendix B) and ADM (Dhariwal & Nichol 2021):

    emb(t)[i]        = cos(t * w_i)      i < dim/2
    emb(t)[dim/2+i]  = sin(t * w_i)      with w_i = max_period ** (-i / (dim/2))

Times are floats, so samplers may ask for fractional t.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

MAX_PERIOD = 10_000.0  # Vaswani et al. 2017: wavelengths form a geometric series up to 10000 * 2 pi


def timestep_embedding(t: Tensor, dim: int, max_period: float = MAX_PERIOD) -> Tensor:
    """Sinusoidal features of float times.

    Args:
        t: (B,) float times (fractional allowed).
        dim: feature width; an odd width gets a zero last feature.
        max_period: the longest wavelength (over 2 pi) of the series.

    Returns:
        (B, dim) float32 features, cosines first then sines.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)  # (D/2,)
    args = t.float()[:, None] * freqs[None]  # (B, D/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*(D/2))
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, D)
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of t, then Linear -> SiLU -> Linear to the embedding width.

    Args:
        dim: width of the sinusoidal features.
        embed_dim: width of the output embedding.
        max_period: passed to :func:`timestep_embedding`.
    """

    def __init__(self, dim: int, embed_dim: int, max_period: float = MAX_PERIOD) -> None:
        super().__init__()
        self.dim, self.max_period = dim, max_period
        self.mlp = nn.Sequential(nn.Linear(dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: Tensor) -> Tensor:
        """(B,) float times -> (B, embed_dim)."""
        freqs = timestep_embedding(t, self.dim, self.max_period)  # (B, dim)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))  # (B, D)


COORD_CHANNELS = 2  # (y, x) in [-1, 1] appended to an image (CoordConv, Liu et al. 2018): convolutions then know where


def coordinate_channels(x: Tensor) -> Tensor:
    """x (B, C, H, W) with two more channels holding each pixel's (y, x) in [-1, 1] -> (B, C + 2, H, W)."""
    B, _, H, W = x.shape
    ys = torch.linspace(-1, 1, H, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, W, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))  # (2, H, W)
    return torch.cat([x, grid.expand(B, -1, -1, -1)], dim=1)  # (B, C + 2, H, W)
