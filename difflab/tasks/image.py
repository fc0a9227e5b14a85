"""Image generation glue: dataset -> UNet denoiser -> loss for training; run folder -> images.

The training loop (:mod:`difflab.train`) knows nothing about images: it asks a task for a
model, a batch and a loss. Sampling loads a run folder and drives any sampler through the
denoiser contract.
"""

from __future__ import annotations

from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from difflab import io
from difflab.config import Config
from difflab.data import load_dataset
from difflab.data.images import ImageDataset, random_flip, to_model_range, to_uint8
from difflab.data.mixture import MIXTURES
from difflab.denoisers import NetworkDenoiser, classifier_free_guidance
from difflab.errors import UserError
from difflab.losses import diffusion_loss
from difflab.models.unet import UNet
from difflab.samplers import get_sampler, sample
from difflab.schedules import Schedule, make_schedule
from difflab.tasks.text_to_image import (build_text_unet, default_prompts, is_text_to_image, load_text_encoder,
                                         prompt_condition)


def build_unet(cfg: Config, channels: int, *, context_dim: int = 0, pooled_dim: int = 0) -> UNet:
    """The UNet described by ``cfg.model`` for images with ``channels`` channels (and a text condition
    of token width ``context_dim`` and pooled width ``pooled_dim``)."""
    m = cfg.model
    return UNet(in_channels=channels, base_channels=m.base_channels, channel_mult=m.channel_mult,
                num_res_blocks=m.num_res_blocks, attention_levels=m.attention_levels, num_heads=m.num_heads,
                dropout=m.dropout, num_classes=m.num_classes, context_dim=context_dim, pooled_dim=pooled_dim,
                norm_groups=m.norm_groups, patch_size=m.patch_size, coord_channels=m.coord_channels)


def image_channels(cfg: Config) -> int:
    """Channels of the images a run was trained on (saved in its config after resolution)."""
    if cfg.data.channels is None:
        raise UserError("config has no data.channels: it was not written by `difflab train`; retrain the run")
    return cfg.data.channels


class ImageTask:
    """Unconditional or class-conditional image diffusion on an in-memory dataset."""

    def __init__(self, cfg: Config) -> None:
        d = cfg.data
        self.dataset: ImageDataset = load_dataset(d.name, path=d.path, resolution=d.resolution, channels=d.channels,
                                                  size=d.size, holdout=d.holdout)
        if len(self.dataset) == 0:
            raise UserError(f"dataset {d.name} has no images: check data.path")
        conditional = d.class_conditional and self.dataset.num_classes > 1
        H, _ = self.dataset.resolution
        self.config = replace(cfg, data=replace(d, resolution=H, channels=self.dataset.channels),
                              model=replace(cfg.model, num_classes=self.dataset.num_classes if conditional else 0))
        self.schedule: Schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
        self.images: Tensor = self.dataset.images  # uint8 (N, C, H, W)
        self.labels: Tensor | None = self.dataset.labels if conditional else None

    def to(self, device: torch.device) -> None:
        """Keep the dataset on the training device (it is small)."""
        self.images = self.images.to(device)
        if self.labels is not None:
            self.labels = self.labels.to(device)

    def build_model(self) -> nn.Module:
        return build_unet(self.config, self.dataset.channels)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """A random batch drawn with ``generator`` (reproducible per step).

        Returns:
            x0 (B, C, H, W) in [-1, 1] and the network's condition: ``labels`` (B,) and ``drop`` (B,),
            True at ``model.cond_drop_prob`` (for guidance); empty for an unconditional task.
        """
        device = self.images.device
        idx = torch.randint(0, len(self.images), (batch_size,), device=device, generator=generator)
        x0 = to_model_range(self.images[idx])
        if self.config.data.random_flip:
            x0 = random_flip(x0, generator)
        cond = {}
        if self.labels is not None:
            drop = torch.rand(batch_size, device=device, generator=generator) < self.config.model.cond_drop_prob
            cond = {"labels": self.labels[idx], "drop": drop}
        return x0, cond

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Algorithm 1 on a random :meth:`batch` drawn with ``generator`` (reproducible per step)."""
        x0, cond = self.batch(batch_size, generator)
        dc = self.config.diffusion
        return diffusion_loss(lambda x_t, t: model(x_t, t, **cond), x0, self.schedule,
                              prediction=dc.prediction, weighting=dc.weighting,
                              min_snr_gamma=dc.min_snr_gamma, generator=generator)


# -- sampling a trained run -------------------------------------------------------------------
def load_image_model(run: str | Path, device: torch.device | str = "cpu", ema: bool = True,
                     checkpoint: str | Path | None = None) -> tuple[Config, nn.Module]:
    """Rebuild the UNet of a run folder and load its (EMA) weights: from ``checkpoint`` (a folder
    of :func:`difflab.io.list_checkpoints`) or, by default, the newest."""
    cfg = io.read_run_config(run)
    if cfg.data.name in MIXTURES:
        raise UserError(f"{run} is a 2-D mixture run ({cfg.data.name}), not an image run: look at it with "
                        f"`difflab report {run}` or bench/known_density.py")
    ckpt = Path(checkpoint) if checkpoint is not None else io.require_checkpoint(run)
    if is_text_to_image(cfg):
        model = build_text_unet(cfg, image_channels(cfg), load_text_encoder(cfg, run=run))
    else:
        model = build_unet(cfg, image_channels(cfg))
    io.load_weights(model, ckpt / (io.EMA_FILE if ema else io.MODEL_FILE))
    return cfg, model.to(device).eval().requires_grad_(False)


def _check_prompts(cfg: Config, n: int, labels: Tensor | None, prompts: Sequence[str] | None,
                  seed: int) -> list[str] | None:
    """The n prompts of a text-to-image run (drawn from its data when None); None for other runs."""
    if not is_text_to_image(cfg):
        if prompts is not None:
            raise UserError("this run has no text encoder (model.text_encoder none), so --prompt cannot be used: "
                            "drop --prompt, or train with model.text_encoder=scratch")
        return None
    if labels is not None:
        raise UserError("this run is text-to-image, so --class cannot be used: pass --prompt TEXT instead")
    prompts = default_prompts(cfg, n, seed) if prompts is None else list(prompts)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} images")
    return prompts


@torch.inference_mode()
def generate(cfg: Config, model: nn.Module, n: int, *, sampler: str | None = None, steps: int | None = None,
             labels: Tensor | None = None, prompts: Sequence[str] | None = None, guidance: float | None = None,
             seed: int = 0, batch_size: int | None = None, progress: bool = True,
             **options: object) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n`` images from a trained model.

    Args:
        labels: (n,) class ids for a class-conditional model; None gives balanced classes
            (0, 1, 2, ...) for a conditional model and unconditional samples otherwise.
        prompts: n captions for a text-to-image model ("" = unconditional); None draws them from
            the dataset's captions (:func:`~difflab.tasks.text_to_image.default_prompts` with ``seed``).
        options: sampler options (eta, variance, grid); unset ones come from ``cfg.sample``.

    Returns:
        images uint8 (n, H, W, C) and labels int64 (n,) (-1 for unconditional).
    """
    s = cfg.sample
    sampler = sampler or s.sampler
    get_sampler(sampler)  # a one-line error for an unknown name, before any work
    steps = s.steps if steps is None else steps
    if n < 1:
        raise UserError(f"number of samples must be positive, got {n}: pass --n 1 or more")
    device = next(model.parameters()).device
    K = cfg.model.num_classes
    prompts = _check_prompts(cfg, n, labels, prompts, seed)
    if labels is None:
        labels = torch.arange(n) % K if K else torch.full((n,), -1)
    elif K == 0:
        raise UserError("this run is unconditional, so --class cannot be used: drop --class")
    elif labels.min() < 0 or labels.max() >= K:
        raise UserError(f"class {int(labels.max())} is out of range for this run's {K} classes: pass 0..{K - 1}")
    schedule = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    denoiser = NetworkDenoiser(model, schedule, cfg.diffusion.prediction, clip_x0=s.clip_x0)
    denoiser = classifier_free_guidance(denoiser, s.guidance if guidance is None else guidance)
    opts = {"eta": s.eta} if sampler == "ddim" else {"variance": s.variance} if sampler == "ddpm" else {}
    opts.update({k: v for k, v in options.items() if v is not None})
    grid = opts.pop("grid", s.grid)
    C, H = image_channels(cfg), cfg.data.resolution
    batch_size = batch_size or s.batch_size
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    bar = tqdm(total=n, desc="sampling", unit="img", disable=not progress or n <= batch_size, dynamic_ncols=True)
    for start in range(0, n, batch_size):
        y = labels[start:start + batch_size].to(device)
        cond = {"labels": y} if K else None
        if prompts is not None:
            cond = prompt_condition(model, prompts[start:start + batch_size], device)
        x = sample(sampler, denoiser, (len(y), C, H, H), schedule, steps=steps, grid=grid, cond=cond,
                   generator=generator, device=device, progress=progress and n <= batch_size, **opts)
        out.append(to_uint8(x).permute(0, 2, 3, 1).cpu())  # (B, H, W, C)
        bar.update(len(y))
    bar.close()
    return torch.cat(out).numpy(), labels.numpy().astype(np.int64)
