"""What every Gaussian sampler shares: the signature, option checks, grids, noise, time batches.

Every sampler is a pure function with one signature (:class:`Sampler`). It walks the
descending grid ``timesteps`` (from :func:`difflab.schedules.step_grid`) from ``grid[0]``
to ``grid[-1]`` and then to ``CLEAN_T`` (alpha_bar = 1, sigma = 0), so a grid of N times
is N steps. Per-step scalars are computed once, in float64, as Python floats; the tensor
arithmetic happens in the dtype of ``x_T``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from difflab.denoisers import Cond, Denoiser
from difflab.errors import UserError
from difflab.schedules import CLEAN_T, Schedule


class Sampler(Protocol):
    """The one sampler signature (STYLE.md: samplers are pure functions, unknown options raise)."""

    def __call__(self, denoiser: Denoiser, x_T: Tensor, schedule: Schedule, timesteps: Tensor, *,
                 cond: Cond | None = None, generator: torch.Generator | None = None,
                 progress: bool = False, **options: Any) -> Tensor: ...


def take_options(sampler: str, options: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """``defaults`` updated with ``options``; a UserError names any option the sampler lacks."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = f"its options are {', '.join(defaults)}" if defaults else "it takes no options"
        raise UserError(f"sampler {sampler!r} has no option {unknown[0]!r}: {known}")
    return {**defaults, **options}


def check_timesteps(schedule: Schedule, timesteps: Tensor) -> Tensor:
    """The grid as float64 on the CPU (N,), after checking it is 1-D, in range, strictly descending."""
    times = torch.as_tensor(timesteps).detach().to("cpu", torch.float64)
    fix = "build the grid with difflab.schedules.step_grid"
    if times.dim() != 1 or times.numel() == 0:
        raise UserError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(times.shape)}: {fix}")
    if times.min() < 0 or times.max() > schedule.T - 1:
        raise UserError(f"timesteps must lie in [0, {schedule.T - 1}], got [{times.min():g}, {times.max():g}]: {fix}")
    if times.numel() > 1 and not bool((times[1:] < times[:-1]).all()):
        raise UserError(f"timesteps must be strictly descending (no repeats): {fix} with fewer steps")
    return times


def with_clean(times: Tensor) -> Tensor:
    """The grid followed by ``CLEAN_T``, the time every sampler ends at: (N + 1,)."""
    return torch.cat([times, times.new_tensor([CLEAN_T])])


def time_batch(t: float, x: Tensor) -> Tensor:
    """Time t as a (B,) tensor on x's device for the denoiser (never below float32 precision)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), t, dtype=dtype, device=x.device)


def randn(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None,
          device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
    """N(0, I) drawn on the generator's device, then moved (diffusers' ``randn_tensor`` for one generator)."""
    draw_device = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, device=draw_device, dtype=dtype)
    return noise if device is None else noise.to(device)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Noise shaped like x, in its dtype and on its device."""
    return randn(x.shape, generator, x.device, x.dtype)


def steps_bar(n: int, name: str, progress: bool) -> Iterable[int]:
    """range(n), behind a tqdm bar when ``progress``."""
    return tqdm(range(n), desc=name, unit="step", disable=not progress, leave=False, dynamic_ncols=True)
