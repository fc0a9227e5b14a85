"""The VAE as a generator (Kingma & Welling 2014), beside diffusion (the lecture's "VAE vs diffusion"): the
autoencoder of :mod:`difflab.tasks.autoencoder`, trained with a KL weight meant for generation, sampled by
decoding z ~ N(0, I) in one pass (:class:`VAERun`), measured like any image run (FID, KID, PRDC).

The weight. With ``recon_loss: l2`` the loss per pixel value, mean (x - x_hat)^2 + kl_weight KL / D, is the
negative ELBO per value of a Gaussian decoder N(x_hat, sigma^2 I) scaled by 2 sigma^2, for
``kl_weight = 2 sigma^2`` (x in [-1, 1]): kl_weight 1 trusts pixels only to sigma = 0.71 (90 of 255), and
reconstructions and samples blur; Stable Diffusion's 1e-6 (sigma = 0.0007) makes q(z|x) so narrow that
z ~ N(0, I) lands where no image was encoded. :data:`VAE_KL_WEIGHT` is the best of a sweep on
digits (8x8, 2x2x4 latents, widths 32/64, l2, 200 steps at batch 128, lr 1e-3; FID of 360 samples against the
train split in difflab's digits feature space, PSNR and SSIM of the 360 test images reconstructed; 2 CPU cores)::

    kl_weight   sigma (of 255)   FID of samples   PSNR (dB)   SSIM
    1           90               28.6             16.2        0.837
    0.1         29               22.2             20.8        0.950
    0.01        9                34.4             22.2        0.965
    0.001       2.9              35.0             22.3        0.965

Below 0.1 the reconstructions barely improve while the samples get worse (precision 0.39 at 0.1, 0.22 at
0.001: decoded prior draws that look like no digit); above it everything blurs. Fashion-MNIST's config uses
the same weight (configs/fashion_vae.yaml). Each row is::

    difflab train --out RUN --max-steps 200 --set task=vae data.name=digits autoencoder.recon_loss=l2 \
        autoencoder.kl_weight=W autoencoder.base_channels=32 autoencoder.max_channels=64 train.batch_size=128
    difflab eval RUN --n 360
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from difflab import grids, report_html
from difflab.data.images import to_uint8
from difflab.tasks.autoencoder import (AutoencoderRun, AutoencoderTask, latent_shape, reconstructions_section,
                                       refuse_sampling_flags)
from difflab.tasks.base import RunBase, Samples, Section
from difflab.tasks.gaussian import check_count
from difflab.tasks.image import PREVIEW_SAMPLES, ImageOutputs

VAE_KL_WEIGHT = 0.1  # per pixel value with l2: a decoder sigma of 0.22 (29 of 255; see the module doc)
SAMPLE_ROWS = 4  # rows of the report's sample grid
HOW = "decodes z ~ N(0, I)"  # how a VAE run samples, for messages and records
RECONSTRUCTION_KEYS = ("psnr", "psnr_std", "ssim", "ssim_std", "rfid", "ssim_window")  # of its eval, beside FID


@torch.inference_mode()
def decode_prior(model: nn.Module, n: int, shape: tuple[int, ...], generator: torch.Generator,
                 batch_size: int) -> np.ndarray:
    """uint8 images (n, H, W, C) decoded from z ~ N(0, I) of ``shape`` (c, h, w), drawn with ``generator``;
    ``model`` is left in the mode it was in."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, n, batch_size):
        z = torch.randn((min(n, start + batch_size) - start, *shape), device=device, generator=generator)
        out.append(to_uint8(model.decode(z).float()).permute(0, 2, 3, 1).cpu())  # (b, H, W, C)
    model.train(training)
    return torch.cat(out).numpy()


class VAETask(AutoencoderTask):
    """The autoencoder's task with the VAE's default KL weight (:data:`VAE_KL_WEIGHT`)."""

    name = "vae"
    kl_default: ClassVar[float] = VAE_KL_WEIGHT

    def preview(self, model: nn.Module) -> np.ndarray:
        """PREVIEW_SAMPLES images decoded from z ~ N(0, I) (seed 0)."""
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
        return grids.image_grid(decode_prior(model, PREVIEW_SAMPLES, latent_shape(self.config), generator,
                                             PREVIEW_SAMPLES))


class VAERun(ImageOutputs, AutoencoderRun):
    """A trained VAE: it samples (z ~ N(0, I), decoded), and reconstructs like an autoencoder run; unconditional."""

    task = "vae"
    can_sample = True

    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, **options: Any) -> Samples:
        """``n`` images uint8 (n, H, W, C) decoded from z ~ N(0, I) drawn with ``seed``; ``labels`` -1 (a VAE run
        takes no condition and no sampler options: one line names the first given)."""
        check_count(n)
        refuse_sampling_flags(self, HOW, sampler=sampler, steps=steps, guidance=guidance, **options)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        images = decode_prior(self.model, n, latent_shape(self.config), generator,
                              batch_size or self.config.sample.batch_size)
        return Samples(images, {"labels": np.full(n, -1, dtype=np.int64)})

    def made_with(self, sampler: str | None, steps: int | None) -> dict[str, Any]:
        return {"sampler": "z ~ N(0, I), decoded"}

    def default_output(self, sampler: str, steps: int) -> Path:
        return self.folder / "samples" / "vae.png"

    def evaluate(self, n: int, *, data: str | None = None, data_path: str | None = None,
                 features: str | Path | None = None, progress: bool = True, **kwargs: Any) -> dict[str, Any]:
        """FID, KID and PRDC of ``n`` samples (as every image run), with the PSNR, SSIM and rFID of ``n`` reconstructed
        test images beside them ("recon_n" of them)."""
        result = RunBase.evaluate(self, n, data=data, data_path=data_path, features=features, progress=progress,
                                  **kwargs)
        recon = self.reconstruction_measures(n, data=data, data_path=data_path, features=features, progress=progress)
        result.update({key: recon[key] for key in RECONSTRUCTION_KEYS}, recon_n=recon["n"],
                      notes={**result.get("notes", {}), **recon["notes"]})
        return result

    def report_sections(self) -> Sequence[Section]:
        h = report_html
        return (h.config_section, h.training_section, samples_section, h.metrics_section, reconstructions_section,
                h.environment_section)


def samples_section(ctx: report_html.ReportContext) -> tuple[str, str]:
    """SAMPLE_ROWS rows of ``ctx.samples`` images decoded from z ~ N(0, I) (seed ``ctx.seed``)."""
    N = ctx.samples
    images = ctx.loaded.sample(SAMPLE_ROWS * N, seed=ctx.seed, progress=False).data
    rows = [report_html.GridStrip(f"#{r + 1}", images[r * N:(r + 1) * N]) for r in range(SAMPLE_ROWS)]
    note = f"checkpoint step {ctx.checkpoint_step} (EMA weights), seed {ctx.seed}, {N} images per row"
    return "Samples", report_html.render_grid(HOW, rows, note=note)


TASK = VAETask
RUN = VAERun

__all__ = ["VAERun", "VAETask", "VAE_KL_WEIGHT", "decode_prior"]
