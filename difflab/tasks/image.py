"""Images, unconditional or class-conditional: dataset -> UNet denoiser -> loss (:class:`ImageTask`);
a trained run folder -> images, their FID, KID and PRDC, its report (:class:`ImageRun`).

The training loop (:mod:`difflab.train`) knows nothing about images: it asks a task for a model and
a loss. Sampling drives any sampler through the denoiser contract (:mod:`difflab.tasks.gaussian`).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from difflab import grids, report_html
from difflab.config import Config
from difflab.data import load_dataset
from difflab.data.images import ImageDataset, random_flip, to_model_range, to_uint8
from difflab.denoisers import Cond
from difflab.errors import UserError
from difflab.evaluate.fid import compute_fid, extractor_for
from difflab.evaluate.run_eval import evaluate_images
from difflab.models.unet import UNet, check_resolution
from difflab.samplers import sample
from difflab.schedules import Schedule, schedule_from_config
from difflab.tasks.base import GridRow, RunBase, SampleRequest, Samples, Section
from difflab.tasks.gaussian import GaussianRunBase, algorithm1, guided_denoiser

PREVIEW_SAMPLES = 16  # images in the training log's preview grid (train.log_with)
PREVIEW_STEPS = 10  # sampler steps of the preview
UNCONDITIONAL_ROWS = 4  # report grid rows of an unconditional run


def build_unet(cfg: Config, channels: int, *, context_dim: int = 0, pooled_dim: int = 0,
               cond_channels: int = 0) -> UNet:
    """The UNet described by ``cfg.model`` for images with ``channels`` channels (and a text condition
    of token width ``context_dim`` and pooled width ``pooled_dim``; ``cond_channels`` more input channels
    holding a condition image, such as a super-resolution stage's low-resolution input)."""
    m = cfg.model
    return UNet(in_channels=channels + cond_channels, out_channels=channels, base_channels=m.base_channels,
                channel_mult=m.channel_mult, num_res_blocks=m.num_res_blocks, attention_levels=m.attention_levels,
                num_heads=m.num_heads, dropout=m.dropout, num_classes=m.num_classes, context_dim=context_dim,
                pooled_dim=pooled_dim, norm_groups=m.norm_groups, patch_size=m.patch_size,
                coord_channels=m.coord_channels)


def warn_narrow_patches(cfg: Config, channels: int) -> None:
    """Warn when a position's patch holds more pixel values (``model.patch_size``^2 x ``channels``) than the
    ``model.base_channels`` it is packed into: the network then cannot carry per-pixel noise, and samples stay
    noisy (measured: a 64x64 super-resolution stage with 4x4x3 patches in 32 channels, BENCHMARKS.md)."""
    m = cfg.model
    values = m.patch_size ** 2 * channels
    if values > m.base_channels:
        warnings.warn(f"model.patch_size={m.patch_size} packs {values} pixel values into model.base_channels="
                      f"{m.base_channels} channels, too few to carry per-pixel detail (samples may stay noisy): "
                      f"use a smaller patch_size or base_channels >= {values}", stacklevel=2)


def image_channels(cfg: Config) -> int:
    """Channels of the images a run was trained on (saved in its config after resolution)."""
    if cfg.data.channels is None:
        raise UserError("config has no data.channels: it was not written by `difflab train`; retrain the run")
    return cfg.data.channels


def load_images(cfg: Config, split: str = "train", check: Callable[[int], None] | None = None) -> ImageDataset:
    """The dataset of ``cfg.data``; one line when it has no images or a side the network cannot take: ``check(side)``
    (None = the UNet of ``cfg.model``'s), run before loading when ``data.resolution`` is set."""
    d, m = cfg.data, cfg.model
    if check is None:
        def check(side: int) -> None:
            check_resolution(side, m.channel_mult, m.patch_size)
    if d.resolution is not None:
        check(d.resolution)
    dataset = load_dataset(d.name, path=d.path, resolution=d.resolution, channels=d.channels, split=split,
                           size=d.size, holdout=d.holdout)
    if len(dataset) == 0:
        raise UserError(f"dataset {d.name} has no images: check data.path")
    check(dataset.resolution[0])
    return dataset


def preview_grid(model: nn.Module, schedule: Schedule, cfg: Config, cond: Cond | None,
                 shape: tuple[int, ...] | None = None, decode: Callable[[Tensor], Tensor] | None = None) -> np.ndarray:
    """uint8 (H, W, C): PREVIEW_SAMPLES images of ``model`` (seed 0, PREVIEW_STEPS steps of the run's
    sampler), for the training logs; ``model`` is left in the mode it was in. ``shape``: of one sample (None =
    the config's image); ``decode``: samples -> images in [-1, 1] (a latent model's decoder; None = the samples)."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    denoiser = guided_denoiser(model, schedule, cfg)
    C, H = image_channels(cfg), cfg.data.resolution
    with torch.inference_mode():
        x = sample(cfg.sample.sampler, denoiser, (PREVIEW_SAMPLES, *(shape or (C, H, H))), schedule,
                   steps=PREVIEW_STEPS, cond=cond, generator=torch.Generator(device=device).manual_seed(0),
                   device=device)
        if decode is not None:
            x = decode(x)
    model.train(training)
    return grids.image_grid(to_uint8(x).permute(0, 2, 3, 1).cpu().numpy())  # (B, H, W, C) tiled


class ImageTask:
    """Unconditional or class-conditional image diffusion on an in-memory dataset."""

    name = "image"

    def __init__(self, cfg: Config) -> None:
        if cfg.model.text_encoder != "none":
            raise UserError(f"task image has no text encoder, but model.text_encoder is {cfg.model.text_encoder}: "
                            "set task=text-to-image, or model.text_encoder=none")
        self.dataset: ImageDataset = self.load_data(cfg)
        d = cfg.data
        conditional = d.class_conditional and self.dataset.num_classes > 1
        H, _ = self.dataset.resolution
        self.config = replace(cfg, task=self.name, data=replace(d, resolution=H, channels=self.dataset.channels),
                              model=replace(cfg.model, num_classes=self.dataset.num_classes if conditional else 0))
        self.schedule: Schedule = schedule_from_config(cfg.diffusion)
        self.images: Tensor = self.dataset.images  # uint8 (N, C, H, W)
        self.labels: Tensor | None = self.dataset.labels if conditional else None
        warn_narrow_patches(self.config, self.dataset.channels)

    def load_data(self, cfg: Config) -> ImageDataset:
        """The training images of ``cfg`` (a kind whose images are made otherwise, such as spectrograms, says how)."""
        return load_images(cfg)

    def to(self, device: torch.device) -> None:
        """Keep the dataset on the training device (it is small)."""
        self.images = self.images.to(device)
        if self.labels is not None:
            self.labels = self.labels.to(device)

    def run_files(self) -> dict[str, str]:
        return {}

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
        return algorithm1(model, x0, cond, self.schedule, self.config, generator)

    def preview(self, model: nn.Module) -> np.ndarray:
        """A grid of samples (classes in turn for a conditional model)."""
        K = self.config.model.num_classes
        device = next(model.parameters()).device
        cond = {"labels": torch.arange(PREVIEW_SAMPLES, device=device) % K} if K else None
        return preview_grid(model, self.schedule, self.config, cond)


# -- a trained run -------------------------------------------------------------------------------
def class_names(cfg: Config) -> list[str]:
    """Names of the run's classes from its dataset; the class ids when the dataset is not at hand."""
    K = cfg.model.num_classes
    try:
        names = load_images(cfg).class_names
    except UserError:
        names = []
    return list(names) if len(names) == K else [str(k) for k in range(K)]


class ImageOutputs(RunBase):
    """What every kind whose samples are images shares, however it makes them (diffusion, a VAE's decoder):
    their shape, their files (:meth:`save`: a PNG grid, a .npz, a folder) and their metrics against the run's
    dataset (FID, KID, PRDC)."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        H = self.config.data.resolution
        return image_channels(self.config), H, H

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """What the sampler draws for one image: the image itself (a latent kind draws its latent)."""
        return self.image_shape

    def _images(self, batches: list[Tensor]) -> np.ndarray:
        return torch.cat([to_uint8(x).permute(0, 2, 3, 1).cpu() for x in batches]).numpy()  # (n, H, W, C)

    def save(self, samples: Samples, out: Path) -> Path:
        """``.png`` a grid, ``.npz`` arrays, else a folder of PNGs (:func:`difflab.grids.save_images`)."""
        c = samples.conditions
        prompts = c["prompts"].tolist() if "prompts" in c else None
        return grids.save_images(out, samples.data, c.get("labels"), ncol=samples.ncol, prompts=prompts)

    outputs: ClassVar[dict[str, str]] = {".png": "a .png grid", ".npz": "a .npz of arrays",
                                          "": "a new folder (one PNG per image)"}

    def default_output(self, sampler: str, steps: int) -> Path:
        return self.folder / "samples" / f"{sampler}-{steps}.png"

    def _reference(self, data: str | None, data_path: str | None) -> tuple[str, str | None]:
        """The reference dataset of the metrics: the run's own unless ``data`` names another."""
        d = self.config.data
        data = data or d.name
        return data, data_path or (d.path if data == d.name else None)

    def check_metrics(self, *, data: str | None = None, data_path: str | None = None,
                      features: str | Path | None = None) -> None:
        """Fail (or train and cache the feature extractor) before any sampling."""
        data, data_path = self._reference(data, data_path)
        C, H, _ = self.image_shape
        load_dataset(data, path=data_path, resolution=H, channels=C)
        extractor_for(C, data=data, data_path=data_path, resolution=H, weights=features)

    def metrics(self, samples: Samples, *, data: str | None = None, data_path: str | None = None,
                features: str | Path | None = None, clip_run: str | Path | None = None,
                progress: bool = True) -> dict[str, Any]:
        """FID, KID, precision, recall, density and coverage (:func:`difflab.evaluate.run_eval.evaluate_images`)."""
        data, data_path = self._reference(data, data_path)
        return {"data": data, **evaluate_images(samples.data, data=data, data_path=data_path,
                                                resolution=self.image_shape[1], weights=features, progress=progress)}

    def check_fid(self, *, data: str | None = None, data_path: str | None = None,
                  features: str | Path | None = None) -> None:
        self.check_metrics(data=data, data_path=data_path, features=features)

    def fid(self, samples: Samples, *, data: str | None = None, data_path: str | None = None,
            features: str | Path | None = None) -> tuple[float, str]:
        data, data_path = self._reference(data, data_path)
        return compute_fid(samples.data, data=data, data_path=data_path, resolution=self.image_shape[1],
                           weights=features), data


class ImageRun(ImageOutputs, GaussianRunBase):
    """A trained image run: ``cond`` is the class id of every image ((n,) ints; None = classes in turn,
    or unconditional)."""

    task = "image"

    @classmethod
    def build(cls, cfg: Config, folder: Path) -> nn.Module:
        return build_unet(cfg, image_channels(cfg))

    @property
    def conditional(self) -> bool:
        return self.config.model.num_classes > 0

    def _labels(self, n: int, cond: Any) -> Tensor:
        """(n,) class ids of the samples, -1 = unconditional."""
        K = self.config.model.num_classes
        if cond is None:
            return torch.arange(n) % K if K else torch.full((n,), -1)
        labels = torch.as_tensor(cond, dtype=torch.long).reshape(-1)
        if K == 0:
            raise UserError("this run is unconditional, so --class cannot be used: drop --class")
        if labels.min() < 0 or labels.max() >= K:
            raise UserError(f"class {int(labels.max())} is out of range for this run's {K} classes: pass 0..{K - 1}")
        if len(labels) != n:
            raise ValueError(f"{len(labels)} class ids for {n} images")
        return labels

    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, **options: Any) -> Samples:
        """``n`` images uint8 (n, H, W, C) with their ``labels`` (-1 for unconditional)."""
        self.sampler_options(sampler, steps, {})  # an unknown sampler fails before the labels are checked
        labels = self._labels(n, cond)
        device = self.device

        def cond_of(start: int, stop: int) -> Cond | None:
            return {"labels": labels[start:stop].to(device)} if self.conditional else None

        batches = self.draw(n, self.sample_shape, cond_of, sampler=sampler, steps=steps, seed=seed, guidance=guidance,
                            batch_size=batch_size, progress=progress, unit="img", **options)
        return Samples(self._images(batches), {"labels": labels.numpy().astype(np.int64)})

    def report_sections(self) -> Sequence[Section]:
        h = report_html
        return (h.config_section, h.training_section, h.samples_section, h.metrics_section, h.elbo_section,
                h.environment_section)

    def grid_rows(self, rows: int, seed: int) -> list[GridRow]:
        """One row per class (its name), else UNCONDITIONAL_ROWS rows."""
        if self.conditional:
            return [GridRow(name, k) for k, name in enumerate(class_names(self.config))]
        return [GridRow(f"#{r + 1}") for r in range(UNCONDITIONAL_ROWS)]

    @staticmethod
    def add_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--class", dest="class_id", type=int,
                            help="class id for every image (class-conditional runs)")

    def request(self, args: argparse.Namespace, n: int | None, default_n: int) -> SampleRequest:
        """``--class K`` for every image, else classes in turn (one grid row per class)."""
        n = n or default_n
        class_id = getattr(args, "class_id", None)
        if class_id is not None:
            return SampleRequest(n, [class_id] * n)
        return SampleRequest(n, None, self.config.model.num_classes or None)

    def test_images(self) -> Tensor:
        """uint8 (N, C, H, W): the test split of the run's data (the likelihood bound's images)."""
        return load_images(self.config, split="test").images

    def nll(self, n: int, *, variance: str | None = None, strata: int | None = None, seed: int = 0,
            progress: bool = True) -> dict[str, Any]:
        """The variational bound on ``n`` test images in bits/dim (:func:`difflab.evaluate.likelihood.image_nll`)."""
        from difflab.evaluate.fid import fixed_subset
        from difflab.evaluate.likelihood import image_nll

        d = self.config.data
        images = fixed_subset(self.test_images(), n)  # uint8 (n, C, H, W)
        return {"data": f"{d.name} (test split)",
                **image_nll(self.config, self.model, images, variance=variance, strata=strata, seed=seed,
                            progress=progress)}


TASK = ImageTask
RUN = ImageRun
