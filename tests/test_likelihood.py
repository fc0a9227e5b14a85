"""The variational bound (ELBO): its Gaussian pieces, exactness on Gaussian data, estimators, images.

Gaussian data x_0 ~ N(m, Sigma_0) has an exact denoiser E[x_0 | x_t] (:mod:`difflab.analytic`),
and with it every term of the bound has a closed form: the step terms need
E||x_0 - E[x_0 | x_t]||^2 = tr Cov[x_0 | x_t] = sum_j s_j^2 (1 - ab) / (ab s_j^2 + 1 - ab)
(s_j^2 the eigenvalues of Sigma_0, ab = alpha_bar_t), the prior and the Gaussian decoder are
Gaussian integrals. Those closed forms are written out below, independently of the module.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Normal, kl_divergence

from difflab.analytic import gaussian_denoiser
from difflab.config import Config, DataConfig, DiffusionConfig, ModelConfig
from difflab.data.digits import load_digits_dataset
from difflab.denoisers import NetworkDenoiser, eps_from_x0, prediction_target
from difflab.errors import UserError
from difflab.evaluate.likelihood import (discretized_gaussian_log_likelihood, elbo_terms, gaussian_log_likelihood,
                                         head_and_strata, image_nll, normal_kl, strata_edges,
                                         stratified_timesteps)
from difflab.schedules import Schedule, make_schedule
from difflab.tasks.image import build_unet

F64 = torch.float64
MEAN = torch.tensor([0.3, -0.2], dtype=F64)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64)  # eigenvalues about 0.19 and 0.61


class Spy:
    """A denoiser that records the x_t it is called with, keyed by its (shared) time index."""

    def __init__(self, denoiser):
        self.denoiser, self.x_t = denoiser, {}

    def __call__(self, x_t, t, cond=None):
        assert bool((t == t[0]).all()), "these tests evaluate one time per call"
        self.x_t[int(t[0])] = x_t.clone()
        return self.denoiser(x_t, t, cond)


def _gaussian_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 = m + L z with L L^T = Sigma_0; returns (x0, z), both (n, 2)."""
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return MEAN + z @ torch.linalg.cholesky(COV).T, z


# -- the closed form of the bound for Gaussian data (independent of difflab.evaluate) ----------
def _trace_posterior_cov(alpha_bar: float) -> float:
    """tr Cov[x_0 | x_t] for x_0 ~ N(MEAN, COV), alpha_bar = alpha_bar_t."""
    s2 = torch.linalg.eigvalsh(COV)
    return float((s2 * (1 - alpha_bar) / (alpha_bar * s2 + 1 - alpha_bar)).sum())


def closed_form_terms(schedule: Schedule, variance: str) -> tuple[float, torch.Tensor, float]:
    """E[prior], E[step term] at t = 1..T-1 (T-1,), E[decoder] in nats, Gaussian decoder."""
    D, ab, betas = len(MEAN), schedule.alpha_bar.tolist(), schedule.betas.tolist()
    v_T = 1 - ab[-1]
    prior = 0.5 * float((-1 - math.log(v_T) + v_T + ab[-1] * (MEAN ** 2 + COV.diagonal())).sum())
    kl = []
    for t in range(1, schedule.T):
        beta_tilde = (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]
        c_x0 = math.sqrt(ab[t - 1]) * betas[t] / (1 - ab[t])  # weight of x_0 in the posterior mean
        sq_err = c_x0 ** 2 * _trace_posterior_cov(ab[t])  # E||mu_tilde(x_0) - mu_tilde(x0_hat)||^2
        if variance == "beta_tilde":
            kl.append(sq_err / (2 * beta_tilde))
        else:
            ratio = beta_tilde / betas[t]
            kl.append(0.5 * D * (ratio - 1 - math.log(ratio)) + sq_err / (2 * betas[t]))
    sigma2_1 = betas[0]  # the continuous decoder's variance: beta_1 (likelihood._decoder_nll)
    decoder = 0.5 * D * math.log(2 * math.pi * sigma2_1) + _trace_posterior_cov(ab[0]) / (2 * sigma2_1)
    return prior, torch.tensor(kl, dtype=F64), decoder


def gaussian_entropy() -> float:
    """E[-log N(x_0; MEAN, COV)]: the true NLL of the data, nats."""
    D = len(MEAN)
    return 0.5 * (D * math.log(2 * math.pi) + float(torch.logdet(COV)) + D)


def _quadratic_features(u: torch.Tensor) -> torch.Tensor:
    """(B, n) iid N(0, 1) -> (B, F): 1 and every monomial of degree 1-2, centred to mean zero."""
    columns = [torch.ones(len(u), dtype=u.dtype)]
    for i in range(u.shape[1]):
        columns += [u[:, i], u[:, i] ** 2 - 1] + [u[:, i] * u[:, j] for j in range(i + 1, u.shape[1])]
    return torch.stack(columns, dim=1)


def expectation_of_quadratic(y: torch.Tensor, u: torch.Tensor) -> float:
    """E[f(u)], u ~ N(0, I), from samples y = f(u) of a quadratic f: the intercept of a fit.

    A quadratic is exactly a combination of the centred features, so least squares recovers it
    without residual (checked) and its intercept is the expectation: no Monte-Carlo error.
    """
    X = _quadratic_features(u)
    coef = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
    residual = (X @ coef - y).abs().max()
    assert residual < 1e-8 * (1 + y.abs().max()), f"not a quadratic of the noise: residual {residual:.3g}"
    return float(coef[0])


# -- Gaussian helpers ---------------------------------------------------------------------------
def test_normal_kl_and_gaussian_log_likelihood_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2, x = (torch.randn(50, generator=g, dtype=F64) for _ in range(5))
    p, q = Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp())
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), kl_divergence(p, q), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gaussian_log_likelihood(x, m1, lv1), p.log_prob(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mean, std", [(0.0, 0.01), (0.37, 0.003), (-0.9, 0.5), (1.4, 0.2), (0.0, 5.0),
                                       (-1.0, 1e-4)])
def test_discretized_likelihood_sums_to_one_and_matches_cdf_differences(mean, std):
    x = torch.arange(256, dtype=F64) / 127.5 - 1  # every 8-bit value
    log_p = discretized_gaussian_log_likelihood(x, torch.tensor(mean, dtype=F64),
                                                torch.tensor(2 * math.log(std), dtype=F64))
    assert torch.isfinite(log_p).all()
    assert abs(float(log_p.exp().sum()) - 1) < 1e-12
    # direct: Phi(upper edge) - Phi(lower edge), edges at +-1/255, outer bins open (scipy's CDF)
    edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 127.5 - 1, [np.inf]])
    lo, hi = edges[:-1], edges[1:]
    # the difference taken on the side of the mean where it does not cancel: sf above, cdf below
    direct = torch.from_numpy(np.where(lo > mean, stats.norm.sf(lo, mean, std) - stats.norm.sf(hi, mean, std),
                                       stats.norm.cdf(hi, mean, std) - stats.norm.cdf(lo, mean, std)))
    big = direct > 1e-250
    torch.testing.assert_close(log_p.exp(), direct, rtol=1e-9, atol=1e-300)
    torch.testing.assert_close(log_p[big], direct[big].log(), rtol=1e-9, atol=1e-9)


def test_discretized_likelihood_is_stable_far_in_the_tails():
    """Bins hundreds of standard deviations from the mean: log-probabilities from the tail asymptotes."""
    std = 1e-3
    x = torch.tensor([-1.0, -0.5, 0.5, 1.0], dtype=F64)
    log_p = discretized_gaussian_log_likelihood(x, torch.tensor(0.0, dtype=F64),
                                                torch.tensor(2 * math.log(std), dtype=F64))
    a, b = (x.numpy() - 1 / 255) / std, (x.numpy() + 1 / 255) / std  # standardised bin edges

    def log_mass(lo: float, hi: float) -> float:  # log(Phi(hi) - Phi(lo)), in the tail it lies in
        if lo > 0:
            return stats.norm.logsf(lo) + np.log1p(-np.exp(stats.norm.logsf(hi) - stats.norm.logsf(lo)))
        return stats.norm.logcdf(hi) + np.log1p(-np.exp(stats.norm.logcdf(lo) - stats.norm.logcdf(hi)))

    expected = [stats.norm.logcdf(b[0]), log_mass(a[1], b[1]), log_mass(a[2], b[2]), stats.norm.logsf(a[3])]
    assert torch.isfinite(log_p).all() and log_p.max() < -1e5
    torch.testing.assert_close(log_p, torch.tensor(expected, dtype=F64), rtol=1e-9, atol=0)


# -- each term of the bound -----------------------------------------------------------------------
@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_step_terms_equal_monte_carlo_kl(variance):
    """KL(q || p) = E_q[log q - log p], x_{t-1} ~ q(x_{t-1} | x_t, x_0), for a deliberately wrong denoiser."""
    schedule = make_schedule("linear", 100)
    spy = Spy(gaussian_denoiser(MEAN + 0.3, 1.5 * COV, schedule))  # not E[x0|x_t]: KLs well above 0
    x0, _ = _gaussian_data(3, seed=1)
    timesteps = torch.tensor([1, 2, 10, 50, 99])
    terms = elbo_terms(spy, x0, schedule, variance=variance, decoder="gaussian", timesteps=timesteps,
                       generator=torch.Generator().manual_seed(2))
    g, n = torch.Generator().manual_seed(3), 100_000
    for k, t in enumerate(timesteps.tolist()):
        ab, ab_prev, beta = (float(v) for v in (schedule.alpha_bar[t], schedule.alpha_bar[t - 1], schedule.betas[t]))
        x_t = spy.x_t[t]
        coef_x0, coef_xt = math.sqrt(ab_prev) * beta / (1 - ab), math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        x0_hat = spy.denoiser(x_t, torch.full((3,), float(t), dtype=F64))
        beta_tilde = (1 - ab_prev) / (1 - ab) * beta
        q = Normal(coef_x0 * x0 + coef_xt * x_t, math.sqrt(beta_tilde))
        p = Normal(coef_x0 * x0_hat + coef_xt * x_t, math.sqrt(beta_tilde if variance == "beta_tilde" else beta))
        x_prev = q.mean + q.stddev * torch.randn(n, 3, 2, generator=g, dtype=F64)  # (n, B, D) ~ q
        log_ratio = (q.log_prob(x_prev) - p.log_prob(x_prev)).sum(-1)  # (n, B)
        mc, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
        assert ((terms.kl[:, k] - mc).abs() <= 5 * stderr + 1e-12).all(), (t, terms.kl[:, k], mc, stderr)
        assert (terms.kl[:, k] > 0).all()


def expected_terms(schedule: Schedule, variance: str, seed: int) -> tuple[float, torch.Tensor, float]:
    """E[prior], E[step terms] (T-1,), E[decoder] of elbo_terms with the exact denoiser, without MC error.

    With the exact (linear) denoiser and the Gaussian decoder, every term is a quadratic in the
    standard normals (z of x_0 = m + L z, and the noise eps_t of its x_t), so its expectation is
    recovered exactly from 256 samples (:func:`expectation_of_quadratic`); a plain average of
    the 256 totals would instead carry a standard error of 0.1 to 0.25 nats.
    """
    spy = Spy(gaussian_denoiser(MEAN, COV, schedule))
    x0, z = _gaussian_data(256, seed=seed)
    terms = elbo_terms(spy, x0, schedule, variance=variance, decoder="gaussian",
                       generator=torch.Generator().manual_seed(seed + 1))

    def eps(t: int) -> torch.Tensor:  # the noise of the x_t that elbo_terms drew: (B, 2)
        ab = float(schedule.alpha_bar[t])
        return (spy.x_t[t] - math.sqrt(ab) * x0) / math.sqrt(1 - ab)

    kl = [expectation_of_quadratic(terms.kl[:, k], torch.cat([z, eps(t)], 1))
          for k, t in enumerate(terms.timesteps.tolist())]
    return (expectation_of_quadratic(terms.prior, z), torch.tensor(kl, dtype=F64),
            expectation_of_quadratic(terms.decoder, torch.cat([z, eps(0)], 1)))


@pytest.mark.parametrize("name, T", [("linear", 100), ("cosine", 60)])
@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_bound_with_the_exact_denoiser_equals_its_closed_form(name, T, variance):
    """E[each term] over data and noise equals the closed form: tolerance 1e-6 nats, no MC error."""
    schedule = make_schedule(name, T)
    prior, kl, decoder = closed_form_terms(schedule, variance)
    expected_prior, expected_kl, expected_decoder = expected_terms(schedule, variance, seed=4)
    assert abs(expected_prior - prior) < 1e-6
    assert abs(expected_decoder - decoder) < 1e-6
    torch.testing.assert_close(expected_kl, kl, rtol=1e-7, atol=1e-9)
    assert abs(float(expected_kl.sum()) - float(kl.sum())) < 1e-6


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_bound_exceeds_the_true_nll_of_gaussian_data(variance):
    """E[bound] >= E[-log p_data(x_0)] (the entropy): closed form, exact expectation, plain average.

    With the exact denoiser and sigma^2 = beta the bound is nearly tight (the margin shrinks
    with T: the closed form's gap is checked positive and, at T = 1000, below 0.05 nats); with
    beta_tilde it stays well above. The plain average of 20,000 samples (standard error about
    0.014 nats) is checked to agree with the closed form and not to fall below the entropy.
    """
    entropy = gaussian_entropy()
    gaps = {}
    for T in (40, 100, 1000):  # (linear T = 20 would end at beta = 1, alpha_bar = 0)
        prior, kl, decoder = closed_form_terms(make_schedule("linear", T), variance)
        gaps[T] = prior + float(kl.sum()) + decoder - entropy
        assert gaps[T] > 0, (T, gaps[T])
    if variance == "beta":
        assert gaps[1000] < 0.05 and gaps[1000] < gaps[100] < gaps[40], gaps
    schedule = make_schedule("linear", 100)
    prior, kl, decoder = expected_terms(schedule, variance, seed=6)
    assert prior + float(kl.sum()) + decoder > entropy
    x0, _ = _gaussian_data(20_000, seed=8)
    total = elbo_terms(gaussian_denoiser(MEAN, COV, schedule), x0, schedule, variance=variance,
                       decoder="gaussian", generator=torch.Generator().manual_seed(9)).total()
    mean, stderr = float(total.mean()), float(total.std()) / math.sqrt(len(total))
    assert abs(mean - (prior + float(kl.sum()) + decoder)) < 4 * stderr
    assert mean > entropy - 4 * stderr


# -- the stratified estimator -----------------------------------------------------------------------
@pytest.mark.parametrize("T, k", [(50, 1), (50, 7), (50, 49), (1000, 64)])
def test_strata_partition_the_steps_and_draws_stay_inside(T, k):
    edges = strata_edges(T, k)
    assert edges[0] == 1 and edges[-1] == T and ((edges[1:] - edges[:-1]) >= 1).all()
    sizes = edges[1:] - edges[:-1]
    assert sizes.max() - sizes.min() <= 1
    steps, weights = stratified_timesteps(T, k, torch.Generator().manual_seed(0), batch=500)
    assert steps.shape == weights.shape == (500, k)
    assert ((steps >= edges[:-1]) & (steps < edges[1:])).all()
    assert (weights == sizes.double()).all() and float(weights[0].sum()) == T - 1
    if k == T - 1:  # one step per stratum: the exact sum
        assert (steps == torch.arange(1, T)).all() and (weights == 1).all()


def test_stratified_estimate_is_unbiased():
    """Over many draws, each index is equally likely within its stratum and the mean estimate is the sum."""
    T, k, draws = 50, 7, 40_000
    f = 1 / torch.arange(1, T, dtype=F64) + torch.sin(torch.arange(1, T, dtype=F64))  # any step-term curve
    steps, weights = stratified_timesteps(T, k, torch.Generator().manual_seed(1), batch=draws)
    estimates = (f[steps - 1] * weights).sum(1)  # (draws,)
    assert abs(float(estimates.mean()) - float(f.sum())) < 4 * float(estimates.std()) / math.sqrt(draws)
    counts = torch.bincount(steps.flatten(), minlength=T)[1:].double()  # (T-1,) draws of each index
    sizes = weights[0].long()  # (k,) stratum sizes
    p = 1 / sizes.repeat_interleave(sizes).double()  # (T-1,) chance of each index per draw
    assert ((counts - draws * p).abs() <= 5 * (draws * p * (1 - p)).sqrt()).all()


def test_exact_head_plus_strata_is_unbiased_and_exact_on_the_head():
    """head_and_strata: steps 1..h with weight 1 in every draw, the rest stratified; mean = the sum."""
    T, h, k, draws = 50, 6, 5, 40_000
    f = 1 / torch.arange(1, T, dtype=F64) + torch.sin(torch.arange(1, T, dtype=F64))
    steps, weights = head_and_strata(T, h, k, torch.Generator().manual_seed(3), batch=draws)
    assert steps.shape == (draws, h + k) and (steps[:, :h] == torch.arange(1, h + 1)).all()
    assert (weights[:, :h] == 1).all() and (steps[:, h:] > h).all() and (steps < T).all()
    assert (weights.sum(1) == T - 1).all()
    estimates = (f[steps - 1] * weights).sum(1)  # (draws,)
    assert abs(float(estimates.mean()) - float(f.sum())) < 4 * float(estimates.std()) / math.sqrt(draws)
    with pytest.raises(UserError, match="exact steps"):
        head_and_strata(T, T - 2, k, None, batch=1)


def test_stratified_bound_matches_the_full_bound_on_gaussian_data():
    """elbo_terms with per-sample stratified steps: its mean over samples is the closed-form bound."""
    schedule = make_schedule("linear", 100)
    x0, _ = _gaussian_data(4000, seed=10)
    g = torch.Generator().manual_seed(11)
    steps, weights = stratified_timesteps(schedule.T, 5, g, batch=len(x0))
    terms = elbo_terms(gaussian_denoiser(MEAN, COV, schedule), x0, schedule, decoder="gaussian",
                       timesteps=steps, weights=weights, generator=g)
    total = terms.total()
    prior, kl, decoder = closed_form_terms(schedule, "beta_tilde")
    stderr = float(total.std()) / math.sqrt(len(total))
    assert abs(float(total.mean()) - (prior + float(kl.sum()) + decoder)) < 4 * stderr


# -- parameterisations ---------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_eps_x0_and_v_networks_give_the_same_bound(prediction):
    """The exact denoiser expressed as an eps / x0 / v network, through NetworkDenoiser."""
    schedule = make_schedule("cosine", 50)
    exact = gaussian_denoiser(MEAN, COV, schedule)

    def net(x_t, t):
        alpha_bar = schedule.alpha_bar_at(t).reshape(-1, 1)  # (B, 1)
        x0_hat = exact(x_t, t)
        eps_hat = eps_from_x0(x_t, x0_hat, alpha_bar)
        return prediction_target(prediction, x0_hat, eps_hat, alpha_bar)

    x0, _ = _gaussian_data(64, seed=12)
    reference = elbo_terms(exact, x0, schedule, decoder="gaussian", generator=torch.Generator().manual_seed(13))
    wrapped = elbo_terms(NetworkDenoiser(net, schedule, prediction), x0, schedule, decoder="gaussian",
                         generator=torch.Generator().manual_seed(13))
    torch.testing.assert_close(wrapped.total(), reference.total(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(wrapped.kl, reference.kl, rtol=1e-8, atol=1e-9)


# -- errors ---------------------------------------------------------------------------------------
def test_bad_names_steps_weights_and_data_raise_user_errors():
    schedule = make_schedule("linear", 20)
    denoiser = gaussian_denoiser(MEAN, COV, schedule)
    x0, _ = _gaussian_data(4, seed=14)
    pixels = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(UserError, match="variance"):
        elbo_terms(denoiser, pixels, schedule, variance="learned")
    with pytest.raises(UserError, match="decoder"):
        elbo_terms(denoiser, pixels, schedule, decoder="logistic")
    with pytest.raises(UserError, match="8-bit"):
        elbo_terms(denoiser, x0, schedule)  # continuous data, discretised decoder
    for bad in (torch.tensor([0, 3]), torch.tensor([20]), torch.tensor([2.5]), torch.zeros(3, 2, dtype=torch.long)):
        with pytest.raises(UserError, match="timesteps"):
            elbo_terms(denoiser, x0, schedule, decoder="gaussian", timesteps=bad)
    with pytest.raises(UserError, match="weights"):
        elbo_terms(denoiser, x0, schedule, decoder="gaussian", timesteps=torch.tensor([1, 2]),
                   weights=torch.ones(3))
    for k in (0, 20):
        with pytest.raises(UserError, match="strata"):
            stratified_timesteps(20, k)


# -- trained image models (smoke) -----------------------------------------------------------------
def _tiny_run(num_classes: int, T: int = 40) -> tuple[Config, torch.nn.Module]:
    """A random UNet; its zero-initialised output layers perturbed so that it depends on its inputs."""
    cfg = Config(data=DataConfig(name="digits", channels=1, resolution=8),
                 model=ModelConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                                   num_heads=2, num_classes=num_classes),
                 diffusion=DiffusionConfig(timesteps=T))
    torch.manual_seed(0)
    model = build_unet(cfg, 1).eval().requires_grad_(False)
    for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))
    return cfg, model


@pytest.mark.parametrize("strata", [None, 5])
def test_image_nll_on_a_random_unet_returns_consistent_finite_numbers(strata):
    cfg, model = _tiny_run(num_classes=0)
    data = load_digits_dataset(split="test")
    out = image_nll(cfg, model, data.images[:6], strata=strata, exact_head=4, batch_size=4, progress=False)
    assert set(out) == {"bpd", "bpd_stderr", "n", "prior_bpd", "decoder_bpd", "t", "kl_bpd", "variance", "strata",
                        "exact_head"}
    assert out["n"] == 6 and out["variance"] == cfg.sample.variance and out["strata"] == strata
    K = 39 if strata is None else 4 + strata  # with strata: steps 1..4 exactly, then the strata of 5..39
    if strata is not None:
        assert out["exact_head"] == 4 and out["t"][:4] == [1, 2, 3, 4] and out["t"][4] > 4
    assert len(out["t"]) == len(out["kl_bpd"]) == K
    values = [out["bpd"], out["bpd_stderr"], out["prior_bpd"], out["decoder_bpd"], *out["kl_bpd"]]
    assert all(math.isfinite(v) for v in values) and out["bpd"] > 0
    if strata is None:  # the bound is the sum of its mean terms
        assert out["t"] == list(range(1, 40))
        total = out["prior_bpd"] + out["decoder_bpd"] + sum(out["kl_bpd"])
        assert abs(out["bpd"] - total) < 1e-6 * out["bpd"]


def test_image_nll_class_conditional_with_and_without_labels():
    cfg, model = _tiny_run(num_classes=10)
    data = load_digits_dataset(split="test")
    conditional = image_nll(cfg, model, data.images[:4], labels=data.labels[:4], strata=3, variance="beta",
                            progress=False)
    unconditional = image_nll(cfg, model, data.images[:4], strata=3, variance="beta", progress=False)
    assert math.isfinite(conditional["bpd"]) and math.isfinite(unconditional["bpd"])
    assert conditional["bpd"] != unconditional["bpd"]  # the labels reach the network
    with pytest.raises(UserError, match="unconditional"):
        image_nll(_tiny_run(num_classes=0)[0], model, data.images[:4], labels=data.labels[:4], progress=False)
    with pytest.raises(UserError, match="uint8"):
        image_nll(cfg, model, data.images[:4].float(), progress=False)
