"""Discrete diffusion: schedules, forward processes, ELBOs, samplers, Mask-Predict.

The reference is a tiny known distribution p over all V^L = 27 sequences (V = 3, L = 3): its exact denoisers are
computed by enumeration, so the identities of the papers can be checked numerically. The masked NELBO with the
exact denoiser equals -log p(x0) (the any-order autoregressive identity), analytically and by Monte Carlo; every
bound is above the entropy; samplers driven by the exact denoiser reproduce p. Monte Carlo tolerances are a
number of standard errors (Z) of the quantity checked.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from difflab.discrete import (SampleStats, cmlm_loss, draw_counts, draw_times, mask_forward, mask_predict,
                              masked_count_nelbo, masked_marginal, masked_nelbo, remask_count, remask_scores,
                              sample_masked, sample_uniform, subs_log_probs, tempered, token_schedule, uniform_forward,
                              uniform_jump_posterior, uniform_marginal, uniform_nelbo, uniform_posterior)
from difflab.discrete.masked import count_proposal, token_nll
from difflab.discrete.samplers import uniform_grid
from difflab.discrete.uniform import uniform_alpha_bar, uniform_prior_kl, uniform_step_kl
from difflab.errors import UserError

F64 = torch.float64
V, L = 3, 3
MASK = V
Z = 4.0  # standard errors allowed to a Monte Carlo estimate
SCHEDULE_NAMES = ["log-linear", "cosine"]


# -- the tiny known distribution and its exact denoisers ---------------------------------------
def all_sequences(V: int = V, L: int = L) -> torch.Tensor:
    """(V^L, L) every sequence, in the order of its base-V index."""
    return torch.tensor(list(itertools.product(range(V), repeat=L)))


SEQS = all_sequences()


def index_of(x: torch.Tensor) -> torch.Tensor:
    """(B,) base-V index of each sequence of x (B, L): the row of SEQS."""
    return (x * V ** torch.arange(L - 1, -1, -1)).sum(-1)


def tiny_p(seed: int = 0) -> torch.Tensor:
    """(27,) a random distribution with full support and strong correlations between positions."""
    w = torch.exp(1.5 * torch.randn(len(SEQS), generator=torch.Generator().manual_seed(seed), dtype=F64))
    return w / w.sum()


def entropy(p: torch.Tensor) -> float:
    return float(-(p * p.log()).sum())


def position_marginals(w: torch.Tensor) -> torch.Tensor:
    """(B, L, V) per-position marginals of normalised weights w (B, 27) over SEQS."""
    return torch.einsum("bs,slv->blv", w, F.one_hot(SEQS, V).to(F64))


class ExactMasked:
    """The true denoiser of masked diffusion for p: p(x0^i | the unmasked tokens of x_t), logits (B, L, V + 1)."""

    def __init__(self, p: torch.Tensor):
        self.p = p

    def __call__(self, tokens, t, cond):
        match = ((tokens[:, None, :] == SEQS[None]) | (tokens[:, None, :] == MASK)).all(-1)  # (B, 27)
        w = self.p * match
        marginals = position_marginals(w / w.sum(-1, keepdim=True))  # (B, L, V)
        return torch.cat([marginals.log(), torch.zeros_like(marginals[..., :1])], -1)


class ExactUniform:
    """The true denoiser of uniform diffusion for p: p(x0^i | x_k) under the joint, logits (B, L, V)."""

    def __init__(self, p: torch.Tensor, schedule, T: int):
        self.p, self.schedule, self.T = p, schedule, T

    def __call__(self, tokens, t, cond):
        k = torch.round(t.to(F64) * self.T)
        alpha_bar = uniform_alpha_bar(k, self.schedule, self.T)[:, None, None]  # (B, 1, 1)
        match = (tokens[:, None, :] == SEQS[None]).to(F64)  # (B, 27, L)
        likelihood = (alpha_bar * match + (1 - alpha_bar) / V).prod(-1)  # (B, 27): q(x_k | x0)
        w = self.p * likelihood
        return position_marginals(w / w.sum(-1, keepdim=True)).log()


def uniform_logits(v_out: int):
    """A poor denoiser: the same logits everywhere."""
    return lambda tokens, t, cond: torch.zeros(*tokens.shape, v_out, dtype=F64)


def context_free(p: torch.Tensor, v_out: int):
    """A poor denoiser: the marginal of each position under p, ignoring the context."""
    logits = position_marginals(p[None])[0].log()  # (L, V)
    pad = torch.zeros(L, v_out - V, dtype=F64)
    return lambda tokens, t, cond: torch.cat([logits, pad], -1).expand(tokens.shape[0], L, v_out)


def total_variation(samples: torch.Tensor, p: torch.Tensor) -> float:
    freq = torch.bincount(index_of(samples), minlength=len(p)).to(F64) / len(samples)
    return 0.5 * float((freq - p).abs().sum())


def per_sequence_mean(values: torch.Tensor, p: torch.Tensor) -> tuple[float, float]:
    """E_p of a Monte Carlo estimate over rows laid out as SEQS repeated: (estimate, standard error)."""
    v = values.reshape(-1, len(SEQS))  # (R, 27)
    mean, var = v.mean(0), v.var(0)
    return float((p * mean).sum()), float(((p ** 2) * var / v.shape[0]).sum().sqrt())


# -- schedules ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_token_schedule_endpoints_derivative_and_weight(name):
    """alpha(0) = 1, alpha(1) = eps, decreasing; alpha' equals autograd's; weight = -alpha' / (1 - alpha)."""
    schedule = token_schedule(name, eps=1e-3)
    t = torch.linspace(0, 1, 101, dtype=F64, requires_grad=True)
    alpha = schedule.alpha(t)
    assert float(alpha[0].detach()) == pytest.approx(1.0, abs=1e-15)
    assert float(alpha[-1].detach()) == pytest.approx(1e-3, abs=1e-15)
    assert (alpha.diff() < 0).all()
    (grad,) = torch.autograd.grad(alpha.sum(), t)
    assert torch.allclose(schedule.alpha_prime(t.detach()), grad, atol=1e-12)
    s = t.detach()[1:]
    assert torch.allclose(schedule.weight(s), -schedule.alpha_prime(s) / (1 - schedule.alpha(s)), rtol=1e-9)


def test_log_linear_weight_is_one_over_t():
    t = torch.linspace(0.01, 1, 50, dtype=F64)
    assert torch.allclose(token_schedule("log-linear").weight(t), 1 / t, rtol=1e-12)


def test_unknown_token_schedule_raises():
    with pytest.raises(UserError, match="log-linear"):
        token_schedule("quadratic")


def test_draw_times_low_discrepancy():
    """t_i = (u + i / B) mod 1 mapped to [t_min, 1]: sorted, the times are evenly spaced by (1 - t_min) / B."""
    B, t_min = 64, 0.01
    t = draw_times(B, torch.Generator().manual_seed(3), t_min=t_min, dtype=F64)
    assert t.shape == (B,) and (t >= t_min).all() and (t < 1).all()
    assert torch.allclose(t.sort().values.diff(), torch.full((B - 1,), (1 - t_min) / B, dtype=F64), atol=1e-12)


# -- forward processes -------------------------------------------------------------------------
@pytest.mark.parametrize("process", ["masked", "uniform"])
def test_forward_marginals_match_closed_form(process):
    """Empirical frequencies of x_t over many draws equal q(x_t | x0), within Z binomial standard errors."""
    n, vocab = 20_000, 4
    alpha = torch.tensor([0.0, 0.3, 0.7, 0.95], dtype=F64)
    x0 = torch.arange(vocab).unsqueeze(-1).expand(vocab, n)  # (B, n): row b holds token b
    g = torch.Generator().manual_seed(0)
    if process == "masked":
        x_t, expected = mask_forward(x0, alpha, vocab, g), masked_marginal(x0[:, :1], alpha, vocab)[:, 0]
    else:
        x_t, expected = uniform_forward(x0, alpha, vocab, g), uniform_marginal(x0[:, :1], alpha, vocab)[:, 0]
    freq = F.one_hot(x_t, expected.shape[-1]).to(F64).mean(1)  # (B, V_out)
    se = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= Z * se + 1e-12).all()


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_uniform_marginal_is_composed_one_step_matrices(name):
    """onehot(x0) Q_1 .. Q_k with Q_k = a_k I + (1 - a_k) / V 1 1^T equals uniform_marginal at alpha_bar_k."""
    schedule, T, vocab = token_schedule(name), 10, 5
    alpha_bar = uniform_alpha_bar(torch.arange(T + 1), schedule, T)
    x0 = torch.arange(vocab).unsqueeze(0)  # (1, V)
    row = torch.eye(vocab, dtype=F64)  # row x0 of Q_1 .. Q_k
    for k in range(1, T + 1):
        a = alpha_bar[k] / alpha_bar[k - 1]
        row = row @ (a * torch.eye(vocab, dtype=F64) + (1 - a) / vocab)
        assert torch.allclose(uniform_marginal(x0, alpha_bar[k], vocab)[0], row, atol=1e-14)


# -- SUBS --------------------------------------------------------------------------------------
def test_subs_invariants():
    """MASK probability zero, unmasked tokens carried through, rows normalised, no NaN, even with -inf logits."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, V + 1, generator=g, dtype=F64)
    x_t = torch.tensor([[0, MASK, 2, MASK, 1], [MASK, 1, MASK, 0, MASK]])
    logits[0, 1, 0] = float("-inf")  # a masked position with an impossible token
    logits[0, 0, :] = float("-inf")  # an unmasked position whose logits are all -inf
    logits[1, 3, 0] = float("-inf")  # an unmasked position whose own token's logit is -inf
    log_p = subs_log_probs(logits, x_t, MASK)
    assert not log_p.isnan().any()
    assert (log_p[..., MASK] == float("-inf")).all()
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(2, 5, dtype=F64))
    unmasked = x_t != MASK
    assert torch.equal(log_p.exp()[unmasked], F.one_hot(x_t[unmasked], V + 1).to(F64))
    masked = ~unmasked
    assert torch.allclose(log_p[masked][:, :V], logits[masked][:, :V].log_softmax(-1))


def test_subs_gradients_finite_and_zero_at_unmasked():
    logits = torch.randn(2, 4, V + 1, dtype=F64, requires_grad=True)
    x_t = torch.tensor([[0, MASK, 2, MASK], [MASK, 1, MASK, 0]])
    log_p = subs_log_probs(logits, x_t, MASK)
    (grad,) = torch.autograd.grad(log_p[..., :V].clamp_min(-30).sum(), logits)
    assert grad.isfinite().all()
    assert (grad[x_t != MASK] == 0).all() and (grad[..., MASK] == 0).all()


def test_subs_rejects_wrong_vocabulary():
    with pytest.raises(UserError, match="V \\+ 1"):
        subs_log_probs(torch.zeros(1, 2, V), torch.zeros(1, 2, dtype=torch.long), MASK)


# -- the masked ELBO ---------------------------------------------------------------------------
def test_masked_nelbo_analytic_equals_log_likelihood():
    """With the exact denoiser and alpha = 1 - t, NELBO(x0) = sum_M B(|M|, L - |M| + 1) sum_{i in M} -log
    p(x0^i | x0 outside M) (the integral of t^{|M| - 1} (1 - t)^{L - |M|}), and that equals -log p(x0)."""
    p = tiny_p()
    model, nelbo = ExactMasked(p), torch.zeros(len(SEQS), dtype=F64)
    for m in range(1, L + 1):
        beta = math.factorial(m - 1) * math.factorial(L - m) / math.factorial(L)  # B(m, L - m + 1)
        for subset in itertools.combinations(range(L), m):
            masked = torch.zeros(L, dtype=torch.bool)
            masked[list(subset)] = True
            x_t = torch.where(masked, MASK, SEQS)  # (27, L)
            log_p = subs_log_probs(model(x_t, torch.ones(len(SEQS)), None), x_t, MASK)
            nelbo += beta * token_nll(log_p, SEQS)[:, masked].sum(-1)
    assert torch.allclose(nelbo, -p.log(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_masked_nelbo_monte_carlo_equals_log_likelihood(name):
    """The one-sample estimate with the exact denoiser averages to -log p(x0), for any schedule (eps = 0)."""
    p, repeats = tiny_p(), 3000
    x0 = SEQS.repeat(repeats, 1)  # (27 R, L)
    g = torch.Generator().manual_seed(1)
    t = draw_times(len(x0), g, t_min=1e-6, dtype=F64)
    nelbo = masked_nelbo(ExactMasked(p), x0, token_schedule(name, eps=0.0), MASK, generator=g, t=t)
    error = nelbo + p.log()[index_of(x0)]
    assert abs(float(error.mean())) < Z * float(error.std()) / math.sqrt(len(error))


@pytest.mark.parametrize("poor", ["uniform", "context-free"])
def test_masked_nelbo_bounds_poor_denoiser(poor):
    """For denoisers with a known NELBO (L log V; sum_i -log p_i(x0^i)) the estimate agrees, and E_p of it >= H(p)."""
    p, repeats = tiny_p(), 300
    x0 = SEQS.repeat(repeats, 1)
    g = torch.Generator().manual_seed(2)
    if poor == "uniform":
        model, exact = uniform_logits(V + 1), torch.full((len(SEQS),), L * math.log(V), dtype=F64)
    else:
        model = context_free(p, V + 1)
        exact = -position_marginals(p[None])[0].log().gather(-1, SEQS.T).sum(0)  # (27,)
    nelbo = masked_nelbo(model, x0, token_schedule("log-linear", eps=0.0), MASK, generator=g,
                         t=draw_times(len(x0), g, t_min=1e-6, dtype=F64))
    estimate, se = per_sequence_mean(nelbo, p)
    assert abs(estimate - float((p * exact).sum())) < Z * se
    assert estimate >= entropy(p) - Z * se
    assert float((p * exact).sum()) > entropy(p)


def test_draw_counts_cover_one_to_L_evenly():
    """Low-discrepancy counts: a batch of B = r L holds every k in 1 .. L exactly r times; without, k in 1 .. L."""
    for seed in range(5):
        k = draw_counts(3 * 7, 7, torch.Generator().manual_seed(seed))
        assert torch.equal(torch.bincount(k, minlength=8)[1:], torch.full((7,), 3))
    k = draw_counts(1000, 7, torch.Generator().manual_seed(0), antithetic=False)
    assert int(k.min()) == 1 and int(k.max()) == 7
    q = count_proposal(7, 0.5)  # the importance proposal: a batch of B follows q(k) within one count per k
    k = draw_counts(700, 7, torch.Generator().manual_seed(0), gamma=0.5)
    assert (torch.bincount(k, minlength=8)[1:] - 700 * q).abs().max() <= 1
    assert torch.allclose(q, torch.arange(1, 8, dtype=F64) ** -0.5 / (torch.arange(1, 8, dtype=F64) ** -0.5).sum())


def test_masked_count_nelbo_equals_log_likelihood_with_lower_variance():
    """The any-order form (and L times Mask-Predict's CMLM loss) with the exact denoiser averages to -log p(x0);
    for the context-free denoiser it averages to the same known NELBO as MDLM's estimator, with less variance."""
    p, repeats = tiny_p(), 3000
    x0 = SEQS.repeat(repeats, 1)  # (27 R, L)
    g = torch.Generator().manual_seed(3)
    for estimate in (masked_count_nelbo(ExactMasked(p), x0, MASK, generator=g),
                     masked_count_nelbo(ExactMasked(p), x0, MASK, generator=g, gamma=0.5),  # importance-sampled k
                     L * cmlm_loss(ExactMasked(p), x0, MASK, generator=g)):  # Mask-Predict's loss is the same bound
        error = estimate + p.log()[index_of(x0)]
        assert abs(float(error.mean())) < Z * float(error.std()) / math.sqrt(len(error))
    model = context_free(p, V + 1)
    exact = -position_marginals(p[None])[0].log().gather(-1, SEQS.T).sum(0)  # (27,)
    count = masked_count_nelbo(model, x0, MASK, generator=g)
    time = masked_nelbo(model, x0, token_schedule("log-linear", eps=0.0), MASK, generator=g,
                        t=draw_times(len(x0), g, t_min=1e-6, dtype=F64))
    estimate, se = per_sequence_mean(count, p)
    assert abs(estimate - float((p * exact).sum())) < Z * se
    assert float((count - exact[index_of(x0)]).var()) < 0.5 * float((time - exact[index_of(x0)]).var())


def test_cmlm_loss_masks_one_to_L_and_averages():
    """n ~ U{1 .. L} tokens masked, t = n / L passed, the loss is the mean cross-entropy (log V for flat logits)."""
    seen = []

    def model(tokens, t, cond):
        seen.append((tokens.clone(), t.clone()))
        return torch.zeros(*tokens.shape, V + 1)

    L_long, B = 6, 400
    x0 = torch.randint(0, V, (B, L_long), generator=torch.Generator().manual_seed(0))
    loss = cmlm_loss(model, x0, MASK, generator=torch.Generator().manual_seed(1))
    tokens, t = seen[0]
    n = (tokens == MASK).sum(-1)
    assert torch.allclose(loss, torch.full((B,), math.log(V)))
    assert set(n.tolist()) == set(range(1, L_long + 1))
    assert torch.allclose(t, n / L_long)
    assert torch.equal(tokens[tokens != MASK], x0[tokens != MASK])


# -- uniform transitions (D3PM) ----------------------------------------------------------------
def _jump_matrix(alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor, vocab: int) -> torch.Tensor:
    a = alpha_bar_t / alpha_bar_s
    return a * torch.eye(vocab, dtype=F64) + (1 - a) / vocab


def _brute_posterior(x_t, x0_probs, alpha_bar_t, alpha_bar_s, vocab):
    """Bayes with explicit matrices: q(x_s = j | x_t, x0) = Qjump[j, x_t] Qbar_s[x0, j] / Qbar_t[x0, x_t]."""
    jump, bar_s = _jump_matrix(alpha_bar_t, alpha_bar_s, vocab), _jump_matrix(alpha_bar_s, torch.tensor(1.0), vocab)
    bar_t = bar_s @ jump
    q = jump.T[x_t][..., None, :] * bar_s[None, None] / bar_t[:, x_t].permute(1, 2, 0)[..., None]  # (B, L, x0, j)
    return torch.einsum("blx,blxj->blj", x0_probs, q)


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_uniform_posterior_equals_brute_force_bayes(k):
    schedule, T, vocab = token_schedule("cosine"), 10, 4
    x_t = torch.arange(vocab).repeat(2, 1)  # (2, V): every value of x_k
    x0_probs = torch.rand(2, vocab, vocab, generator=torch.Generator().manual_seed(k), dtype=F64).softmax(-1)
    x0_probs[1] = F.one_hot(torch.tensor([0, 3, 1, 1]), vocab).to(F64)  # the true posterior q(x_{k-1} | x_k, x0)
    alpha_bar = uniform_alpha_bar(torch.tensor([k, k - 1]), schedule, T)
    expected = _brute_posterior(x_t, x0_probs, alpha_bar[0], alpha_bar[1], vocab)
    assert torch.allclose(uniform_posterior(x_t, x0_probs, k, schedule, T, vocab), expected, atol=1e-13)
    # a jump k -> j < k - 1 (the sampler's coarse grid)
    j = k // 3
    alpha_bar_j = uniform_alpha_bar(j, schedule, T)
    expected = _brute_posterior(x_t, x0_probs, alpha_bar[0], alpha_bar_j, vocab)
    assert torch.allclose(uniform_jump_posterior(x_t, x0_probs, alpha_bar[0], alpha_bar_j, vocab), expected,
                          atol=1e-13)


def exact_uniform_bound(model, schedule, T: int) -> torch.Tensor:
    """(27,) the D3PM NELBO of every x0, every k and every x_k enumerated (no Monte Carlo)."""
    n = len(SEQS)
    a, k, c = torch.meshgrid(torch.arange(n), torch.arange(1, T + 1), torch.arange(n), indexing="ij")
    x0, x_k, k = SEQS[a.flatten()], SEQS[c.flatten()], k.flatten()  # rows: (x0, k, x_k)
    q = uniform_marginal(x0, uniform_alpha_bar(k, schedule, T), V).gather(-1, x_k.unsqueeze(-1)).squeeze(-1).prod(-1)
    kl = uniform_step_kl(model, x0, x_k, k, schedule, T, V)  # (27 T 27,)
    return uniform_prior_kl(SEQS, schedule, V) + (q * kl).reshape(n, -1).sum(-1)


def test_uniform_nelbo_bounds_entropy():
    """E_p[NELBO] >= H(p) for the exact and a poor denoiser, the exact one lower; the estimator is unbiased."""
    p, schedule, T = tiny_p(), token_schedule("log-linear"), 8
    exact_model = ExactUniform(p, schedule, T)
    bound_exact = float((p * exact_uniform_bound(exact_model, schedule, T)).sum())
    bound_poor = float((p * exact_uniform_bound(uniform_logits(V), schedule, T)).sum())
    assert entropy(p) <= bound_exact < bound_poor
    x0 = SEQS.repeat(2000, 1)
    estimate, se = per_sequence_mean(uniform_nelbo(exact_model, x0, schedule, T, V,
                                                   generator=torch.Generator().manual_seed(0)), p)
    assert abs(estimate - bound_exact) < Z * se


# -- samplers ----------------------------------------------------------------------------------
def test_sample_masked_reproduces_p():
    """With the exact denoiser and steps >> L (one token unmasked a step, nearly always) samples follow p.

    TV 0.010 at 128 steps (the noise floor of 20k draws is about 0.011); 8 steps, which often unmask two tokens
    at once from their separate marginals, give 0.062 and fail."""
    p = tiny_p()
    samples = sample_masked(ExactMasked(p), (20_000, L), token_schedule("log-linear"), 128, MASK,
                            generator=torch.Generator().manual_seed(0), time_conditioned=False)
    assert samples.max() < V and samples.min() >= 0
    assert total_variation(samples, p) < 0.05


def test_sample_masked_cache_saves_calls_same_samples():
    """Caching (time_conditioned=False) calls the network only after a step that changed a token: fewer calls,
    the same samples for the same seed; a time-conditioned network is called every step."""
    model, schedule, steps, shape = ExactMasked(tiny_p()), token_schedule("log-linear"), 64, (4, L)
    runs = {}
    for label, options in {"cache": dict(time_conditioned=False), "no-cache": dict(time_conditioned=False, cache=False),
                           "timed": dict(time_conditioned=True)}.items():
        stats = SampleStats()
        x = sample_masked(model, shape, schedule, steps, MASK, generator=torch.Generator().manual_seed(5),
                          stats=stats, **options)
        runs[label] = (x, stats.model_calls)
    assert runs["cache"][1] <= 1 + shape[0] * L < runs["no-cache"][1]  # the first call, then one a changing step
    assert runs["no-cache"][1] == runs["timed"][1] <= steps  # every step until no mask is left
    assert torch.equal(runs["cache"][0], runs["no-cache"][0]) and torch.equal(runs["cache"][0], runs["timed"][0])


def test_sample_masked_infilling():
    """Fixed prefix and suffix come back exactly; the middle token follows p(x^1 | x^0, x^2)."""
    p, B = tiny_p(), 20_000
    tokens = torch.tensor([2, 0, 1]).expand(B, L)
    mask = torch.tensor([True, False, True]).expand(B, L)
    samples = sample_masked(ExactMasked(p), (B, L), token_schedule("cosine"), 4, MASK, fixed=(mask, tokens),
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples[mask], tokens[mask])
    conditional = p[index_of(torch.tensor([[2, v, 1] for v in range(V)]))]
    conditional = conditional / conditional.sum()
    freq = torch.bincount(samples[:, 1], minlength=V).to(F64) / B
    assert ((freq - conditional).abs() <= Z * (conditional * (1 - conditional) / B).sqrt()).all()


def test_sample_uniform_reproduces_p():
    """With the exact denoiser and T = steps = 50, D3PM's ancestral sampler nearly reproduces p (TV 0.018 here;
    the noise floor of 20k draws is about 0.011)."""
    p, schedule, T = tiny_p(), token_schedule("log-linear"), 50
    stats = SampleStats()
    samples = sample_uniform(ExactUniform(p, schedule, T), (20_000, L), schedule, T, T, V, stats=stats,
                             generator=torch.Generator().manual_seed(0))
    assert stats.model_calls == T and samples.min() >= 0 and samples.max() < V
    assert total_variation(samples, p) < 0.05


def test_sample_uniform_infilling_and_grid():
    p, schedule, T, B = tiny_p(), token_schedule("log-linear"), 50, 64
    mask = torch.rand(B, L, generator=torch.Generator().manual_seed(0)) < 0.5
    tokens = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(1))
    samples = sample_uniform(ExactUniform(p, schedule, T), (B, L), schedule, T, 7, V, fixed=(mask, tokens),
                             generator=torch.Generator().manual_seed(2))
    assert torch.equal(samples[mask], tokens[mask]) and samples.max() < V
    grid = uniform_grid(T, 7)
    assert grid[0] == T and grid[-1] == 0 and all(a > b for a, b in zip(grid, grid[1:]))
    with pytest.raises(UserError, match="steps"):
        uniform_grid(T, T + 1)


def test_sampler_input_errors():
    model, schedule = ExactMasked(tiny_p()), token_schedule("log-linear")
    with pytest.raises(UserError, match="steps"):
        sample_masked(model, (2, L), schedule, 0, MASK)
    with pytest.raises(UserError, match="shape"):
        sample_masked(model, (2, L), schedule, 4, MASK, fixed=(torch.ones(2, L + 1, dtype=torch.bool),
                                                               torch.zeros(2, L + 1, dtype=torch.long)))
    with pytest.raises(UserError, match="data tokens"):
        sample_masked(model, (2, L), schedule, 4, MASK, fixed=(torch.ones(2, L, dtype=torch.bool),
                                                               torch.full((2, L), MASK)))


# -- Mask-Predict ------------------------------------------------------------------------------
def test_tempered_divides_by_the_temperature_and_keeps_the_nucleus():
    p = torch.tensor([[0.15, 0.5, 0.05, 0.3]], dtype=F64)  # sorted: 0.5, 0.3, 0.15, 0.05
    assert torch.equal(tempered(p.log()), p.log())
    assert torch.allclose(tempered(p.log(), 0.5).softmax(-1), p ** 2 / (p ** 2).sum())
    kept = lambda top_p: torch.isfinite(tempered(p.log(), top_p=top_p))[0].tolist()  # noqa: E731
    assert kept(0.79) == [False, True, False, True]  # 0.5 + 0.3 reaches it
    assert kept(0.81) == [True, True, False, True]
    assert kept(1e-9) == [False, True, False, False]
    assert kept(1.0) == [True] * 4
    for bad in ({"temperature": 0.0}, {"top_p": 0.0}, {"top_p": 1.1}):
        with pytest.raises(UserError):
            tempered(p.log(), **bad)


def test_remask_count():
    assert [remask_count(10, k, 10) for k in range(1, 11)] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert [remask_count(8, k, 3) for k in range(1, 4)] == [5, 2, 0]
    with pytest.raises(UserError, match="iteration"):
        remask_count(10, 0, 4)


def test_remask_scores_are_log_confidence_plus_gumbel_noise():
    """tau = 0: the log confidence itself; tau > 0: log p + tau g with g ~ Gumbel(0, 1) (mean Euler's gamma,
    variance pi^2 / 6); +inf (a fixed token) stays +inf."""
    confidence = torch.tensor([[0.5, 0.25, float("inf")]], dtype=torch.float64).expand(20_000, 3)
    assert torch.equal(remask_scores(confidence, 0.0), confidence.log())
    tau = 2.0
    g = (remask_scores(confidence, tau, torch.Generator().manual_seed(0)) - confidence.log())[:, :2] / tau
    assert abs(g.mean().item() - 0.5772) < 0.02 and abs(g.var().item() - math.pi ** 2 / 6) < 0.05
    assert torch.isinf(remask_scores(confidence, tau, torch.Generator().manual_seed(1))[:, 2]).all()


def test_mask_predict_remask_noise_is_random_early_and_by_confidence_late():
    """With MaskGIT's noise the re-masked count per iteration is unchanged, the first re-masking (noise tau)
    picks positions nearly at random though confidence rises with the position, and the last (noise tau / K) by
    confidence once tau / K is small against the log-confidence gaps."""
    B, L_long, K = 400, 8, 4
    seen = []

    def model(tokens, t, cond):  # token 0's logit is 3 * the position: confidence rises with it, by far
        seen.append(tokens.clone())
        logits = torch.zeros(*tokens.shape, V + 1)
        logits[..., 0] = 3.0 * torch.arange(L_long, dtype=torch.float32)
        return logits

    mask_predict(model, (B, L_long), K, MASK, temperature=0.0, remask_noise=40.0,
                 generator=torch.Generator().manual_seed(0))
    counts = [(tokens == MASK).sum(-1).tolist() for tokens in seen]
    assert counts == [[L_long] * B] + [[remask_count(L_long, k, K)] * B for k in range(1, K)]
    first = (seen[1] == MASK).float().mean(0)  # (L,) how often each position was re-masked first
    assert first.min() > 0.5 * first.mean()  # the most confident positions too (by confidence alone: never)
    with pytest.raises(UserError, match="remask noise"):
        mask_predict(model, (1, L_long), K, MASK, remask_noise=-1.0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mask_predict_counts_fixed_and_confidence(temperature):
    """The network sees remask_count masks per iteration (of the free positions), t = fraction masked; the
    re-masked tokens are the least confident; fixed tokens come back exactly; no MASK is left."""
    B, L_long, K = 2, 10, 4
    seen = []
    position = torch.arange(L_long, dtype=torch.float32)

    def model(tokens, t, cond):  # confidence rises with the position: token 0's logit is the position
        seen.append((tokens.clone(), t.clone()))
        logits = torch.zeros(*tokens.shape, V + 1)
        logits[..., 0] = position
        return logits

    mask = torch.zeros(B, L_long, dtype=torch.bool)
    mask[0, :2] = True  # row 0: a fixed prefix of 2
    tokens = torch.full((B, L_long), 2)
    x = mask_predict(model, (B, L_long), K, MASK, fixed=(mask, tokens), temperature=temperature,
                     generator=torch.Generator().manual_seed(0))
    assert len(seen) == K
    free = [L_long - 2, L_long]
    for k, (seen_tokens, t) in enumerate(seen, start=1):
        n = (seen_tokens == MASK).sum(-1)
        expected = free if k == 1 else [remask_count(m, k - 1, K) for m in free]
        assert n.tolist() == expected
        assert torch.allclose(t, n / L_long)
        if k > 1 and temperature == 0:  # the least confident: the first free positions
            for b in range(B):
                start = L_long - free[b]
                assert (seen_tokens[b] == MASK).nonzero().flatten().tolist() == list(range(start, start + n[b]))
    assert torch.equal(x[mask], tokens[mask]) and (x != MASK).all() and x.max() < V
