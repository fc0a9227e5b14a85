"""The DiffWave network (Kong et al. 2021, "DiffWave: A Versatile Diffusion Model for Audio Synthesis", Sec. 3,
Fig. 2): a non-causal WaveNet that predicts the noise eps in a waveform x_t, conditioned on the diffusion step t
and a log-mel spectrogram.

- **Residual layers**: ``layers`` blocks of a dilated convolution (kernel 3, dilation 2^(i mod
  ``dilation_cycle``)) over x + the step embedding, plus the conditioner's 1x1 projection, through the gated
  unit tanh(a) * sigmoid(b) (van den Oord et al. 2016), then a 1x1 convolution split into a residual (added to
  the input, scaled by 1/sqrt(2)) and a skip output (summed over layers, scaled by 1/sqrt(layers)).
- **Diffusion-step embedding**: sinusoidal features of t, two fully connected layers with SiLU
  (:class:`~difflab.nn.embeddings.TimestepEmbedding`), then one projection per layer.
- **Conditioner upsampler**: the mel frames (one per ``hop_length`` samples) brought to the waveform rate by
  transposed 2-D convolutions over (mel, time) whose time strides multiply to the hop (:func:`upsample_strides`,
  derived from the hop, never written down), each followed by a leaky ReLU.

- **Folding** (``fold`` k, a CPU lever, 1 = DiffWave): the waveform is seen as k channels of every k-th sample,
  (B, 1, L) -> (B, k, L / k), as the image UNet sees 2x2 patches: k times fewer positions per layer, the same
  receptive field in layers, k times the receptive field in samples; the conditioner upsamples to hop / k.

Shapes: x_t (B, 1, L), t (B,), mel (B, n_mels, F) with F * hop >= L; the output is (B, 1, L). The network never
computes its own loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.nn.blocks import zero_init
from difflab.nn.embeddings import TimestepEmbedding

LEAKY_SLOPE = 0.4  # DiffWave's conditioner upsampler: leaky ReLU after each transposed convolution
MAX_STRIDE = 16  # the largest time stride of one upsampling layer (DiffWave: 16 x 16 for hop 256)
MEL_KERNEL = 3  # the upsampler's kernel along the mel axis (padding 1 keeps the mel count)
DILATED_KERNEL = 3  # the dilated convolutions' kernel (padding = dilation keeps the length)


def upsample_strides(hop: int) -> tuple[int, ...]:
    """Time strides of the conditioner's layers, multiplying to ``hop``: the largest divisors of what is left that
    are at most MAX_STRIDE, e.g. 256 -> (16, 16), 200 -> (10, 10, 2); a prime above MAX_STRIDE is one layer."""
    if hop < 1:
        raise ValueError(f"hop must be positive, got {hop}")
    strides, left = [], hop
    while left > 1:
        s = next((d for d in range(min(left, MAX_STRIDE), 1, -1) if left % d == 0), left)
        strides.append(s)
        left //= s
    return tuple(strides) or (1,)


class MelUpsampler(nn.Module):
    """(B, n_mels, F) -> (B, n_mels, F * hop): transposed convolutions over the (mel, time) plane."""

    def __init__(self, hop: int) -> None:
        super().__init__()
        self.hop = hop
        self.layers = nn.ModuleList(
            nn.ConvTranspose2d(1, 1, (MEL_KERNEL, 2 * s), stride=(1, s), padding=(MEL_KERNEL // 2, s // 2))
            for s in upsample_strides(hop))

    def forward(self, mel: Tensor) -> Tensor:
        frames = mel.shape[-1]
        x = mel.unsqueeze(1)  # (B, 1, n_mels, F)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), LEAKY_SLOPE)  # time x stride (+1 for an odd stride, cropped below)
        return x.squeeze(1)[..., :frames * self.hop]  # (B, n_mels, F * hop)


class ResidualLayer(nn.Module):
    """One DiffWave residual layer: dilated conv of x + step embedding, plus conditioner, gated; residual, skip."""

    def __init__(self, channels: int, n_mels: int, embed_dim: int, dilation: int) -> None:
        super().__init__()
        self.step = nn.Linear(embed_dim, channels)
        self.dilated = nn.Conv1d(channels, 2 * channels, DILATED_KERNEL, padding=dilation, dilation=dilation)
        self.cond = nn.Conv1d(n_mels, 2 * channels, 1)
        self.out = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, x: Tensor, step: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, L), step (B, D), cond (B, n_mels, L) -> (residual output (B, C, L), skip (B, C, L))."""
        h = self.dilated(x + self.step(step)[:, :, None]) + self.cond(cond)  # (B, 2C, L)
        a, b = h.chunk(2, dim=1)  # (B, C, L) each
        residual, skip = self.out(torch.tanh(a) * torch.sigmoid(b)).chunk(2, dim=1)  # (B, C, L) each
        return (x + residual) / math.sqrt(2.0), skip


class DiffWave(nn.Module):
    """The DiffWave denoiser ``model(x_t, t, mel=...) -> eps_hat`` (module docstring).

    Args:
        n_mels: mel bands of the conditioner.
        hop: waveform samples per mel frame.
        channels: residual channels C (DiffWave base: 64).
        layers: residual layers (DiffWave base: 30).
        dilation_cycle: dilations 1, 2, ..., 2^(cycle - 1), repeated (DiffWave base: 10).
        step_features: width of the sinusoidal step features (DiffWave: 128).
        step_width: width of the step embedding after its two fully connected layers (DiffWave: 512).
        fold: samples per position (module docstring); must divide ``hop``.
    """

    def __init__(self, *, n_mels: int, hop: int, channels: int, layers: int, dilation_cycle: int,
                 step_features: int, step_width: int, fold: int = 1) -> None:
        super().__init__()
        if fold < 1 or hop % fold:
            raise ValueError(f"fold={fold} must be a positive divisor of the hop {hop}")
        self.n_mels, self.hop, self.fold = n_mels, hop, fold
        self.input = nn.Conv1d(fold, channels, 1)
        self.step = TimestepEmbedding(step_features, step_width)
        self.upsampler = MelUpsampler(hop // fold)
        self.layers = nn.ModuleList(ResidualLayer(channels, n_mels, step_width, 2 ** (i % dilation_cycle))
                                    for i in range(layers))
        self.skip = nn.Conv1d(channels, channels, 1)
        self.output = zero_init(nn.Conv1d(channels, fold, 1))  # eps_hat = 0 at initialisation

    def forward(self, x: Tensor, t: Tensor, *, mel: Tensor) -> Tensor:
        """x_t (B, 1, L), t (B,), mel (B, n_mels, F) with F * hop >= L -> eps_hat (B, 1, L)."""
        B, _, L = x.shape
        k = self.fold
        if mel.shape[0] != B or mel.shape[1] != self.n_mels or mel.shape[-1] * self.hop < L or L % k:
            raise ValueError(f"mel {tuple(mel.shape)} does not condition x_t {tuple(x.shape)}: it needs "
                             f"(B, {self.n_mels}, F) with F * {self.hop} >= L, and L a multiple of {k}")
        P = L // k  # positions
        cond = self.upsampler(mel.to(x.dtype))[..., :P]  # (B, n_mels, P)
        h = F.relu(self.input(x.reshape(B, P, k).transpose(1, 2)))  # (B, k, P) -> (B, C, P)
        step = self.step(t)  # (B, D)
        skips = torch.zeros_like(h)
        for layer in self.layers:
            h, skip = layer(h, step, cond)
            skips = skips + skip
        h = F.relu(self.skip(skips / math.sqrt(len(self.layers))))  # (B, C, P)
        return self.output(h).transpose(1, 2).reshape(B, 1, L)  # (B, k, P) -> (B, 1, L)


class Whitened(nn.Module):
    """A noise predictor of x_t seen in the whitened variable y = x / sigma (PriorGrad, Lee et al. 2022, Sec. 3):
    ``forward(y_t, t, sigma=..., **cond) = net(sigma y_t, t, **cond) / sigma``. Standard diffusion on y, whose
    noise z ~ N(0, I), is PriorGrad's diffusion on x with eps = sigma z ~ N(0, diag(sigma^2)), and Algorithm 1 on y
    is its loss ||eps - eps_hat||^2 weighted by Sigma^-1."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, y: Tensor, t: Tensor, *, sigma: Tensor, **cond: Tensor) -> Tensor:
        """y_t (B, 1, L), t (B,), sigma (B, 1, L) > 0 -> z_hat (B, 1, L)."""
        return self.net(y * sigma, t, **cond) / sigma


__all__ = ["DiffWave", "MelUpsampler", "Whitened", "upsample_strides"]
