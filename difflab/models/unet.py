"""The UNet denoiser network (Ho et al. 2020; ADM, Dhariwal & Nichol 2021; LDM, Rombach et al. 2022).

Layout, for ``channel_mult = (1, 2, 2)`` and ``base_channels = 64`` (widths 64, 128, 128)::

    x (B, C, H, W) -> conv_in -> [level 0: res (+attn) x n, down] -> [level 1 ...] -> [level 2: res (+attn) x n]
                   -> middle: res, attn, res
                   -> [level 2: res (+attn) x (n+1), up] -> ... -> [level 0: res (+attn) x (n+1)]
                   -> GroupNorm -> SiLU -> conv_out (zero-initialised) -> (B, C_out, H, W)

Every up-path res block takes the matching down-path activation concatenated on channels.
Levels listed in ``attention_levels`` get self-attention after each res block, and
cross-attention to a context sequence when ``context_dim > 0``.

Conditioning:

* time: sinusoidal features of the float time t -> MLP -> embedding ``emb`` (B, D);
* class: a learned embedding added to ``emb``; row ``num_classes`` is the learned null class;
* context: (B, L, context_dim) token states read by cross-attention, with a (B, L) bool
  padding mask (True = valid); a learned null token stands for "no context";
* pooled: (B, pooled_dim) one vector for the whole caption (a text encoder's pooled output),
  projected and added to ``emb`` like the class (Imagen, Saharia et al. 2022, Sec. 2.2); a learned
  null vector stands for "no caption";
* added: (B, D) an embedding made outside, added to ``emb`` as it is and never dropped (a
  super-resolution stage's noise-augmentation level, Saharia et al. 2022, Sec. 2.5).

``drop`` (B,) bool swaps a sample's condition for the learned null condition: condition
dropout in training and the unconditional branch of classifier-free guidance (Ho & Salimans
2022). The network returns the raw prediction (eps, x0 or v); it never computes a loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.errors import UserError
from difflab.nn.attention import SpatialAttention
from difflab.nn.blocks import KERNEL, PAD, RESAMPLE_FACTOR, Downsample, ResBlock, Upsample, zero_init
from difflab.nn.embeddings import COORD_CHANNELS, TimestepEmbedding, coordinate_channels

TIME_EMBED_MULT = 4  # embedding width D = 4 x base_channels (Ho et al. 2020, Appendix B; ADM)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


# -- a stage: layers that each take what they need ---------------------------------------------
class _Stage(nn.ModuleList):
    """Layers run in order; res blocks get ``emb``, cross-attention gets the context."""

    def forward(self, h: Tensor, emb: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialAttention) and layer.context_dim:
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h


# -- building the two paths ----------------------------------------------------------------
class _Builder:
    """Makes the down and up stages from a res-block and an attention factory."""

    def __init__(self, res: Callable[[int, int], nn.Module], attn: Callable[[int], list[nn.Module]],
                 num_res_blocks: int, attention_levels: set[int]) -> None:
        self.res, self.attn, self.n, self.attention_levels = res, attn, num_res_blocks, attention_levels

    def _level_attn(self, level: int, width: int) -> list[nn.Module]:
        return self.attn(width) if level in self.attention_levels else []

    def down(self, widths: list[int]) -> tuple[nn.ModuleList, list[int]]:
        """Down-path stages and the channels of every activation they hand to the up path."""
        stages, ch = nn.ModuleList(), widths[0]
        skips = [ch]  # conv_in's output
        for level, width in enumerate(widths):
            for _ in range(self.n):
                stages.append(_Stage([self.res(ch, width), *self._level_attn(level, width)]))
                ch = width
                skips.append(ch)
            if level < len(widths) - 1:
                stages.append(_Stage([Downsample(ch)]))
                skips.append(ch)
        return stages, skips

    def up(self, widths: list[int], skips: list[int]) -> nn.ModuleList:
        """Up-path stages; each consumes one skip activation (popped from ``skips``)."""
        stages, ch = nn.ModuleList(), widths[-1]
        for level in reversed(range(len(widths))):
            width = widths[level]
            for i in range(self.n + 1):
                layers = [self.res(ch + skips.pop(), width), *self._level_attn(level, width)]
                ch = width
                if level > 0 and i == self.n:
                    layers.append(Upsample(ch))
                stages.append(_Stage(layers))
        return stages


# -- configuration checks ----------------------------------------------------------------------
def _check_config(in_channels: int, widths: list[int], attention_levels: Sequence[int], norm_groups: int,
                  num_classes: int, context_dim: int, pooled_dim: int = 0) -> None:
    """Raise a one-line UserError for a UNet that cannot be built."""
    if in_channels < 1:
        raise UserError(f"in_channels must be at least 1, got {in_channels}: check data.channels")
    if not widths or min(widths) < 1:
        raise UserError(f"channel_mult must be a non-empty list of positive integers, got widths {widths}: "
                        f"fix model.channel_mult / model.base_channels")
    bad = [w for w in widths if w % norm_groups]
    if bad:
        raise UserError(f"level widths {bad} (base_channels x channel_mult) are not divisible by norm_groups "
                        f"{norm_groups}: use model.base_channels divisible by {norm_groups} or change model.norm_groups")
    missing = [lvl for lvl in attention_levels if not 0 <= lvl < len(widths)]
    if missing:
        raise UserError(f"attention levels {missing} do not exist with {len(widths)} levels: "
                        f"use model.attention_levels within 0..{len(widths) - 1}")
    if min(num_classes, context_dim, pooled_dim) < 0:
        raise UserError(f"num_classes ({num_classes}), context_dim ({context_dim}) and pooled_dim ({pooled_dim}) "
                        "must be >= 0: fix the model config")


def _size_factor(levels: int, patch_size: int) -> int:
    """What H and W must be multiples of: the patch, then a halving between each two of ``levels``."""
    return patch_size * RESAMPLE_FACTOR ** (levels - 1)


def check_resolution(resolution: int, channel_mult: Sequence[int], patch_size: int) -> None:
    """Raise a one-line UserError unless a square side ``resolution`` fits the UNet: it must be a
    multiple of ``patch_size * 2 ** (len(channel_mult) - 1)`` (the pixel unshuffle, then each downsampling
    halves the side exactly, so that the up path's skips match).

    Args:
        resolution: side of the images in pixels (``data.resolution``, or the dataset's native one).
        channel_mult: ``model.channel_mult``; its length is the number of levels.
        patch_size: ``model.patch_size``.

    Raises:
        UserError: naming the nearest valid resolutions.
    """
    factor = _size_factor(len(channel_mult), patch_size)
    if resolution < 1 or resolution % factor:
        below, above = resolution // factor * factor, (max(resolution, 0) // factor + 1) * factor
        valid = f"{below} or {above}" if below > 0 else f"{above}"
        raise UserError(f"data.resolution {resolution} is not a positive multiple of {factor} (model.patch_size "
                        f"{patch_size} x 2**(levels-1) for model.channel_mult of length {len(channel_mult)}): "
                        f"set data.resolution={valid}, or use fewer levels or a smaller model.patch_size")


# -- the network ---------------------------------------------------------------------------
class UNet(nn.Module):
    """UNet denoiser with time, class and cross-attention conditioning.

    Args:
        in_channels: C of the input images.
        out_channels: C of the prediction; None = ``in_channels``.
        base_channels: width of level 0; level i has ``base_channels * channel_mult[i]``.
        channel_mult: width multiplier per level; len - 1 downsamplings.
        num_res_blocks: res blocks per level on the way down (one more on the way up).
        attention_levels: level indices (0 = full resolution) with attention after each res block.
        num_heads: attention heads; must divide the width of every attention level.
        dropout: dropout in the res blocks.
        num_classes: classes for class conditioning; 0 = none.
        context_dim: D of the cross-attention context; 0 = no cross-attention.
        pooled_dim: D of a pooled condition vector added to the embedding; 0 = none.
        norm_groups: GroupNorm groups; must divide every level width.
        patch_size: space-to-depth factor p: the network runs on (C p^2, H/p, W/p) via pixel
            unshuffle and shuffles back at the end (p^2 times fewer positions; cheap on CPUs).
        coord_channels: append each position's (y, x) to the input (CoordConv): lets a small
            network place things where a caption says ("at the top left").
    """

    def __init__(self, *, in_channels: int, out_channels: int | None = None, base_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = (2,), num_heads: int = 4, dropout: float = 0.0,
                 num_classes: int = 0, context_dim: int = 0, pooled_dim: int = 0, norm_groups: int = 8,
                 patch_size: int = 1, coord_channels: bool = False) -> None:
        super().__init__()
        widths = [base_channels * m for m in channel_mult]
        _check_config(in_channels, widths, attention_levels, norm_groups, num_classes, context_dim, pooled_dim)
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.patch_size, self.coord_channels = patch_size, coord_channels
        self.levels, self.num_classes, self.context_dim = len(widths), num_classes, context_dim
        embed_dim = self.embed_dim = TIME_EMBED_MULT * base_channels
        res = partial(ResBlock, embed_dim=embed_dim, dropout=dropout, norm_groups=norm_groups)
        attn = partial(self._attention, num_heads=num_heads, norm_groups=norm_groups)
        build = _Builder(res, attn, num_res_blocks, set(attention_levels))

        self.time_embed = TimestepEmbedding(base_channels, embed_dim)
        self.class_embed = nn.Embedding(num_classes + 1, embed_dim) if num_classes else None  # row K = null
        self.null_context = nn.Parameter(torch.zeros(context_dim)) if context_dim else None  # (D,)
        self.pooled_proj = nn.Linear(pooled_dim, embed_dim) if pooled_dim else None
        self.null_pooled = nn.Parameter(torch.zeros(pooled_dim)) if pooled_dim else None  # (P,)
        coords = COORD_CHANNELS if coord_channels else 0
        self.conv_in = nn.Conv2d(in_channels * patch_size ** 2 + coords, widths[0], KERNEL, padding=PAD)
        self.down, skips = build.down(widths)
        mid = widths[-1]
        self.middle = _Stage([res(mid, mid), *attn(mid), res(mid, mid)])
        self.up = build.up(widths, skips)
        self.out = nn.Sequential(nn.GroupNorm(norm_groups, widths[0]), nn.SiLU(),
                                 zero_init(nn.Conv2d(widths[0], self.out_channels * patch_size ** 2, KERNEL,
                                                     padding=PAD)))

    def _attention(self, channels: int, *, num_heads: int, norm_groups: int) -> list[nn.Module]:
        """Self-attention, then cross-attention when the model has a context."""
        layers = [SpatialAttention(channels, num_heads, norm_groups=norm_groups)]
        if self.context_dim:
            layers.append(SpatialAttention(channels, num_heads, context_dim=self.context_dim, norm_groups=norm_groups))
        return layers

    # -- conditioning ------------------------------------------------------------------------
    def _class_embedding(self, labels: Tensor | None, drop: Tensor) -> Tensor | None:
        """(B, D) class embedding, the null row where dropped or no labels; None for an unconditional model."""
        if self.class_embed is None:
            if labels is not None:
                raise ValueError("labels were given to a UNet built with num_classes=0: build it with num_classes > 0")
            return None
        null = torch.full_like(drop, self.num_classes, dtype=torch.long)  # (B,)
        index = null if labels is None else torch.where(drop, null, labels.long())  # (B,)
        return self.class_embed(index)  # (B, D)

    def _pooled_embedding(self, pooled: Tensor | None, drop: Tensor) -> Tensor | None:
        """(B, D) projection of the pooled condition, the null vector where dropped or absent."""
        if self.pooled_proj is None:
            if pooled is not None:
                raise ValueError("pooled was given to a UNet built with pooled_dim=0: build it with pooled_dim > 0")
            return None
        null = self.null_pooled[None].expand(drop.shape[0], -1)  # (B, P)
        pooled = null if pooled is None else torch.where(drop[:, None], null.to(pooled.dtype), pooled)  # (B, P)
        return self.pooled_proj(pooled.to(self.pooled_proj.weight.dtype))  # (B, D)

    def _context(self, context: Tensor | None, context_mask: Tensor | None,
                 drop: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The context (B, L, D) and mask (B, L) cross-attention reads, null tokens where dropped.

        A sample whose mask has no valid token is treated as dropped (null context).
        """
        if self.null_context is None:
            if context is not None or context_mask is not None:
                raise ValueError("context was given to a UNet built with context_dim=0: build it with context_dim > 0")
            return None, None
        B = drop.shape[0]
        if context is None:
            if context_mask is not None:
                raise ValueError("context_mask was given without context")
            return self.null_context.expand(B, 1, -1), None  # (B, 1, D)
        if context.ndim != 3 or context.shape[0] != B or context.shape[2] != self.context_dim:
            raise ValueError(f"context must be (B={B}, L, D={self.context_dim}), got {tuple(context.shape)}")
        if context_mask is not None:
            if context_mask.shape != context.shape[:2]:
                raise ValueError(f"context_mask must be (B, L) = {tuple(context.shape[:2])}, got {tuple(context_mask.shape)}")
            drop = drop | ~context_mask.any(dim=1)  # (B,)
            context_mask = context_mask | drop[:, None]  # (B, L): a null context is all valid
        null = self.null_context.to(context.dtype)[None, None]  # (1, 1, D)
        return torch.where(drop[:, None, None], null, context), context_mask  # (B, L, D)

    def _check_input(self, x: Tensor, t: Tensor) -> Tensor:
        """Validate x (B, C, H, W) and return t as (B,)."""
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"UNet built for {self.in_channels} channels got input with {C}")
        factor = _size_factor(self.levels, self.patch_size)
        if H % factor or W % factor:
            raise UserError(f"image size {H}x{W} is not divisible by {factor} (patch_size x 2**(levels-1) for "
                            f"channel_mult of length {self.levels}): use data.resolution divisible by {factor}, "
                            "fewer levels or a smaller model.patch_size")
        t = t.expand(B) if t.ndim == 0 else t
        if t.shape != (B,):
            raise ValueError(f"t must have shape (B,) = ({B},), got {tuple(t.shape)}")
        return t

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, *, labels: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, pooled: Tensor | None = None,
                drop: Tensor | None = None, added_emb: Tensor | None = None) -> Tensor:
        """Predict from a noisy image.

        Args:
            x: (B, C, H, W) noisy images; H and W divisible by 2**(levels-1).
            t: (B,) float times in [0, T) (fractional allowed).
            labels: (B,) long class ids; None on a class-conditional model = null class for all.
            context: (B, L, context_dim) token states for cross-attention; None = null context.
            context_mask: (B, L) bool, True = valid token.
            pooled: (B, pooled_dim) pooled condition; None on a model with one = null for all.
            drop: (B,) bool, True = use the learned null condition for that sample
                (ignored by a model with no condition).
            added_emb: (B, embed_dim) a further embedding added to the time embedding, never dropped
                (a super-resolution stage's noise-augmentation level, :mod:`difflab.models.super_resolution`).

        Returns:
            (B, out_channels, H, W) raw prediction.
        """
        t = self._check_input(x, t)
        drop = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device) if drop is None else drop  # (B,)
        emb = self.time_embed(t)  # (B, D)
        class_emb = self._class_embedding(labels, drop)
        if class_emb is not None:
            emb = emb + class_emb.to(emb.dtype)  # (B, D)
        pooled_emb = self._pooled_embedding(pooled, drop)
        if pooled_emb is not None:
            emb = emb + pooled_emb.to(emb.dtype)  # (B, D)
        if added_emb is not None:
            emb = emb + added_emb.to(emb.dtype)  # (B, D)
        context, context_mask = self._context(context, context_mask, drop)  # (B, L, D_ctx), (B, L)
        h = F.pixel_unshuffle(x, self.patch_size)  # (B, C p^2, H/p, W/p)
        h = self.conv_in(coordinate_channels(h) if self.coord_channels else h)  # (B, C_0, H/p, W/p)
        hs = [h]
        for stage in self.down:
            h = stage(h, emb, context, context_mask)  # (B, C_l, H_l, W_l)
            hs.append(h)
        h = self.middle(h, emb, context, context_mask)  # (B, C_mid, H_mid, W_mid)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb, context, context_mask)  # (B, C_l, H_l, W_l)
        return F.pixel_shuffle(self.out(h), self.patch_size)  # (B, C_out, H, W)
