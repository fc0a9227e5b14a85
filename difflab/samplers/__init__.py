"""Gaussian diffusion samplers: one signature, one denoiser contract, a registry by name.

=============  ============================================================  ==================
name           method                                                        default grid
=============  ============================================================  ==================
``ddpm``       ancestral sampling, Ho et al. 2020, Algorithm 2               trailing
``ddim``       Song et al. 2021, eq. 12 (option ``eta``)                     trailing
``dpmpp-2m``   DPM-Solver++(2M), Lu et al. 2022, Algorithm 2                 karras (edm at <= 10)
``dpmpp-3m``   DPM-Solver++(3M), Lu et al. 2022                              karras
``euler``      Euler on the ODE in sigma, Karras et al. 2022                 karras
``heun``       Karras et al. 2022, Algorithm 1                               karras
=============  ============================================================  ==================

Every sampler is ``fn(denoiser, x_T, schedule, timesteps, *, cond, generator, progress,
**options) -> x_0`` (:class:`~difflab.samplers.common.Sampler`); ``timesteps`` comes from
:func:`difflab.schedules.step_grid`. :func:`sample` draws x_T and builds the grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from difflab.config import SampleConfig
from difflab.denoisers import Cond, Denoiser
from difflab.errors import UserError
from difflab.samplers.common import Sampler, randn
from difflab.samplers.ddim import ddim
from difflab.samplers.ddpm import VARIANCES, ddpm
from difflab.samplers.dpm_solver import dpmpp_2m, dpmpp_3m
from difflab.samplers.karras import euler, heun
from difflab.schedules import Schedule, step_grid

SAMPLERS: dict[str, Sampler] = {"ddpm": ddpm, "ddim": ddim, "dpmpp-2m": dpmpp_2m, "dpmpp-3m": dpmpp_3m,
                               "euler": euler, "heun": heun}
DEFAULT_GRID: dict[str, str] = {"ddpm": "trailing", "ddim": "trailing", "dpmpp-2m": "karras", "dpmpp-3m": "karras",
                                "euler": "karras", "heun": "karras"}
# (grid, most steps) that replaces DEFAULT_GRID for few steps: on Fashion-MNIST (v, cosine) 10-step dpmpp-2m
# is 1.3-3.7x better on edm than on karras, 20-step 1.5-1.8x worse (BENCHMARKS.md, "FID against NFE")
FEW_STEPS_GRID: dict[str, tuple[str, int]] = {"dpmpp-2m": ("edm", 10)}


def default_grid(name: str, steps: int) -> str:
    """The step grid of sampler ``name`` at ``steps`` steps when none is given."""
    grid, most = FEW_STEPS_GRID.get(name, (None, 0))
    return grid if steps <= most else DEFAULT_GRID[name]


__all__ = ["DEFAULT_GRID", "FEW_STEPS_GRID", "SAMPLERS", "Sampler", "check_sample_config", "default_grid", "get_sampler", "sample", "sdedit_grid", "ddim",
           "ddpm", "dpmpp_2m", "dpmpp_3m", "euler", "heun"]


def get_sampler(name: str) -> Sampler:
    """The sampler registered as ``name``; a UserError lists the names otherwise."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def check_sample_config(s: SampleConfig, schedule: Schedule) -> None:
    """One line, before training, for ``sample.*`` defaults that ``difflab sample`` would refuse only later."""
    try:
        get_sampler(s.sampler)
        step_grid(schedule, s.steps, s.grid or default_grid(s.sampler, s.steps))
        if s.variance not in VARIANCES:
            raise UserError(f"unknown ddpm variance {s.variance!r}: use one of {', '.join(VARIANCES)}")
    except UserError as e:
        raise UserError(f"the config's sample settings (sample.sampler, sample.steps, sample.grid, "
                        f"sample.variance) would not sample: {e}") from None


def sdedit_grid(timesteps: Tensor, t_start: float) -> Tensor:
    """A descending grid (N,) cut to start at ``t_start``: t_start, then the grid's times below it (SDEdit)."""
    below = timesteps[timesteps < t_start]
    return torch.cat([torch.tensor([t_start], dtype=timesteps.dtype), below])


def sample(name: str, denoiser: Denoiser, shape: tuple[int, ...], schedule: Schedule, *, steps: int,
           grid: str | None = None, cond: Cond | None = None, generator: torch.Generator | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
           progress: bool = False, start: Tensor | None = None, strength: float = 1.0, **options: Any) -> Tensor:
    """Draw x_T ~ N(0, I) with ``generator`` and run the sampler ``name`` over ``steps`` steps.

    With ``start`` (B, ...), a guess of the clean data, the reverse process begins from it noised instead
    (SDEdit, Meng et al. 2022, Sec. 3): x_{t0} ~ q(x_{t0} | start) at t0 = ``strength`` (T - 1), then the
    grid's times below t0 (:func:`sdedit_grid`); strength 1 is the whole process from noise of the guess.

    Args:
        shape: (B, ...) of the samples.
        grid: step grid kind (:data:`difflab.schedules.GRIDS`); None = :func:`default_grid`.
        device: where the samples live (default: the generator's device, else the CPU).
        dtype: the dtype of x_T and of the sampler's arithmetic.
        start, strength: the guess and how much noise covers it (in (0, 1]).
        options: the sampler's own options (``eta`` for ddim, ``variance`` for ddpm).

    Returns:
        Samples of clean data (B, ...).
    """
    fn = get_sampler(name)
    timesteps = step_grid(schedule, steps, grid or default_grid(name, steps))
    device = torch.device(device) if device is not None else generator.device if generator is not None else None
    x_T = randn(shape, generator, device, dtype)
    if start is not None:
        if not 0 < strength <= 1:
            raise UserError(f"the strength of a start must be in (0, 1], got {strength}: e.g. 0.3")
        timesteps = sdedit_grid(timesteps, strength * (schedule.T - 1))
        t0 = torch.full((shape[0],), float(timesteps[0]), device=x_T.device)
        x_T = schedule.q_sample(start.to(x_T.device, dtype), t0, x_T)  # x_{t0} = sqrt(ab) start + sqrt(1 - ab) eps
    return fn(denoiser, x_T, schedule, timesteps, cond=cond, generator=generator, progress=progress, **options)
