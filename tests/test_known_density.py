"""The known-density check: on a 2-D Gaussian mixture the trained model's bound lies above the
true entropy and within 0.05 nats of it after the shipped budget; plus the mixture's exact
density, its exact denoiser, the MLP and `difflab train` on mixture data."""

from __future__ import annotations

import math

import pytest
import torch

from difflab import io
from difflab.analytic import gaussian_denoiser
from difflab.cli import main
from difflab.config import load_config
from difflab.data.mixture import GaussianMixture, load_mixture, mixture_denoiser
from difflab.denoisers import NetworkDenoiser
from difflab.errors import UserError
from difflab.models.mlp import ResidualMLP
from difflab.schedules import make_schedule, schedule_from_config
from difflab.tasks import build_task
from difflab.evaluate.known_density import BoundCheck, bound_vs_entropy, exact_floor
from difflab.tasks.toy2d import Toy2DTask, load_toy_denoiser
from difflab.train import train

from conftest import ROOT

CONFIG = ROOT / "configs" / "mixture2d.yaml"
TOLERANCE = 0.05  # nats: the acceptance criterion of issue 3
SE_MARGIN = 3.0  # "above the entropy" allows this many standard errors of the estimate
BUDGET_FRACTIONS = (0.1, 0.3, 1.0)  # checkpoints of the shipped run at which the bound is measured
# likelihood.py's Gaussian decoder uses sigma_1^2 = beta_tilde at index 1 (iDDPM's "clipped"
# choice, made for 8-bit images); for continuous data the posterior of x_0 has variance
# beta at index 0, about twice that, which puts even the exact denoiser's bound ~0.1 nats per
# dimension above H (measured 0.21 nats here). Remove this marker when the decoder uses beta_0.

@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return load_mixture("mixture2d")


# -- the mixture ------------------------------------------------------------------------------
def test_density_integrates_to_one(mixture):
    points, area = mixture.grid()
    assert abs(float(mixture.log_prob(points).exp().sum() * area) - 1) < 1e-9


def test_log_prob_matches_the_direct_formula(mixture):
    """log p against sum_k w_k exp(-|x - mu_k|^2 / (2 s_k^2)) / (2 pi s_k^2), written out, float64."""
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    direct = torch.zeros(64, dtype=torch.float64)
    for w, mu, s in zip(mixture.weights, mixture.means, mixture.stds):
        direct += w * torch.exp(-((x - mu) ** 2).sum(1) / (2 * s ** 2)) / (2 * math.pi * s ** 2)
    torch.testing.assert_close(mixture.log_prob(x), direct.log(), rtol=0, atol=1e-12)


def test_entropy_is_converged_and_agrees_with_monte_carlo(mixture):
    """Halving the grid step moves H by < 1e-6; a 200k-sample MC estimate agrees within 4 SE."""
    H = mixture.entropy()
    assert abs(mixture.entropy(step=0.01) - H) < 1e-6
    neg_log_p = -mixture.log_prob(mixture.sample(200_000, torch.Generator().manual_seed(1)))
    se = float(neg_log_p.std()) / math.sqrt(len(neg_log_p))
    assert abs(float(neg_log_p.mean()) - H) < 4 * se, (H, float(neg_log_p.mean()), se)


def test_samples_have_the_mixture_moments(mixture):
    x = mixture.sample(200_000, torch.Generator().manual_seed(2)).double()
    mean = mixture.weights @ mixture.means
    torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=0.01)
    torch.testing.assert_close(x.var(0), mixture.variance(), rtol=0.02, atol=0)


def test_one_component_denoiser_equals_the_gaussian_one():
    """With K = 1 the mixture denoiser is the exact Gaussian denoiser of difflab.analytic."""
    mean, s = torch.tensor([[0.3, -0.2]], dtype=torch.float64), 0.7
    single = GaussianMixture(torch.ones(1, dtype=torch.float64), mean, torch.tensor([s], dtype=torch.float64))
    schedule = make_schedule("linear", 1000)
    x_t = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.linspace(0, 999, 16, dtype=torch.float64)
    expected = gaussian_denoiser(mean[0], s ** 2 * torch.eye(2, dtype=torch.float64), schedule)(x_t, t)
    torch.testing.assert_close(mixture_denoiser(single, schedule)(x_t, t), expected)


def test_unknown_mixture_is_a_user_error():
    with pytest.raises(UserError, match="unknown mixture 'rings'"):
        load_mixture("rings")


# -- the network ------------------------------------------------------------------------------
def test_mlp_shapes_and_identity_blocks():
    net = ResidualMLP(2, width=16, num_blocks=2)
    x, t = torch.randn(5, 2), torch.tensor([0.0, 1.5, 10.0, 500.0, 999.0])
    assert net(x, t).shape == (5, 2)
    h = torch.randn(5, 16)
    assert torch.equal(net.blocks[0](h, net.time_embed(t)), h)  # zero-initialised last layer
    denoiser = NetworkDenoiser(net, make_schedule("linear", 1000), "eps")
    assert denoiser(x.double(), t.double(), None).shape == (5, 2)


# -- the bound ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory: pytest.TempPathFactory, mixture: GaussianMixture) -> list[BoundCheck]:
    """Train configs/mixture2d.yaml once; its bound at 10%, 30% and 100% of the budget."""
    cfg = load_config(CONFIG)
    run = tmp_path_factory.mktemp("mixture2d") / "run"
    train(Toy2DTask(cfg), run, progress=False)
    schedule = schedule_from_config(cfg.diffusion)
    floor = exact_floor(mixture, schedule)
    every = cfg.train.checkpoint_every
    steps = {round(f * cfg.train.max_steps / every) * every for f in BUDGET_FRACTIONS}
    ckpts = [c for c in io.list_checkpoints(run) if io.load_state(c)["step"] in steps]
    assert len(ckpts) == len(BUDGET_FRACTIONS), io.list_checkpoints(run)
    return [bound_vs_entropy(load_toy_denoiser(run, c)[1], mixture, schedule, floor=floor) for c in ckpts]


def test_exact_denoiser_bound_is_above_the_entropy(mixture):
    """E[-ELBO] of the exact E[x_0 | x_t] is >= H (it is a model too), up to its standard error."""
    cfg = load_config(CONFIG)
    floor = exact_floor(mixture, schedule_from_config(cfg.diffusion), n=8192)
    assert floor.mean >= -SE_MARGIN * floor.se, floor


@pytest.mark.slow
def test_trained_bound_falls_and_stays_above_the_entropy(shipped_run):
    """Over training the bound falls towards H, never below it; the network adds < 0.05 nats to the exact floor."""
    gaps = [check.gap for check in shipped_run]
    assert gaps[0] > gaps[1] > gaps[2], gaps
    for check in shipped_run:
        assert check.bound >= check.entropy - SE_MARGIN * check.gap_se, check
        assert check.excess.mean >= -SE_MARGIN * check.excess.se, check  # no network beats E[x_0 | x_t]
    assert shipped_run[-1].excess.mean < TOLERANCE, shipped_run[-1]


@pytest.mark.slow
def test_trained_bound_is_within_tolerance_of_the_entropy(shipped_run):
    """Issue 3's acceptance: after the shipped budget, bound - H < 0.05 nats."""
    assert shipped_run[-1].gap < TOLERANCE, shipped_run[-1]


def test_cli_trains_on_the_mixture(tmp_path):
    assert main(["train", str(CONFIG), "--out", str(tmp_path / "run"), "--no-progress", "--max-steps", "3"]) == 0
    assert io.read_run_config(tmp_path / "run").data.name == "mixture2d"
    assert isinstance(build_task(load_config(CONFIG)), Toy2DTask)
    load_toy_denoiser(tmp_path / "run")
