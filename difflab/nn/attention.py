"""Multi-head attention over the spatial positions of a feature map.

One module serves both uses of the UNet (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", Sec. 3.3):

* self-attention: queries, keys and values all come from the image tokens (ADM, Dhariwal &
  Nichol 2021);
* cross-attention: queries from the image tokens, keys and values from a context sequence
  (B, L, D), e.g. text-encoder states, with an optional key padding mask (B, L).

Both are pre-norm (GroupNorm) with a zero-initialised output projection and a residual, so a
freshly built block is the identity.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from difflab.errors import UserError


def multihead_attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int, key_mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention (Vaswani et al. 2017, eq. 1) split into heads.

    Args:
        q: (B, N, C) queries.
        k, v: (B, L, C) keys and values.
        num_heads: heads; C must be divisible by it.
        key_mask: (B, L) bool, True = the key takes part; None = all keys.

    Returns:
        (B, N, C) attended values, heads concatenated.
    """
    B, N, C = q.shape
    L = k.shape[1]
    hd = C // num_heads
    q = q.reshape(B, N, num_heads, hd).transpose(1, 2)  # (B, nh, N, hd)
    k = k.reshape(B, L, num_heads, hd).transpose(1, 2)  # (B, nh, L, hd)
    v = v.reshape(B, L, num_heads, hd).transpose(1, 2)  # (B, nh, L, hd)
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, N, hd)
    return out.transpose(1, 2).reshape(B, N, C)  # (B, N, C)


class SpatialAttention(nn.Module):
    """Self- (context_dim = 0) or cross-attention (context_dim > 0) on a (B, C, H, W) map.

    Args:
        channels: C of the feature map.
        num_heads: attention heads; must divide ``channels``.
        context_dim: D of the context for cross-attention; 0 = self-attention.
        norm_groups: groups of the pre-attention GroupNorm.
    """

    def __init__(self, channels: int, num_heads: int, *, context_dim: int = 0, norm_groups: int = 8) -> None:
        super().__init__()
        if channels % num_heads:
            raise UserError(f"{channels} channels cannot be split into {num_heads} attention heads: "
                            f"use model.num_heads dividing every level's width")
        self.num_heads, self.context_dim = num_heads, context_dim
        self.norm = nn.GroupNorm(norm_groups, channels)
        if context_dim:
            self.to_q = nn.Linear(channels, channels)
            self.to_kv = nn.Linear(context_dim, 2 * channels)
        else:
            self.to_qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        """x (B, C, H, W), context (B, L, D), context_mask (B, L) bool True = valid -> (B, C, H, W)."""
        B, C, H, W = x.shape
        h = self.norm(x).reshape(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        if self.context_dim:
            if context is None:
                raise ValueError("cross-attention needs a context (B, L, D)")
            q = self.to_q(h)  # (B, HW, C)
            k, v = self.to_kv(context).chunk(2, dim=-1)  # (B, L, C) each
        else:
            if context is not None or context_mask is not None:
                raise ValueError("self-attention takes no context: build it with context_dim > 0 for cross-attention")
            q, k, v = self.to_qkv(h).chunk(3, dim=-1)  # (B, HW, C) each
        out = multihead_attention(q, k, v, self.num_heads, context_mask)  # (B, HW, C)
        out = self.proj_out(out).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + out
