"""The network of a super-resolution diffusion stage (Imagen, Saharia et al. 2022, Sec. 2.5; Ho et al. 2021,
"Cascaded Diffusion Models"): any UNet denoiser that also sees the low-resolution image.

    x_t (B, C, H, W) ++ z_s (B, C, H, W) -> UNet (in_channels 2C, out_channels C) -> prediction (B, C, H, W)
    s (B,)  -> sinusoid -> MLP -> added to the UNet's time embedding

``z_s`` is the low-resolution image, noised by the forward process to the augmentation level s (noise-
conditioning augmentation, Ho et al. 2021, Sec. 4.2) and upsampled to H x W by the task; ``aug_t`` is that
level as a time of the schedule, embedded like the diffusion time by a second :class:`TimestepEmbedding`.
The inner network is a :class:`~difflab.models.unet.UNet` or a :class:`~difflab.models.text_unet.TextConditionedUNet`
(a caption read by cross-attention); its ``drop`` drops the caption only, never the low-resolution image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difflab.models.text_unet import TextConditionedUNet
from difflab.models.unet import UNet
from difflab.nn.embeddings import TimestepEmbedding


class LowResConditionedUNet(nn.Module):
    """``net(x_t, t, *, low_res, aug_t, **cond) -> prediction`` of a super-resolution stage.

    Args:
        net: a UNet built with ``in_channels = 2 C`` (the noisy image and the low-resolution one) and
            ``out_channels = C``, or a TextConditionedUNet around one.
    """

    def __init__(self, net: UNet | TextConditionedUNet) -> None:
        super().__init__()
        unet = net.unet if isinstance(net, TextConditionedUNet) else net
        if unet.in_channels != 2 * unet.out_channels:
            raise ValueError(f"a super-resolution UNet reads 2 C channels and predicts C: got in_channels "
                             f"{unet.in_channels}, out_channels {unet.out_channels}")
        self.net = net
        self.aug_embed = TimestepEmbedding(unet.time_embed.dim, unet.embed_dim)  # like the time embedding

    @property
    def text_encoder(self) -> nn.Module | None:
        """The caption encoder of a text-conditioned stage (None: unconditional)."""
        return self.net.text_encoder if isinstance(self.net, TextConditionedUNet) else None

    def forward(self, x: Tensor, t: Tensor, *, low_res: Tensor, aug_t: Tensor, **cond: Tensor) -> Tensor:
        """x (B, C, H, W) noisy image, t (B,), low_res (B, C, H, W) the upsampled (noised) low-resolution image,
        aug_t (B,) its augmentation level as a schedule time, cond: the inner network's (caption, drop)
        -> (B, C, H, W)."""
        h = torch.cat([x, low_res.to(x.dtype)], dim=1)  # (B, 2C, H, W)
        return self.net(h, t, added_emb=self.aug_embed(aug_t), **cond)  # (B, C, H, W)


__all__ = ["LowResConditionedUNet"]
