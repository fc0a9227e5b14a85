"""The KL autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models", Sec. 3 and Appendix G; the "KL-f4 / KL-f8" first stages of Stable Diffusion), also the
network of the VAE (Kingma & Welling 2014) that samples by decoding z ~ N(0, I).

Notation::

    x            an image (B, C, H, W) in [-1, 1]
    f            the downsampling factor (``autoencoder.downsample``): log2(f) stride-2 halvings
    z            the latent (B, c, H/f, W/f), c = ``autoencoder.latent_channels``
    mean, logvar the diagonal Gaussian q(z|x) = N(mean, exp(logvar)) the encoder outputs
    x_hat        the decoder's reconstruction D(z) (B, C, H, W)

Layout, for f = 4 and widths w_i = min(base_channels * 2**i, max_channels)::

    encoder: x -> conv_in -> [level 0: res x n, down] -> [level 1: res x n, down] -> [level 2: res x n]
               -> middle: res, attn, res -> GroupNorm -> SiLU -> conv -> (mean, logvar)
    decoder: z -> conv_in -> middle: res, attn, res -> [level 2: res x (n+1), up] -> [level 1 ..., up]
               -> [level 0: res x (n+1)] -> GroupNorm -> SiLU -> conv_out -> x_hat

The residual blocks, resolution changes and attention are the UNet's (:mod:`difflab.nn`), without a time
embedding. The network computes no loss: :mod:`difflab.tasks.autoencoder` does (reconstruction + KL).

API used by latent diffusion (keep it)::

    mean, logvar = model.encode(x)      # x (B, C, H, W) in [-1, 1] -> each (B, c, H/f, W/f)
    x_hat = model.decode(z)             # z (B, c, H/f, W/f) -> (B, C, H, W), about [-1, 1] (not clamped)
    x_hat, mean, logvar = model(x, noise)   # z = mean + exp(logvar / 2) * noise; noise None: z = mean

Latent diffusion trains on ``scale * mean`` (scale = :func:`difflab.tasks.autoencoder.latent_scale`, stored
in the run) and decodes ``z / scale``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from difflab.config import AutoencoderConfig
from difflab.errors import UserError
from difflab.nn.attention import SpatialAttention
from difflab.nn.blocks import KERNEL, PAD, RESAMPLE_FACTOR, Downsample, ResBlock, Upsample

# log-variances are clamped to this range before exp(), as LDM's DiagonalGaussianDistribution does: it only
# guards exp() against overflow (the KL term keeps trained encoders far inside it)
LOGVAR_RANGE = (-30.0, 20.0)
NO_EMBEDDING = 0  # the residual blocks take no time embedding (ResBlock's embed_dim)


def level_widths(base_channels: int, max_channels: int, levels: int) -> list[int]:
    """Channels of each resolution level 0..levels: ``min(base_channels * 2**i, max_channels)``."""
    return [min(base_channels * RESAMPLE_FACTOR ** i, max_channels) for i in range(levels + 1)]


def halvings(downsample: int) -> int:
    """log2(f): the stride-2 halvings of a factor ``downsample`` (a power of 2, at least 2)."""
    if downsample < RESAMPLE_FACTOR or downsample & (downsample - 1):
        raise UserError(f"autoencoder.downsample must be a power of 2 (2, 4, 8, ...), got {downsample}: "
                        f"set autoencoder.downsample=4 or 8")
    return downsample.bit_length() - 1


def check_side(side: int, downsample: int) -> None:
    """One line unless an image side ``side`` halves exactly log2(``downsample``) times."""
    if side < downsample or side % downsample:
        below, above = side // downsample * downsample, (side // downsample + 1) * downsample
        valid = f"{below} or {above}" if below > 0 else f"{above}"
        raise UserError(f"data.resolution {side} is not a positive multiple of autoencoder.downsample {downsample} "
                        f"(the latent is 1/{downsample} of the side): set data.resolution={valid}, or a smaller "
                        f"autoencoder.downsample")


class _Middle(nn.Sequential):
    """res -> (self-attention) -> res at the latent's resolution (LDM's ``mid`` block)."""

    def __init__(self, res: partial, width: int, attention: bool, num_heads: int, norm_groups: int) -> None:
        attn = [SpatialAttention(width, num_heads, norm_groups=norm_groups)] if attention else []
        super().__init__(res(width, width), *attn, res(width, width))


def _head(width: int, out_channels: int, norm_groups: int) -> nn.Sequential:
    """GroupNorm -> SiLU -> 3x3 conv to ``out_channels``."""
    return nn.Sequential(nn.GroupNorm(norm_groups, width), nn.SiLU(),
                         nn.Conv2d(width, out_channels, KERNEL, padding=PAD))


class Encoder(nn.Module):
    """x (B, C, H, W) -> (mean, logvar) of q(z|x), each (B, c, H/f, W/f)."""

    def __init__(self, in_channels: int, latent_channels: int, widths: list[int], num_res_blocks: int,
                 attention: bool, num_heads: int, norm_groups: int) -> None:
        super().__init__()
        res = partial(ResBlock, embed_dim=NO_EMBEDDING, norm_groups=norm_groups)
        self.conv_in = nn.Conv2d(in_channels, widths[0], KERNEL, padding=PAD)
        layers, ch = [], widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(res(ch, width))
                ch = width
            if level < len(widths) - 1:
                layers.append(Downsample(ch))
        self.down = nn.Sequential(*layers)
        self.middle = _Middle(res, ch, attention, num_heads, norm_groups)
        self.out = _head(ch, 2 * latent_channels, norm_groups)  # -> (mean, logvar)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.down(self.conv_in(x))  # (B, w_L, H/f, W/f)
        h = self.out(self.middle(h))  # (B, 2c, H/f, W/f)
        mean, logvar = h.chunk(2, dim=1)  # (B, c, H/f, W/f) each
        return mean, logvar.clamp(*LOGVAR_RANGE)


class Decoder(nn.Module):
    """z (B, c, H/f, W/f) -> x_hat (B, C, H, W)."""

    def __init__(self, out_channels: int, latent_channels: int, widths: list[int], num_res_blocks: int,
                 attention: bool, num_heads: int, norm_groups: int) -> None:
        super().__init__()
        res = partial(ResBlock, embed_dim=NO_EMBEDDING, norm_groups=norm_groups)
        ch = widths[-1]
        self.conv_in = nn.Conv2d(latent_channels, ch, KERNEL, padding=PAD)
        self.middle = _Middle(res, ch, attention, num_heads, norm_groups)
        layers = []
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks + 1):
                layers.append(res(ch, widths[level]))
                ch = widths[level]
            if level > 0:
                layers.append(Upsample(ch))
        self.up = nn.Sequential(*layers)
        self.out = _head(ch, out_channels, norm_groups)

    def forward(self, z: Tensor) -> Tensor:
        h = self.middle(self.conv_in(z))  # (B, w_L, H/f, W/f)
        return self.out(self.up(h))  # (B, C, H, W)


class KLAutoencoder(nn.Module):
    """Convolutional encoder to a diagonal Gaussian latent, and its decoder (see the module doc).

    Args:
        in_channels: C of the images (the decoder gives the same).
        latent_channels: c of the latent.
        downsample: f, a power of 2: the latent is (H/f, W/f), after log2(f) halvings.
        base_channels: width of level 0 (full resolution).
        max_channels: the widths double per level up to this.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention: self-attention in the middle blocks (at the latent's resolution).
        num_heads: heads of that attention.
        norm_groups: GroupNorm groups; must divide every width.
    """

    def __init__(self, *, in_channels: int, latent_channels: int = 4, downsample: int = 4, base_channels: int = 32,
                 max_channels: int = 128, num_res_blocks: int = 1, attention: bool = True, num_heads: int = 1,
                 norm_groups: int = 8) -> None:
        super().__init__()
        widths = level_widths(base_channels, max_channels, halvings(downsample))
        self.in_channels, self.latent_channels, self.downsample = in_channels, latent_channels, downsample
        net = {"latent_channels": latent_channels, "widths": widths, "num_res_blocks": num_res_blocks,
               "attention": attention, "num_heads": num_heads, "norm_groups": norm_groups}
        self.encoder = Encoder(in_channels, **net)
        self.decoder = Decoder(in_channels, **net)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(c, H/f, W/f): the latent of one (C, H, W) image."""
        check_side(height, self.downsample)
        check_side(width, self.downsample)
        return self.latent_channels, height // self.downsample, width // self.downsample

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, logvar) of q(z|x), each (B, c, H/f, W/f), of images x (B, C, H, W) in [-1, 1]."""
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"autoencoder built for {self.in_channels} channels got images with {C}")
        self.latent_shape(H, W)
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """x_hat (B, C, H, W) of latents z (B, c, H/f, W/f); about [-1, 1] (not clamped)."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruct x through z = mean + exp(logvar / 2) * noise (the reparameterisation; ``noise`` None:
        z = mean). Returns (x_hat (B, C, H, W), mean, logvar (B, c, H/f, W/f) each)."""
        mean, logvar = self.encode(x)
        z = mean if noise is None else mean + torch.exp(0.5 * logvar) * noise  # (B, c, H/f, W/f)
        return self.decode(z), mean, logvar


def build_autoencoder(a: AutoencoderConfig, channels: int) -> KLAutoencoder:
    """The network of ``autoencoder:`` for images with ``channels`` channels."""
    return KLAutoencoder(in_channels=channels, latent_channels=a.latent_channels, downsample=a.downsample,
                         base_channels=a.base_channels, max_channels=a.max_channels,
                         num_res_blocks=a.num_res_blocks, attention=a.attention, num_heads=a.num_heads,
                         norm_groups=a.norm_groups)


__all__ = ["Decoder", "Encoder", "KLAutoencoder", "build_autoencoder", "check_side", "halvings", "level_widths"]
