"""What every task and run of Gaussian diffusion shares: the Algorithm 1 call of a task, and the
loaded network as a denoiser driven by any sampler (:class:`GaussianRunBase`).

The kinds (images, text-to-image, 2-D mixtures, later waveforms) differ only in their data, their
network and the shape of a sample; the schedule, the loss, the denoiser contract and the samplers are
the same code for all of them, on tensors of any rank.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from difflab import io
from difflab.config import Config
from difflab.denoisers import Cond, Denoiser, NetworkDenoiser, classifier_free_guidance, thresholded
from difflab.errors import UserError
from difflab.losses import diffusion_loss
from difflab.samplers import get_sampler, sample
from difflab.schedules import Schedule, schedule_from_config
from difflab.tasks.base import RunBase


def algorithm1(model: nn.Module, x0: Tensor, cond: Cond, schedule: Schedule, cfg: Config,
               generator: torch.Generator) -> Tensor:
    """Algorithm 1 (Ho et al. 2020) of a task: ``model(x_t, t, **cond)`` regressed on the target of
    ``cfg.diffusion`` (prediction, weighting) at t and eps drawn with ``generator``."""
    dc = cfg.diffusion
    return diffusion_loss(lambda x_t, t: model(x_t, t, **cond), x0, schedule, prediction=dc.prediction,
                          weighting=dc.weighting, min_snr_gamma=dc.min_snr_gamma, generator=generator)


def guided_denoiser(model: nn.Module, schedule: Schedule, cfg: Config, guidance: float | None = None,
                    dynamic_threshold: float | None = None) -> Denoiser:
    """``model`` as ``D(x_t, t, cond) -> x0_hat`` (``cfg.diffusion.prediction``, ``cfg.sample.clip_x0``) with
    classifier-free guidance (None = ``cfg.sample.guidance``), then Imagen's dynamic thresholding at the
    percentile ``dynamic_threshold`` (None = ``cfg.sample.dynamic_threshold``; 0 = off), which replaces the
    static clip of ``clip_x0`` when on."""
    s = cfg.sample
    percentile = s.dynamic_threshold if dynamic_threshold is None else (dynamic_threshold or None)  # 0 = off
    denoiser = NetworkDenoiser(model, schedule, cfg.diffusion.prediction, clip_x0=s.clip_x0 and percentile is None)
    return thresholded(classifier_free_guidance(denoiser, s.guidance if guidance is None else guidance), percentile)


def load_network(model: nn.Module, checkpoint: Path, ema: bool, device: torch.device | str) -> nn.Module:
    """``model`` with the (EMA) weights of ``checkpoint``, on ``device``, in eval mode without gradients."""
    io.load_weights(model, checkpoint / (io.EMA_FILE if ema else io.MODEL_FILE))
    return model.to(device).eval().requires_grad_(False)


def check_count(n: int) -> None:
    """One line for a non-positive number of samples."""
    if n < 1:
        raise UserError(f"number of samples must be positive, got {n}: pass --n 1 or more")


class GaussianRunBase(RunBase):
    """A trained run of Gaussian diffusion: its network (EMA weights) in the denoiser contract.

    Subclasses define ``task``, :meth:`build` (the network), the shape of one sample and how conditions
    become the network's ``cond``; :meth:`draw` runs any sampler over ``n`` samples in batches.
    """

    can_sample = True

    def __init__(self, folder: Path, config: Config, model: nn.Module, checkpoint: Path) -> None:
        super().__init__(folder, config, checkpoint)
        self.model = model
        self.schedule: Schedule = schedule_from_config(config.diffusion)

    @classmethod
    def build(cls, cfg: Config, folder: Path) -> nn.Module:
        """The run's network, before its weights are loaded."""
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path, config: Config, device: torch.device | str = "cpu", *, ema: bool = True,
             checkpoint: Path | None = None) -> GaussianRunBase:
        """:meth:`build` the network of ``folder`` and load the (EMA) weights of ``checkpoint`` (None = the newest)."""
        checkpoint = checkpoint or io.require_checkpoint(folder)
        return cls(folder, config, load_network(cls.build(config, folder), checkpoint, ema, device), checkpoint)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def conditional(self) -> bool:
        """Whether the network reads a condition (so classifier-free guidance applies)."""
        return False

    @property
    def denoising_config(self) -> Config:
        """The config the denoiser is built from: the run's, or (a kind whose x0 is not an image in [-1, 1]) the
        run's without the static clip of ``sample.clip_x0``."""
        return self.config

    def denoiser(self, guidance: float | None = None, dynamic_threshold: float | None = None) -> Denoiser:
        """The network as ``D(x_t, t, cond) -> x0_hat`` with guidance (None = ``sample.guidance``) and dynamic
        thresholding (None = ``sample.dynamic_threshold``; 0 = off), from :attr:`denoising_config`."""
        return guided_denoiser(self.model, self.schedule, self.denoising_config, guidance, dynamic_threshold)

    def sampler_options(self, sampler: str | None, steps: int | None,
                        options: dict[str, Any]) -> tuple[str, int, str | None, dict[str, Any]]:
        """(sampler, steps, grid, the sampler's own options): unset ones from ``config.sample``."""
        s = self.config.sample
        sampler = sampler or s.sampler
        get_sampler(sampler)  # a one-line error for an unknown name, before any work
        opts = {"eta": s.eta} if sampler == "ddim" else {"variance": s.variance} if sampler == "ddpm" else {}
        opts.update({k: v for k, v in options.items() if v is not None})
        grid = opts.pop("grid", s.grid)
        return sampler, s.steps if steps is None else steps, grid, opts

    @torch.inference_mode()
    def draw(self, n: int, shape: tuple[int, ...], cond_of: Callable[[int, int], Cond | None], *,
             sampler: str | None = None, steps: int | None = None, seed: int = 0, guidance: float | None = None,
             batch_size: int | None = None, progress: bool = True, unit: str = "sample",
             dynamic_threshold: float | None = None, start_of: Callable[[int, int], Tensor] | None = None,
             strength: float = 1.0, **options: Any) -> list[Tensor]:
        """``n`` samples of ``shape`` (one sample's) in batches; ``cond_of(start, stop)`` is the network's
        condition of samples start..stop (None: unconditional); ``dynamic_threshold`` as :meth:`denoiser`;
        ``start_of(start, stop)`` a guess of those samples to begin from at ``strength`` (SDEdit,
        :func:`difflab.samplers.sample`). Returns the batches (B, *shape)."""
        check_count(n)
        sampler, steps, grid, opts = self.sampler_options(sampler, steps, options)
        denoiser = self.denoiser(guidance, dynamic_threshold)
        batch_size = batch_size or self.config.sample.batch_size
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        bar = tqdm(total=n, desc="sampling", unit=unit, disable=not progress or n <= batch_size, dynamic_ncols=True)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            out.append(sample(sampler, denoiser, (stop - start, *shape), self.schedule, steps=steps, grid=grid,
                              cond=cond_of(start, stop), generator=generator, device=self.device,
                              progress=progress and n <= batch_size, strength=strength,
                              start=None if start_of is None else start_of(start, stop), **opts))
            bar.update(stop - start)
        bar.close()
        return out


__all__ = ["GaussianRunBase", "algorithm1", "check_count", "guided_denoiser", "load_network"]
