"""The Gaussian core on any rank: (B, D), (B, C, L) and (B, C, H, W) alike.

Samplers, the training loss and the ELBO only broadcast per-sample values with
:func:`difflab.schedules.append_dims`, so the same values shaped differently must give the same
numbers, and samplers with the exact denoiser of Gaussian data (:mod:`difflab.analytic`) must
reach that data on every rank.
"""

from __future__ import annotations

import math

import pytest
import torch

from difflab.analytic import gaussian_denoiser
from difflab.denoisers import PREDICTIONS
from difflab.evaluate.likelihood import elbo_terms
from difflab.losses import WEIGHTINGS, diffusion_loss
from difflab.samplers import SAMPLERS, sample
from difflab.schedules import append_dims, make_schedule

F64 = torch.float64
C, H, W = 2, 3, 3
D = C * H * W
SHAPES = {"B C H W": (C, H, W), "B C L": (C, H * W), "B 1 L": (1, D), "B D": (D,)}  # one sample's shape
MU, STD = 0.5, 0.6  # the data: x_0 ~ N(MU, STD^2 I) in D dimensions


def _gaussian_denoiser(schedule):
    """The exact E[x_0 | x_t] of the data, for x_t of any shape with D elements per sample."""
    return gaussian_denoiser(torch.full((D,), MU, dtype=F64), STD ** 2 * torch.eye(D, dtype=F64), schedule)


def _same_values(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """x (B, ...) reshaped to every shape of SHAPES (views of the same values)."""
    return {name: x.reshape(len(x), *shape) for name, shape in SHAPES.items()}


def test_append_dims_broadcasts_per_sample_values_over_any_rank():
    v = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    for shape in SHAPES.values():
        like = torch.zeros(3, *shape, dtype=torch.float32)
        out = append_dims(v, like)
        assert out.shape == (3,) + (1,) * len(shape) and out.dtype == torch.float32
        assert torch.equal((out * torch.ones_like(like)).flatten(1), v.float()[:, None].expand(3, D))
    assert append_dims(torch.tensor(2.0), torch.zeros(4, 5)).shape == (1, 1)  # one value: the whole batch


# -- samplers ---------------------------------------------------------------------------------
# Steps chosen so each sampler's own bias in the std of this data is under 2% (measured with 50k
# samples in float32: ddpm and ddim with eta = 1 -1.3% at 500 steps, euler -1.5% at 200, heun and
# dpmpp-2m +0.7%, dpmpp-3m +0.2% at 50); the mean is off by up to 0.003 (x_T ~ N(0, I), not q(x_T)).
SAMPLER_STEPS = {"ddpm": 500, "ddim": 500, "dpmpp-2m": 50, "dpmpp-3m": 50, "euler": 200, "heun": 50}
N_SAMPLES = 2000
STD_BIAS = 0.02


def test_every_sampler_has_steps_here():
    assert set(SAMPLER_STEPS) == set(SAMPLERS)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_reach_gaussian_data_on_every_rank_with_the_same_numbers(name):
    schedule = make_schedule("linear", 1000)
    denoiser = _gaussian_denoiser(schedule)
    options = {"eta": 1.0} if name == "ddim" else {}  # ddim draws noise too (eta = 0 is euler's numbers)
    samples = {key: sample(name, denoiser, (N_SAMPLES, *shape), schedule, steps=SAMPLER_STEPS[name],
                           generator=torch.Generator().manual_seed(0), **options)
               for key, shape in SHAPES.items()}  # the same x_T and noise values, shaped differently
    reference = samples["B C H W"]
    n = reference.numel()
    for key, x in samples.items():
        assert x.shape == (N_SAMPLES, *SHAPES[key]) and x.dtype == torch.float32
        assert torch.equal(x.reshape(reference.shape), reference), f"{key} differs from (B, C, H, W)"
        # 5 Monte-Carlo standard errors (the D dimensions are independent), plus the sampler's bias
        assert abs(float(x.mean()) - MU) < 5 * STD / math.sqrt(n) + 0.005, key
        assert abs(float(x.std()) / STD - 1) < 5 / math.sqrt(2 * n) + STD_BIAS, key


# -- the loss and the bound -------------------------------------------------------------------
def _net(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed network, nonlinear in x_t and t, of any rank."""
    return torch.tanh(x_t) * append_dims(t / 1000, x_t) + 0.1 * x_t


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_diffusion_loss_is_the_same_on_every_rank(prediction, weighting):
    x0 = MU + STD * torch.randn(8, D, generator=torch.Generator().manual_seed(1))
    losses = {key: diffusion_loss(_net, x, make_schedule("cosine", 100), prediction=prediction, weighting=weighting,
                                  generator=torch.Generator().manual_seed(2))
              for key, x in _same_values(x0).items()}  # the same t and eps draws
    for key, loss in losses.items():
        assert loss.shape == () and torch.isfinite(loss), key
        assert torch.equal(loss, losses["B C H W"]), key


@pytest.mark.parametrize("decoder", ["gaussian", "discretized"])
def test_elbo_terms_are_the_same_on_every_rank(decoder):
    schedule = make_schedule("linear", 100)
    x0 = MU + STD * torch.randn(6, D, generator=torch.Generator().manual_seed(3), dtype=F64)
    if decoder == "discretized":  # 8-bit values k / 127.5 - 1
        x0 = ((x0.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    steps = torch.tensor([1, 2, 10, 50, 99])
    terms = {key: elbo_terms(_gaussian_denoiser(schedule), x, schedule, decoder=decoder, timesteps=steps,
                             generator=torch.Generator().manual_seed(4))
             for key, x in _same_values(x0).items()}
    reference = terms["B C H W"]
    for key, t in terms.items():
        assert t.prior.shape == t.decoder.shape == (6,) and t.kl.shape == (6, len(steps)) and t.dims == D, key
        assert all(bool(torch.isfinite(v).all()) for v in (t.prior, t.kl, t.decoder)), key
        for field in ("prior", "kl", "decoder"):
            assert torch.equal(getattr(t, field), getattr(reference, field)), (key, field)
