"""The KL autoencoder, trained (:class:`AutoencoderTask`) and loaded (:class:`AutoencoderRun`,
:func:`load_autoencoder`): latent diffusion's first stage (Rombach et al. 2022, Sec. 3).

The loss, per pixel value (D = C H W values of an image), with z = mean + exp(logvar / 2) eps, eps ~ N(0, I)
(the reparameterisation, Kingma & Welling 2014)::

    L = |x - D(z)| (l1) or (x - D(z))^2 (l2), averaged over the D values
        + kl_weight * KL(q(z|x) || N(0, I)) / D
        + perceptual_weight * |phi(x) - phi(D(z))|^2, averaged over the features

where KL(N(mean, exp(logvar)) || N(0, I)) = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar) over the latent and phi
are the FID features of the dataset (:mod:`difflab.evaluate.features`). Dividing both terms by D keeps Stable
Diffusion's ratio, whose KL-f autoencoders weigh a per-image sum of both by kl_weight = 1e-6 (the default here):
the KL only keeps the latent from growing without bound, the autoencoder reconstructs. With kl_weight = 2
sigma^2 and l2, L is the negative ELBO per value of a Gaussian decoder N(D(z), sigma^2 I) up to a constant:
that is the VAE of :mod:`difflab.tasks.vae`.

The **latent scale** (1 / std of the encoder's means on ``autoencoder.scale_images`` training images, so that
latent diffusion sees unit-variance latents; Rombach et al. 2022, Sec. 4.3.2 and Appendix G) is computed from
the run's newest EMA weights the first time they are loaded for latents (:func:`latent_scale`, called by
:func:`load_autoencoder` and ``difflab eval``) and stored in ``RUN/latents.json``; it is never a constant in code.

For latent diffusion (another run reading this one)::

    model, scale, cfg = load_autoencoder(folder, device)    # EMA weights, eval mode, no gradients
    z0 = scale * model.encode(x)[0]                         # x (B, C, H, W) in [-1, 1] -> (B, c, H/f, W/f)
    x = model.decode(z0 / scale)
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab import files, grids, io, report_html
from difflab.config import Config
from difflab.data import load_dataset
from difflab.data.images import ImageDataset, random_flip, to_model_range, to_uint8
from difflab.errors import UserError
from difflab.evaluate.features import FeatureNet, get_feature_extractor
from difflab.evaluate.fid import extractor_for, fixed_subset
from difflab.evaluate.reconstruction import reconstruction_metrics
from difflab.models.autoencoder import KLAutoencoder, build_autoencoder, check_side
from difflab.tasks import load_run, run_class
from difflab.tasks.base import RunBase, Section, a_run
from difflab.tasks.gaussian import load_network
from difflab.tasks.image import image_channels, load_images

AUTOENCODER_KL_WEIGHT = 1e-6  # Stable Diffusion's KL-f autoencoders (ldm/models/autoencoder.py configs)
LATENTS_FILE = "latents.json"  # RUN/latents.json: the latent scale of the newest checkpoint
PREVIEW_IMAGES = 8  # training images (and their reconstructions) in the training log's preview
REPORT_IMAGES = 8  # test images in the report's originals-vs-reconstructions grid
RECONSTRUCT_BATCH = 256  # images per encoder/decoder pass when reconstructing or encoding a set


# -- the loss ----------------------------------------------------------------------------------
def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample (B,), summed over the latent (Kingma & Welling 2014,
    Appendix B)."""
    return 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).flatten(1).sum(dim=1)  # (B,)


def reconstruction_error(x: Tensor, x_hat: Tensor, kind: str) -> Tensor:
    """Mean per value of |x - x_hat| (``l1``) or (x - x_hat)^2 (``l2``) (a scalar)."""
    if kind == "l1":
        return (x - x_hat).abs().mean()
    if kind == "l2":
        return ((x - x_hat) ** 2).mean()
    raise UserError(f"unknown autoencoder.recon_loss {kind!r}: use l1 or l2")


def perceptual_distance(phi: FeatureNet, x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean squared distance of the FID features of x and x_hat (B, C, H, W) in [-1, 1] (a scalar)."""
    H, W = phi.resolution
    if tuple(x.shape[-2:]) != (H, W):  # a user's extractor of another side
        x, x_hat = (F.interpolate(v, size=(H, W), mode="bilinear", align_corners=False) for v in (x, x_hat))
    return ((phi.features(x) - phi.features(x_hat)) ** 2).mean()


def default_kl_weight(cfg: Config, kind_default: float) -> float:
    """``autoencoder.kl_weight``, or the kind's default when it is None."""
    return kind_default if cfg.autoencoder.kl_weight is None else cfg.autoencoder.kl_weight


def latent_shape(cfg: Config) -> tuple[int, int, int]:
    """(c, H/f, W/f) of one image's latent in a resolved config."""
    a, H = cfg.autoencoder, cfg.data.resolution
    check_side(H, a.downsample)
    return a.latent_channels, H // a.downsample, H // a.downsample


class AutoencoderTask:
    """The KL autoencoder on an in-memory image dataset (its labels and captions are not used)."""

    name = "autoencoder"
    kl_default: ClassVar[float] = AUTOENCODER_KL_WEIGHT

    def __init__(self, cfg: Config) -> None:
        a = cfg.autoencoder
        self.dataset: ImageDataset = load_images(cfg, check=lambda side: check_side(side, a.downsample))
        H, _ = self.dataset.resolution
        d = replace(cfg.data, resolution=H, channels=self.dataset.channels)
        self.config = replace(cfg, task=self.name, data=d,
                              autoencoder=replace(a, kl_weight=default_kl_weight(cfg, self.kl_default)))
        self.images: Tensor = self.dataset.images  # uint8 (N, C, H, W)
        self.phi: FeatureNet | None = None  # the perceptual term's feature extractor (frozen, not in the model)
        if a.perceptual_weight > 0:
            self.phi = get_feature_extractor(d.name, data_path=d.path, resolution=H, channels=d.channels)
            self.phi.requires_grad_(False)

    def to(self, device: torch.device) -> None:
        """Keep the dataset (and the perceptual term's extractor) on the training device."""
        self.images = self.images.to(device)
        if self.phi is not None:
            self.phi = self.phi.to(device)

    def run_files(self) -> dict[str, str]:
        return {}

    def build_model(self) -> nn.Module:
        return build_autoencoder(self.config.autoencoder, self.dataset.channels)

    def batch(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """A random batch x (B, C, H, W) in [-1, 1] drawn with ``generator`` (flipped when ``data.random_flip``)."""
        idx = torch.randint(0, len(self.images), (batch_size,), device=self.images.device, generator=generator)
        x = to_model_range(self.images[idx])  # (B, C, H, W)
        return random_flip(x, generator) if self.config.data.random_flip else x

    def terms(self, model: nn.Module, x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The loss's terms on images x (B, C, H, W): "recon", "kl" (per value, unweighted), "perceptual"
        (when weighted) and their weighted sum "loss" (see the module doc)."""
        a = self.config.autoencoder
        noise = torch.randn((len(x), *latent_shape(self.config)), device=x.device, generator=generator)  # eps
        x_hat, mean, logvar = model(x, noise)  # (B, C, H, W), (B, c, h, w) x 2
        values = x[0].numel()  # D = C H W
        out = {"recon": reconstruction_error(x, x_hat.float(), a.recon_loss),
               "kl": kl_to_standard_normal(mean.float(), logvar.float()).mean() / values}
        out["loss"] = out["recon"] + a.kl_weight * out["kl"]
        if self.phi is not None:
            out["perceptual"] = perceptual_distance(self.phi, x, x_hat.float())
            out["loss"] = out["loss"] + a.perceptual_weight * out["perceptual"]
        return out

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """The loss of a random :meth:`batch` (noise drawn with ``generator``: reproducible per step)."""
        return self.terms(model, self.batch(batch_size, generator), generator)["loss"]

    def preview(self, model: nn.Module) -> np.ndarray:
        """PREVIEW_IMAGES training images over their reconstructions (z = the mean), uint8 (H, W, C)."""
        x = self.images[:PREVIEW_IMAGES]
        return grids.image_grid(np.concatenate([_hwc(x), _hwc(reconstruct(model, x))]), ncol=len(x))


def _hwc(images: Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) -> numpy (N, H, W, C)."""
    return images.permute(0, 2, 3, 1).cpu().numpy()


@torch.inference_mode()
def encode_means(model: KLAutoencoder, images: Tensor, batch_size: int = RECONSTRUCT_BATCH) -> Tensor:
    """The encoder's means (N, c, H/f, W/f), float32 on the CPU, of uint8 images (N, C, H, W)."""
    device = next(model.parameters()).device
    out = [model.encode(to_model_range(images[i:i + batch_size].to(device)))[0].float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.inference_mode()
def reconstruct(model: nn.Module, images: Tensor, batch_size: int = RECONSTRUCT_BATCH) -> Tensor:
    """uint8 reconstructions (N, C, H, W) of uint8 images (N, C, H, W) through z = the mean (deterministic);
    ``model`` is left in the mode it was in."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [to_uint8(model(to_model_range(images[i:i + batch_size].to(device)))[0].float()).cpu()
           for i in range(0, len(images), batch_size)]
    model.train(training)
    return torch.cat(out)


# -- a trained run -----------------------------------------------------------------------------
def _bad_latents(path: Path) -> UserError:
    return UserError(f"latent file {path} is not what difflab writes (a JSON object with a positive latent_scale "
                     f"and its checkpoint_step): delete it, and difflab computes it again")


def _read_latents(path: Path) -> dict[str, Any] | None:
    """RUN/latents.json, checked; None when it does not exist."""
    if not path.exists():
        return None
    stored = files.read_json(path, "latent file", "delete it, and difflab computes it again")
    scale = stored.get("latent_scale") if isinstance(stored, dict) else None
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0 \
            or not isinstance(stored.get("checkpoint_step"), int):
        raise _bad_latents(path)
    return stored


class AutoencoderRun(RunBase):
    """A trained KL autoencoder: it reconstructs and encodes (``difflab eval``: PSNR, SSIM, rFID); it does not
    sample (a :class:`~difflab.tasks.vae.VAERun` does)."""

    task = "autoencoder"
    can_sample = False

    def __init__(self, folder: Path, config: Config, model: KLAutoencoder, checkpoint: Path, ema: bool = True) -> None:
        super().__init__(folder, config, checkpoint)
        self.model, self.ema = model, ema

    @classmethod
    def build(cls, cfg: Config) -> KLAutoencoder:
        """The run's network, before its weights are loaded."""
        return build_autoencoder(cfg.autoencoder, image_channels(cfg))

    @classmethod
    def load(cls, folder: Path, config: Config, device: torch.device | str = "cpu", *, ema: bool = True,
             checkpoint: Path | None = None) -> AutoencoderRun:
        checkpoint = checkpoint or io.require_checkpoint(folder)
        return cls(folder, config, load_network(cls.build(config), checkpoint, ema, device), checkpoint, ema)

    @classmethod
    def evaluates(cls) -> bool:
        return True

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def images(self, split: str, n: int | None = None, *, data: str | None = None,
               data_path: str | None = None) -> Tensor:
        """A fixed subset (the same for every run, :func:`~difflab.evaluate.fid.fixed_subset`) of ``n`` uint8
        images (n, C, H, W) of ``split`` of the run's dataset (or ``data``) at its resolution; all for None."""
        d = self.config.data
        if data is None or data == d.name:
            dataset = load_images(replace(self.config, data=replace(d, path=data_path or d.path)), split,
                                  check=lambda side: check_side(side, self.config.autoencoder.downsample))
        else:
            dataset = load_dataset(data, path=data_path, resolution=d.resolution, channels=d.channels, split=split)
        return torch.as_tensor(fixed_subset(np.asarray(dataset.images), n))

    def reconstruct(self, images: Tensor) -> Tensor:
        """uint8 reconstructions (N, C, H, W) of uint8 images (N, C, H, W) (z = the mean)."""
        return reconstruct(self.model, images)

    def evaluate(self, n: int, *, seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 batch_size: int | None = None, data: str | None = None, data_path: str | None = None,
                 features: str | Path | None = None, clip_run: str | Path | None = None, progress: bool = True,
                 **options: Any) -> dict[str, Any]:
        """PSNR, SSIM and rFID of the reconstructions of ``n`` test images (fewer if the split has fewer: "n" says
        how many), and the latent scale (:func:`latent_scale`)."""
        refuse_sampling_flags(self, "reconstructs", sampler=sampler, steps=steps, clip=clip_run, **options)
        scale = latent_scale(self)  # a broken RUN/latents.json fails before the work
        return {**self.reconstruction_measures(n, data=data, data_path=data_path, features=features,
                                               progress=progress), "latent_scale": scale}

    def reconstruction_measures(self, n: int, *, data: str | None = None, data_path: str | None = None,
                                features: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
        """:func:`~difflab.evaluate.reconstruction.reconstruction_metrics` of ``n`` reconstructed test images
        ("data", "outputs", "n" and the figures)."""
        name = data or self.config.data.name
        originals = self.images("test", n, data=data, data_path=data_path)  # (n, C, H, W)
        C, H = originals.shape[1], originals.shape[2]
        phi = extractor_for(C, data=name, data_path=data_path or (self.config.data.path if data is None else None),
                            resolution=H, weights=features)
        metrics = reconstruction_metrics(originals, self.reconstruct(originals), extractor=phi, progress=progress)
        return {"data": f"{name} (test split)", "outputs": "reconstructions", "n": len(originals), **metrics}

    def report_sections(self) -> Sequence[Section]:
        h = report_html
        return (h.config_section, h.training_section, reconstructions_section, h.metrics_section,
                h.environment_section)


def refuse_sampling_flags(run: RunBase, what: str, **flags: Any) -> None:
    """One line when a sampler's option (``--sampler``, ``--steps``, ``--guidance``, ...) is given to a run that
    ``what`` in one pass of its decoder (``what``: "reconstructs", "decodes z ~ N(0, I)")."""
    given = next((name for name, value in flags.items() if value is not None), None)
    if given is not None:
        flag = "--" + given.replace("_", "-")
        raise UserError(f"{run.folder} is {a_run(run.task)}, which {what} in one pass of its decoder, so {flag} "
                        f"cannot be used: drop it")


def reconstructions_section(ctx: report_html.ReportContext) -> tuple[str, str]:
    """REPORT_IMAGES test images over their reconstructions (z = the mean)."""
    run = ctx.loaded
    originals = run.images("test", REPORT_IMAGES)
    rows = [report_html.GridStrip("original", _hwc(originals)),
            report_html.GridStrip("reconstruction", _hwc(run.reconstruct(originals)))]
    note = f"checkpoint step {ctx.checkpoint_step} (EMA weights), test split, z = the encoder's mean"
    return "Reconstructions", report_html.render_grid("test images", rows, note=note)


# -- the latent scale --------------------------------------------------------------------------
def latent_scale(run: AutoencoderRun) -> float:
    """1 / std of the encoder's means on ``autoencoder.scale_images`` training images (a fixed subset), from the
    run's EMA weights: read from RUN/latents.json when it was computed for the loaded checkpoint, else computed
    and stored there (atomically; a folder that cannot be written only warns).

    Raises:
        UserError: ``run`` was loaded without its EMA weights, or RUN/latents.json is not what difflab writes.
    """
    if not run.ema:
        raise UserError(f"the latent scale of {run.folder} belongs to its EMA weights: load the run with them")
    path = run.folder / LATENTS_FILE
    n = run.config.autoencoder.scale_images
    stored = _read_latents(path)
    if stored is not None and stored["checkpoint_step"] == run.checkpoint_step and stored.get("scale_images") == n:
        return float(stored["latent_scale"])
    means = encode_means(run.model, run.images("train", n))  # (N, c, h, w)
    std = float(means.std())
    if not std > 0:
        raise UserError(f"the encoder of {run.folder} maps every image to one latent (std {std:g}): train it longer")
    record = {"latent_scale": 1 / std, "latent_std": std, "latent_mean": float(means.mean()), "images": len(means),
              "scale_images": n, "checkpoint_step": run.checkpoint_step, "latent_shape": list(means.shape[1:])}
    try:
        io.write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    except UserError as e:
        warnings.warn(f"the latent scale was not stored ({e})", stacklevel=2)
    return record["latent_scale"]


def load_autoencoder(folder: str | Path, device: torch.device | str = "cpu") -> tuple[KLAutoencoder, float, Config]:
    """A trained autoencoder run for latent diffusion.

    Args:
        folder: a run folder of ``task: autoencoder`` (or ``vae``) written by ``difflab train``.
        device: where the network goes.

    Returns:
        (the network with its newest EMA weights, in eval mode, requires_grad False; the latent scale
        (:func:`latent_scale`, computed once and stored in RUN/latents.json); the run's resolved config).

    Raises:
        UserError: not a run folder, not an autoencoder run, no checkpoint yet.
    """
    cfg, cls = run_class(folder)
    if not issubclass(cls, AutoencoderRun):
        raise UserError(f"{folder} is {a_run(cfg.task)}, not an autoencoder: pass the --out folder of `difflab train` "
                        f"with task: autoencoder")
    run = load_run(folder, device)
    assert isinstance(run, AutoencoderRun)
    return run.model, latent_scale(run), run.config


TASK = AutoencoderTask
RUN = AutoencoderRun

__all__ = ["AUTOENCODER_KL_WEIGHT", "AutoencoderRun", "AutoencoderTask", "LATENTS_FILE", "encode_means",
           "kl_to_standard_normal", "latent_scale", "load_autoencoder", "reconstruct", "reconstruction_error"]
