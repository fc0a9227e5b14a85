"""The pre-LN transformer block over a token sequence (B, L, D).

A block of GPT-2 / the pre-LN Transformer (Vaswani et al. 2017, "Attention Is All You Need";
Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture"):

    x = x + Attn(LN(x), key_mask)
    x = x + MLP(LN(x))          with MLP = Linear(D, r*D) -> GELU -> Linear(r*D, D)

Attention is bidirectional with a key padding mask, so padded positions never influence the
valid ones. Shared by the text encoders (:mod:`difflab.models.text_encoders`), the CLIP text
tower and the text-diffusion networks.
"""

from __future__ import annotations

from torch import Tensor, nn

from difflab.errors import UserError
from difflab.nn.attention import multihead_attention

MLP_RATIO = 4  # hidden width of the MLP over the model width (Vaswani et al. 2017: 2048 / 512)


class SelfAttention(nn.Module):
    """Multi-head self-attention of a sequence with an optional key padding mask.

    Args:
        width: D of the tokens.
        num_heads: attention heads; must divide ``width``.
    """

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise UserError(f"width {width} cannot be split into {num_heads} attention heads: "
                            f"use a number of heads dividing the width")
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(width, 3 * width)
        self.proj_out = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, L, D), mask (B, L) bool True = valid key -> (B, L, D)."""
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)  # (B, L, D) each
        return self.proj_out(multihead_attention(q, k, v, self.num_heads, mask))  # (B, L, D)


class TransformerBlock(nn.Module):
    """Pre-LN block: LayerNorm -> self-attention -> residual, LayerNorm -> MLP -> residual.

    Args:
        width: D of the tokens.
        num_heads: attention heads; must divide ``width``.
        mlp_ratio: hidden width of the MLP over ``width``.
        dropout: dropout on the attention and MLP outputs before each residual.
    """

    def __init__(self, width: int, num_heads: int, *, mlp_ratio: int = MLP_RATIO, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, L, D), mask (B, L) bool True = valid token (None = all) -> (B, L, D)."""
        x = x + self.dropout(self.attn(self.norm1(x), mask))  # (B, L, D)
        return x + self.dropout(self.mlp(self.norm2(x)))  # (B, L, D)
