"""Super-resolution diffusion (``task: super-resolution``): a diffusion model at ``data.resolution`` that also sees
the low-resolution image, upsampled, as extra input channels (Imagen, Saharia et al. 2022, Sec. 2.5; Ho et al.
2021, "Cascaded Diffusion Models"). It is the second stage of a cascade (:mod:`difflab.tasks.cascade`) and works
alone on any image (``difflab upscale RUN in.png --out out.png``, :func:`upscale_file`).

Notation (Ho et al. 2021, Sec. 4.2; the lecture):

===========  =====================================================================================
symbol       meaning
===========  =====================================================================================
``x0``       the high-resolution image (B, C, H, W), H = ``data.resolution``, in [-1, 1]
``x_low``    x0 averaged down to h = ``super_res.low_resolution`` (area), (B, C, h, h)
``s``        the noise-conditioning augmentation level in [0, 1], the time t_s = s T - 1 of the run's
             schedule (s = 0: t_s = ``CLEAN_T``, no noise; s = 1: t_s = T - 1)
``z_s``      q(z_s | x_low) = sqrt(alpha_bar_{t_s}) x_low + sqrt(1 - alpha_bar_{t_s}) eps', upsampled to H
             (``super_res.upsample``): what the network sees beside x_t, with t_s
===========  =====================================================================================

Training draws s ~ U[0, ``super_res.aug_max``] per image (``super_res.noise_aug: false``: s = 0, the ablation);
sampling uses one level, ``super_res.aug_level`` (``--aug-level``; 0 for a stage trained without). The augmentation noise at sampling is drawn
by numpy's generator of the seed, apart from the sampler's torch stream. A text encoder (``model.text_encoder``)
makes it text-conditioned, with the caption dropped for guidance as text-to-image drops it (never the
low-resolution image); without one it is unconditional and trains on any image folder.

With ``super_res.residual`` the network's x0 is the residual (x0 - up(x_low)) * ``super_res.residual_scale``
(:func:`to_residual`; the scale is 1 / std of the training residuals, computed when training starts and stored in
the run): the stage adds detail to the interpolation instead of redrawing the image, which is what beats bicubic
on natural photos in a CPU budget (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab import grids, report_html
from difflab.config import Config
from difflab.data.images import to_model_range, to_uint8
from difflab.denoisers import Cond
from difflab.evaluate.reconstruction import reconstruction_metrics
from difflab.errors import UserError
from difflab.files import check_output, require_file
from difflab.models.super_resolution import LowResConditionedUNet
from difflab.models.text_encoders import TextEncoder
from difflab.schedules import Schedule
from difflab.tasks.base import GridRow, SampleRequest, Samples, Section, a_run
from difflab.tasks.gaussian import algorithm1
from difflab.tasks.image import (PREVIEW_SAMPLES, UNCONDITIONAL_ROWS, ImageRun, ImageTask, build_unet,
                                 image_channels, load_images, preview_grid)
from difflab.tasks.text_to_image import (TextToImageRun, TextToImageTask, build_text_unet, load_text_encoder,
                                         prompt_condition, read_prompts)


# -- the condition: x_low -> z_s ----------------------------------------------------------------
def check_super_res(cfg: Config) -> None:
    """One line unless ``super_res.low_resolution`` divides ``data.resolution`` (when set) and is below it."""
    sr, H = cfg.super_res, cfg.data.resolution
    if H is not None and (sr.low_resolution >= H or H % sr.low_resolution):
        fix = f"--set super_res.low_resolution={H // 4}" if H % 4 == 0 and H >= 8 else "a divisor of it"
        raise UserError(f"super_res.low_resolution={sr.low_resolution} must divide data.resolution={H} and be "
                        f"smaller (the upscaling factor is their ratio): fix it with {fix}")


def sampling_level(cfg: Config, level: float | None = None) -> float:
    """The augmentation level s of sampling: ``level`` (``--aug-level``), else ``super_res.aug_level``, which a
    stage trained without augmentation (``super_res.noise_aug: false``) replaces by 0.

    Raises:
        UserError: a level outside [0, 1], or above 0 for a stage trained without augmentation.
    """
    sr = cfg.super_res
    if level is None:
        return sr.aug_level if sr.noise_aug else 0.0
    if not 0 <= level <= 1:
        raise UserError(f"--aug-level must be in [0, 1] (a fraction of the noise schedule), got {level}: e.g. 0.1")
    if level > 0 and not sr.noise_aug:
        raise UserError(f"--aug-level {level}, but this stage was trained without noise-conditioning augmentation "
                        "(super_res.noise_aug false), on clean low-resolution images only: use 0")
    return level


def aug_time(s: Tensor, schedule: Schedule) -> Tensor:
    """The schedule time t_s = s T - 1 of augmentation levels s (B,) in [0, 1] (s = 0: ``CLEAN_T``)."""
    return s * schedule.T - 1


def downsample(x: Tensor, size: int) -> Tensor:
    """Images (B, C, H, W) averaged down to (B, C, size, size) (area: the box filter of an integer factor)."""
    return F.interpolate(x, size=(size, size), mode="area")  # (B, C, size, size)


def upsample(x_low: Tensor, size: int, mode: str) -> Tensor:
    """Images (B, C, h, h) brought to (B, C, size, size) by ``mode`` (``super_res.upsample``): the interpolation the
    network sees its input through, the baseline, and the base of a residual stage."""
    return F.interpolate(x_low, size=(size, size), mode=mode, align_corners=False)  # (B, C, size, size)


def low_res_condition(x_low: Tensor, s: Tensor, eps: Tensor, schedule: Schedule, size: int,
                      mode: str) -> dict[str, Tensor]:
    """The network's condition of a super-resolution stage: z_s ~ q(z_s | x_low) with noise ``eps``, upsampled.

    Args:
        x_low: (B, C, h, h) low-resolution images in [-1, 1].
        s: (B,) augmentation levels in [0, 1].
        eps: (B, C, h, h) standard normal noise.
        size: the high resolution H.
        mode: ``bicubic`` or ``bilinear``.

    Returns:
        ``low_res`` (B, C, H, H) and ``aug_t`` (B,), the keyword arguments of
        :class:`~difflab.models.super_resolution.LowResConditionedUNet`.
    """
    t_s = aug_time(s, schedule)  # (B,)
    z_s = schedule.q_sample(x_low, t_s, eps)  # (B, C, h, h)
    return {"low_res": upsample(z_s, size, mode), "aug_t": t_s.to(x_low.dtype)}


def to_residual(x: Tensor, x_low: Tensor, cfg: Config) -> Tensor:
    """The network's x0 for images x (B, C, H, W) of low-resolution versions x_low (B, C, h, h): with
    ``super_res.residual`` the scaled residual (x - up(x_low)) * ``super_res.residual_scale``, else x itself."""
    sr = cfg.super_res
    return (x - upsample(x_low, cfg.data.resolution, sr.upsample)) * _scale(cfg) if sr.residual else x


def from_residual(x0: Tensor, x_low: Tensor, cfg: Config) -> Tensor:
    """The inverse of :func:`to_residual`: images (B, C, H, W) from the network's x0 (B, C, H, W)."""
    sr = cfg.super_res
    return x0 / _scale(cfg) + upsample(x_low, cfg.data.resolution, sr.upsample) if sr.residual else x0


def _scale(cfg: Config) -> float:
    if cfg.super_res.residual_scale is None:
        raise ValueError("super_res.residual_scale is unset: the task computes it (residual_scale_of)")
    return cfg.super_res.residual_scale


def residual_scale_of(images: Tensor, cfg: Config, batch: int = 256) -> float:
    """1 / std of the residuals x - up(x_low) over uint8 images (N, C, H, W): the scale that gives a residual
    stage's x0 unit variance (as the latent scale does a latent model's)."""
    h, total, squares, count = cfg.super_res.low_resolution, 0.0, 0.0, 0
    for start in range(0, len(images), batch):
        x = to_model_range(images[start:start + batch])  # (b, C, H, W)
        r = x - upsample(downsample(x, h), x.shape[-1], cfg.super_res.upsample)  # (b, C, H, W)
        total, squares, count = total + r.sum().item(), squares + r.pow(2).sum().item(), count + r.numel()
    std = math.sqrt(max(squares / count - (total / count) ** 2, 0.0))
    if not std > 0:
        raise UserError("the training images equal their own interpolation (no residual to learn): set "
                        "super_res.residual=false or train on images with detail")
    return 1.0 / std


def unclipped(cfg: Config) -> Config:
    """``cfg`` to sample a residual stage: no static clip of x0_hat (a residual is not an image in [-1, 1]; the
    final image is clipped when it is made)."""
    return replace(cfg, sample=replace(cfg.sample, clip_x0=False)) if cfg.super_res.residual else cfg


def build_super_resolution_net(cfg: Config, channels: int, encoder: TextEncoder | None) -> LowResConditionedUNet:
    """The UNet of ``cfg.model`` reading ``channels`` more input channels (the low-resolution image), around a
    text encoder when ``encoder`` is given."""
    net = (build_unet(cfg, channels, cond_channels=channels) if encoder is None
           else build_text_unet(cfg, channels, encoder, cond_channels=channels))
    return LowResConditionedUNet(net)


def is_text_conditioned(cfg: Config) -> bool:
    """Whether a super-resolution stage reads a caption (``model.text_encoder`` is not ``none``)."""
    return cfg.model.text_encoder != "none"


# -- training ------------------------------------------------------------------------------------
class SuperResolutionTask:
    """Super-resolution diffusion on an in-memory dataset: the batches of text-to-image (captioned data) or of
    unconditional image diffusion, each image's low-resolution version noised and upsampled as its condition."""

    name = "super-resolution"

    def __init__(self, cfg: Config) -> None:
        check_super_res(cfg)
        if is_text_conditioned(cfg):
            self.inner: TextToImageTask | ImageTask = TextToImageTask(cfg)
        else:  # unconditional: any image folder, its class folders ignored
            self.inner = ImageTask(replace(cfg, data=replace(cfg.data, class_conditional=False)))
        self.config: Config = replace(self.inner.config, task=self.name)
        check_super_res(self.config)  # data.resolution is known now
        sr = self.config.super_res
        if sr.residual and sr.residual_scale is None:  # computed once, stored in the run's config
            scale = residual_scale_of(self.inner.images, self.config)
            self.config = replace(self.config, super_res=replace(sr, residual_scale=scale))
        self.schedule: Schedule = self.inner.schedule
        self.channels: int = image_channels(self.config)

    def to(self, device: torch.device) -> None:
        self.inner.to(device)

    def run_files(self) -> dict[str, str]:
        return self.inner.run_files()

    def build_model(self) -> nn.Module:
        encoder = self.inner.encoder if isinstance(self.inner, TextToImageTask) else None
        return build_super_resolution_net(self.config, self.channels, encoder)

    def levels(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """(B,) training augmentation levels: s ~ U[0, aug_max], or 0 without noise-conditioning augmentation."""
        sr = self.config.super_res
        s = torch.rand(batch_size, device=device, generator=generator) * sr.aug_max
        return s if sr.noise_aug else torch.zeros_like(s)

    def condition(self, x_low: Tensor, s: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """:func:`low_res_condition` of low-resolution images x_low (B, C, h, h) at levels s (B,)."""
        eps = torch.randn(x_low.shape, device=x_low.device, generator=generator)
        return low_res_condition(x_low, s, eps, self.schedule, self.config.data.resolution, self.config.super_res.upsample)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """A random batch drawn with ``generator``: x0 (B, C, H, W) (with ``super_res.residual``, the scaled
        residual, :func:`to_residual`) and the network's condition (the caption and its ``drop``, as the inner task draws them;
        ``low_res`` and ``aug_t``, never dropped)."""
        x0, cond = self.inner.batch(batch_size, generator)
        s = self.levels(batch_size, generator, x0.device)
        x_low = downsample(x0, self.config.super_res.low_resolution)  # (B, C, h, h)
        return to_residual(x0, x_low, self.config), {**cond, **self.condition(x_low, s, generator)}

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Algorithm 1 on a random :meth:`batch`, the low-resolution image a condition like the caption."""
        x0, cond = self.batch(batch_size, generator)
        return algorithm1(model, x0, cond, self.schedule, self.config, generator)

    def preview(self, model: nn.Module) -> np.ndarray:
        """The first training images upscaled from their low-resolution versions (at ``super_res.aug_level``)."""
        device = next(model.parameters()).device
        index = torch.arange(PREVIEW_SAMPLES, device=device) % len(self.inner.images)  # (P,)
        x0 = to_model_range(self.inner.images[index])  # (P, C, H, W)
        generator = torch.Generator(device=device).manual_seed(0)
        s = torch.full((PREVIEW_SAMPLES,), sampling_level(self.config), device=device)
        x_low = downsample(x0, self.config.super_res.low_resolution)  # (P, C, h, h)
        cond: dict[str, Tensor] = self.condition(x_low, s, generator)
        if isinstance(self.inner, TextToImageTask):
            captions = [self.inner.captions[i] for i in self.inner.caption_index[index].tolist()]
            cond |= prompt_condition(model, captions, device)
        return preview_grid(model, self.schedule, unclipped(self.config), cond,
                            decode=lambda x: from_residual(x, x_low, self.config))


# -- a trained run -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LowResolution:
    """What a super-resolution run upscales: uint8 images (N, h, h, C) at ``super_res.low_resolution`` and their
    captions (None: no caption; a text-conditioned run then samples unconditionally)."""

    images: np.ndarray
    prompts: Sequence[str] | None = None
    originals: np.ndarray | None = None  # uint8 (N, H, H, C) the images were made from, when known (held out)


class SuperResolutionRun(TextToImageRun):
    """A trained super-resolution run: ``cond`` is a :class:`LowResolution` (None = ``n`` held-out test images of
    the data, downsampled, with their captions). :meth:`upscale` is the stage itself."""

    task = "super-resolution"
    flags_of = (TextToImageRun,)  # --prompt reaches request(), which says what to use instead

    @classmethod
    def build(cls, cfg: Config, folder: Path) -> nn.Module:
        encoder = load_text_encoder(cfg, run=folder) if is_text_conditioned(cfg) else None
        return build_super_resolution_net(cfg, image_channels(cfg), encoder)

    @property
    def conditional(self) -> bool:
        return is_text_conditioned(self.config)

    @property
    def low_shape(self) -> tuple[int, int, int]:
        """(h, h, C) of the images it upscales."""
        h = self.config.super_res.low_resolution
        return h, h, image_channels(self.config)

    @property
    def factor(self) -> int:
        """The upscaling factor H / h."""
        return self.config.data.resolution // self.config.super_res.low_resolution

    def held_out(self, n: int, seed: int = 0) -> LowResolution:
        """``n`` test images of the run's data (drawn with ``seed``, without replacement while the split has that
        many), averaged down to the low resolution, with their captions and the originals."""
        dataset = load_images(self.config, split="test")
        N = len(dataset.images)
        pick = torch.from_numpy(np.random.default_rng(seed).choice(N, size=n, replace=n > N))  # (n,)
        originals = dataset.images[pick]  # (n, C, H, W)
        x_low = downsample(to_model_range(originals), self.low_shape[0])  # (n, C, h, h)
        prompts = [dataset.texts[i] for i in pick.tolist()] if self.conditional and dataset.texts else None
        return LowResolution(to_uint8(x_low).permute(0, 2, 3, 1).numpy(), prompts,  # (n, h, h, C)
                             originals.permute(0, 2, 3, 1).numpy())  # (n, H, H, C)

    def interpolate(self, low: LowResolution) -> np.ndarray:
        """The baseline of super-resolution: the low-resolution images upsampled by ``super_res.upsample`` (the
        interpolation the network sees its input through), uint8 (N, H, H, C)."""
        x_low = to_model_range(torch.from_numpy(low.images).permute(0, 3, 1, 2))  # (N, C, h, h)
        up = upsample(x_low, self.config.data.resolution, self.config.super_res.upsample)  # (N, C, H, H)
        return to_uint8(up).permute(0, 2, 3, 1).numpy()  # (N, H, H, C)

    def fidelity(self, low: LowResolution, upscaled: np.ndarray) -> dict[str, Any]:
        """PSNR and SSIM of ``upscaled`` (N, H, H, C) against ``low.originals``, and those of :meth:`interpolate`
        ("baseline", e.g. bicubic) on the same images: super-resolution is worth it where it beats the baseline."""
        if low.originals is None:
            raise ValueError("fidelity needs the originals of the low-resolution images (held_out gives them)")
        truth = torch.from_numpy(low.originals).permute(0, 3, 1, 2)  # (N, C, H, W)
        sr = reconstruction_metrics(truth, torch.from_numpy(upscaled).permute(0, 3, 1, 2), progress=False)
        base = reconstruction_metrics(truth, torch.from_numpy(self.interpolate(low)).permute(0, 3, 1, 2),
                                      progress=False)
        return {"psnr": sr["psnr"], "ssim": sr["ssim"], "baseline": self.config.super_res.upsample,
                "baseline_psnr": base["psnr"], "baseline_ssim": base["ssim"]}

    def evaluate(self, n: int, *, seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 batch_size: int | None = None, data: str | None = None, data_path: str | None = None,
                 features: str | Path | None = None, clip_run: str | Path | None = None, progress: bool = True,
                 **options: Any) -> dict[str, Any]:
        """The image metrics (:meth:`metrics`) of ``n`` held-out test images upscaled, and their :meth:`fidelity`
        to the originals beside the interpolation baseline's."""
        self.check_metrics(data=data, data_path=data_path, features=features)
        low = self.held_out(n, seed)
        samples = self.sample(n, cond=low, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size,
                              progress=progress, **options)
        metrics = self.metrics(samples, data=data, data_path=data_path, features=features, clip_run=clip_run,
                               progress=progress)
        return {"data": metrics.pop("data"), "outputs": "upscaled test images",
                **self.made_with(sampler, options.get("sr_steps") or steps), **metrics,
                **self.fidelity(low, samples.data)}

    def _check_low(self, low: LowResolution) -> None:
        images, n = low.images, len(low.images)
        if images.dtype != np.uint8 or images.shape[1:] != self.low_shape:
            raise UserError(f"{self.folder} upscales uint8 images of shape {self.low_shape} (h, w, C), got "
                            f"{images.dtype} {tuple(images.shape[1:])}: resize them to super_res.low_resolution")
        if low.prompts is not None and len(low.prompts) != n:
            raise ValueError(f"{len(low.prompts)} prompts for {n} low-resolution images")
        if low.prompts is not None and any(p.strip() for p in low.prompts) and not self.conditional:
            raise UserError(f"{self.folder} is an unconditional super-resolution run (no text encoder), so it "
                            "takes no prompt: drop --prompt")

    def upscale(self, low: LowResolution, *, aug_level: float | None = None, sampler: str | None = None,
                steps: int | None = None, seed: int = 0, guidance: float | None = None,
                batch_size: int | None = None, progress: bool = True, **options: Any) -> np.ndarray:
        """The low-resolution images super-resolved: uint8 (N, H, H, C).

        Args:
            low: the images (N, h, h, C) and their captions.
            aug_level: the augmentation level s of the input (None = :func:`sampling_level`'s default).
            sampler, steps, seed, guidance, batch_size, options: as :meth:`GaussianRunBase.draw`.
        """
        self.sampler_options(sampler, steps, {})  # an unknown sampler fails before any work
        self._check_low(low)
        sr, n = self.config.super_res, len(low.images)
        level = sampling_level(self.config, aug_level)
        x_low = to_model_range(torch.from_numpy(low.images).permute(0, 3, 1, 2))  # (N, C, h, h)
        eps = torch.from_numpy(np.random.default_rng(seed).standard_normal(x_low.shape, dtype=np.float32))
        prompts = list(low.prompts) if low.prompts is not None else [""] * n
        device, H = self.device, self.config.data.resolution

        def cond_of(start: int, stop: int) -> Cond:
            s = torch.full((stop - start,), level, device=device)
            cond = low_res_condition(x_low[start:stop].to(device), s, eps[start:stop].to(device), self.schedule, H,
                                     sr.upsample)
            return cond | prompt_condition(self.model, prompts[start:stop], device) if self.conditional else cond

        batches = self.draw(n, self.image_shape, cond_of, sampler=sampler, steps=steps, seed=seed, guidance=guidance,
                            batch_size=batch_size, progress=progress, unit="img", **options)
        x0 = from_residual(torch.cat([x.cpu() for x in batches]), x_low, self.config)  # (N, C, H, H)
        return self._images([x0])  # (N, H, H, C)

    @property
    def denoising_config(self) -> Config:
        """The run's config, without the static clip on a residual stage (:func:`unclipped`)."""
        return unclipped(self.config)

    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, aug_level: float | None = None, sr_steps: int | None = None,
               **options: Any) -> Samples:
        """``n`` images uint8 (n, H, H, C) upscaled from ``cond`` (a :class:`LowResolution`; None = held-out
        images), with their ``prompts`` when text-conditioned; ``sr_steps`` takes precedence over ``steps``."""
        self.sampler_options(sampler, steps, {})
        if cond is not None and not isinstance(cond, LowResolution):
            raise UserError(f"{a_run(self.task)} upscales images: pass a LowResolution (or None for held-out "
                            "images), or use `difflab upscale RUN IMAGE`")
        low = self.held_out(n, seed) if cond is None else cond
        if len(low.images) != n:
            raise ValueError(f"{len(low.images)} low-resolution images for {n} samples")
        images = self.upscale(low, aug_level=aug_level, sampler=sampler, steps=sr_steps or steps, seed=seed,
                              guidance=guidance, batch_size=batch_size, progress=progress, **options)
        conditions = {"labels": np.full(n, -1, dtype=np.int64)}
        if self.conditional:
            conditions["prompts"] = np.asarray(list(low.prompts or [""] * n), dtype=str)
        return Samples(images, conditions)

    def metrics(self, samples: Samples, *, data: str | None = None, data_path: str | None = None,
                features: str | Path | None = None, clip_run: str | Path | None = None,
                progress: bool = True) -> dict[str, Any]:
        """The image metrics, plus the prompt metrics of text-to-image when it reads captions."""
        if self.conditional:
            return super().metrics(samples, data=data, data_path=data_path, features=features, clip_run=clip_run,
                                   progress=progress)
        return ImageRun.metrics(self, samples, data=data, data_path=data_path, features=features, progress=progress)

    def nll(self, n: int, **_: Any) -> dict[str, Any]:
        raise self._cannot("likelihood bound on held-out images (`difflab eval --nll`): it is conditional on "
                           "a low-resolution image")

    def report_sections(self) -> Sequence[Section]:
        """Those of an image run without the ELBO (:meth:`nll`)."""
        h = report_html
        return h.config_section, h.training_section, h.samples_section, h.metrics_section, h.environment_section

    def grid_rows(self, rows: int, seed: int) -> list[GridRow]:
        """UNCONDITIONAL_ROWS rows of held-out images upscaled."""
        return [GridRow(f"#{r + 1}") for r in range(UNCONDITIONAL_ROWS)]

    @staticmethod
    def add_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--aug-level", type=float, metavar="S",
                            help="super-resolution and cascade runs: noise-conditioning augmentation level of the "
                                 "low-resolution input, in [0, 1] (default: the run's super_res.aug_level)")
        parser.add_argument("--sr-steps", type=int, metavar="N",
                            help="super-resolution and cascade runs: steps of the super-resolution stage (default: "
                                 "--steps, else its sample.steps)")

    @staticmethod
    def flag_options(args: argparse.Namespace) -> dict[str, Any]:
        """The sampling options of :meth:`add_flags`' flags that were given."""
        given = {"aug_level": getattr(args, "aug_level", None), "sr_steps": getattr(args, "sr_steps", None)}
        return {k: v for k, v in given.items() if v is not None}

    def request(self, args: argparse.Namespace, n: int | None, default_n: int) -> SampleRequest:
        """``n`` held-out images upscaled (they keep their own captions)."""
        if read_prompts(getattr(args, "prompt_list", None), getattr(args, "prompts_file", None)):
            raise UserError(f"{self.folder} is a super-resolution run: `difflab sample` upscales held-out images with "
                            "their own captions; to upscale an image with a prompt use `difflab upscale RUN IMAGE "
                            "--prompt TEXT --out OUT.png`")
        return SampleRequest(n or default_n, None, options=self.flag_options(args))


# -- difflab upscale -----------------------------------------------------------------------------
def cut_tiles(image: np.ndarray, h: int) -> tuple[np.ndarray, int, int]:
    """An image (H, W, C) cut into (rows cols, h, h, C) tiles, row-major; the last row and column are filled by
    repeating the edge pixels. Returns the tiles, rows and cols."""
    H, W, C = image.shape
    rows, cols = math.ceil(H / h), math.ceil(W / h)
    padded = np.pad(image, ((0, rows * h - H), (0, cols * h - W), (0, 0)), mode="edge")  # (rows h, cols h, C)
    tiles = padded.reshape(rows, h, cols, h, C).transpose(0, 2, 1, 3, 4)  # (rows, cols, h, h, C)
    return tiles.reshape(rows * cols, h, h, C), rows, cols


def stitch_tiles(tiles: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The inverse of :func:`cut_tiles` at any tile size: (rows cols, s, s, C) -> (rows s, cols s, C)."""
    _, s, _, C = tiles.shape
    grid = tiles.reshape(rows, cols, s, s, C).transpose(0, 2, 1, 3, 4)  # (rows, s, cols, s, C)
    return grid.reshape(rows * s, cols * s, C)


def upscaling_run(folder: str | Path, device: torch.device | str = "cpu") -> SuperResolutionRun:
    """:func:`difflab.tasks.load_run` of a super-resolution or cascade run, else one line naming the kind (checked
    on the kind, before its checkpoint is read)."""
    from difflab.tasks import load_run

    _upscaling_config(folder)
    run = load_run(folder, device)
    assert isinstance(run, SuperResolutionRun)
    return run


def upscale_image(run: SuperResolutionRun, image: np.ndarray, prompt: str | None = None,
                  **options: Any) -> np.ndarray:
    """An image uint8 (H, W, C) of any size super-resolved by ``run``'s factor f: uint8 (f H, f W, C).

    The image is cut into tiles of ``super_res.low_resolution`` pixels (:func:`cut_tiles`), every tile is
    upscaled by :meth:`SuperResolutionRun.upscale` (``options``) with ``prompt``, and the results are stitched
    and cropped. Tiles are drawn independently, so seams can show between them.
    """
    H, W, _ = image.shape
    tiles, rows, cols = cut_tiles(image, run.low_shape[0])
    prompts = [prompt] * len(tiles) if prompt else None
    big = run.upscale(LowResolution(tiles, prompts), **options)  # (rows cols, f h, f h, C)
    f = run.factor
    return stitch_tiles(big, rows, cols)[:f * H, :f * W]  # (f H, f W, C)


def upscale_file(folder: str | Path, image: str | Path, out: str | Path, *, prompt: str | None = None,
                 device: torch.device | str = "cpu", **options: Any) -> Path:
    """``difflab upscale``: read ``image`` (:func:`difflab.data.image_folder.read_image`), super-resolve it with
    the run ``folder`` (:func:`upscale_image`) and write the PNG ``out`` atomically; ``out`` and ``image`` are
    checked before the run is loaded."""
    from difflab.data.image_folder import read_image

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"cannot write an upscaled image to {out}: name a .png file")
    check_output(out, "output")
    cfg = _upscaling_config(folder)
    require_file(image, "image", "pass a PNG, JPEG or WebP file to upscale")
    pixels = read_image(image, image_channels(cfg))  # (H, W, C)
    run = upscaling_run(folder, device)
    grids.save_png(out, np.ascontiguousarray(upscale_image(run, pixels, prompt, **options)))
    return out


def _upscaling_config(folder: str | Path) -> Config:
    """The config of a run that can upscale, else one line (nothing is loaded)."""
    from difflab.tasks import run_class

    cfg, cls = run_class(folder)
    if not issubclass(cls, SuperResolutionRun):
        raise UserError(f"{folder} is {a_run(cfg.task)}, which cannot upscale: pass a super-resolution or cascade run")
    return cfg


TASK = SuperResolutionTask
RUN = SuperResolutionRun
