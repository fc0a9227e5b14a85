"""Kernel Inception Distance (KID): the unbiased MMD^2 between two feature sets, averaged over subsets.

Notation (Binkowski et al. 2018, https://arxiv.org/abs/1801.01401, section 3 and appendix D)::

    x_i, y_j     features (D,) of real images i = 1..m and generated images j = 1..n
    k(x, y)      (x . y / D + 1)^3, the cubic polynomial kernel
    MMD^2_u      sum_{i != i'} k(x_i, x_i') / (m (m - 1)) + sum_{j != j'} k(y_j, y_j') / (n (n - 1))
                 - 2 sum_{i, j} k(x_i, y_j) / (m n)          (an unbiased estimator: it can be < 0)
    KID          the mean of MMD^2_u over random subsets of both sets

Unlike FID, the estimator is unbiased at every sample count, so KIDs at different N compare; its
spread over subsets (``std``) says how much a single subset's value varies. The subsets are drawn
as torch-fidelity draws them (``np.random.RandomState(seed)``, for each subset first the real
indices, then the generated ones, without replacement), with the same defaults (100 subsets of
``min(1000, N)`` features); where both sets have at least ``subset_size`` features the mean and
std are torch-fidelity's.

Small sets. torch-fidelity refuses sets smaller than the subset size; difflab caps the subset at
the smaller set instead, which makes every subset of two sets of N <= 1000 the whole of both
(a permutation: MMD^2_u does not change), so the 100 "subsets" are one. Their std is then 0
plus rounding (what torchmetrics reports given subset_size = N), which is not a spread but an
artefact, so :func:`kid_from_features` returns it as None (as it does for ``subsets=1``) and
the value as MMD^2_u of the whole sets, computed once. Smaller subsets (say N / 2) would give a
spread, but of a half-size estimate with twice the variance, not of the value reported, and the
mean would no longer be the best estimate from the N features at hand. Where one set is larger
than the subset, the std is computed, but it counts only the subsampled side(s) and shrinks as
the subsets overlap more (each pair of subsets of m from N shares m^2 / N features on average);
:func:`kid_note` says so below :data:`INDEPENDENT_RATIO` times the subset size.
"""

from __future__ import annotations

import math

import numpy as np
from tqdm.auto import tqdm

KERNEL_DEGREE = 3  # k(x, y) = (x . y / D + KERNEL_COEF)^KERNEL_DEGREE (Binkowski et al., eq. 8)
KERNEL_COEF = 1.0
DEFAULT_SUBSETS = 100  # torch-fidelity's defaults
DEFAULT_SUBSET_SIZE = 1000
KERNEL_CHUNK = 1024  # rows of each block of a whole-set kernel matrix (see _subset_mmds_blocked)
INDEPENDENT_RATIO = 2  # below this many times the subset size, subsets share over half their features


def _cube(u: np.ndarray) -> np.ndarray:
    """u ** KERNEL_DEGREE by repeated in-place products (5x faster than np.power's general path)."""
    out = u.copy()
    for _ in range(KERNEL_DEGREE - 1):
        out *= u
    return out


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The cubic kernel matrix ``(x y^T / D + 1)^3`` (M, N) of features x (M, D) and y (N, D)."""
    D = x.shape[1]
    return _cube(x @ y.T / D + KERNEL_COEF)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimator MMD^2_u of features x (m, D) and y (n, D), m, n >= 2 (see the module doc)."""
    m, n = len(x), len(y)
    k_xx, k_yy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))  # the diagonal k(x_i, x_i) is left out
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * polynomial_kernel(x, y).sum() / (m * n))


def _as_features(name: str, f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"KID needs {name} features (N, D) with N >= 2, got shape {f.shape}")
    return f


def capped_subset_size(n_real: int, n_fake: int, subset_size: int = DEFAULT_SUBSET_SIZE) -> int:
    """The features in each KID subset: ``subset_size``, capped at the smaller set."""
    return min(subset_size, n_real, n_fake)


def kid_subset_indices(n_real: int, n_fake: int, *, subsets: int = DEFAULT_SUBSETS,
                       subset_size: int = DEFAULT_SUBSET_SIZE, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (real, fake) index arrays of each KID subset, each of :func:`capped_subset_size` features."""
    m = capped_subset_size(n_real, n_fake, subset_size)
    rng = np.random.RandomState(seed)
    return [(rng.choice(n_real, m, replace=False), rng.choice(n_fake, m, replace=False)) for _ in range(subsets)]


def kid_from_features(real: np.ndarray, fake: np.ndarray, *, subsets: int = DEFAULT_SUBSETS,
                      subset_size: int = DEFAULT_SUBSET_SIZE, seed: int = 0,
                      progress: bool = False) -> tuple[float, float | None]:
    """KID between two feature sets: the mean and spread of MMD^2_u over random subsets.

    Args:
        real, fake: features (N1, D) and (N2, D), N1, N2 >= 2.
        subsets: how many subset pairs to draw.
        subset_size: features per subset; capped at ``min(N1, N2)``.
        seed: the subsets' random draw (see :func:`kid_subset_indices`).
        progress: show a tqdm bar (when the subsets are summed one at a time).

    Returns:
        (mean, std): the mean of MMD^2_u over the subsets and its standard deviation over them
        (population std, as torch-fidelity and torchmetrics report it); std is None where the
        subsets cannot differ (one subset, or every subset the whole of both sets: see the module
        doc), and the mean is then MMD^2_u of that one subset. :func:`kid_standard_error` turns the
        std into the standard error of the mean.
    """
    real, fake = _as_features("real", real), _as_features("generated", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape} vs generated {fake.shape}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    if capped_subset_size(len(real), len(fake), subset_size) == len(real) == len(fake):
        return mmd2_unbiased(real, fake), None  # every subset is a permutation of both whole sets
    draws = kid_subset_indices(len(real), len(fake), subsets=subsets, subset_size=subset_size, seed=seed)
    m, D = len(draws[0][0]), real.shape[1]
    whole_sets_cost = (len(real) ** 2 + len(fake) ** 2 + len(real) * len(fake)) * (D + subsets)
    if whole_sets_cost < 3 * subsets * m * m * D:  # multiply-adds of the two ways
        mmds = _subset_mmds_blocked(real, fake, draws)
    else:
        mmds = _subset_mmds_each(real, fake, draws, progress)
    return float(mmds.mean()), (float(mmds.std()) if subsets > 1 else None)


def kid_note(n_real: int, n_fake: int, *, subsets: int = DEFAULT_SUBSETS,
             subset_size: int = DEFAULT_SUBSET_SIZE) -> str | None:
    """What to print beside a KID of ``n_real`` and ``n_fake`` features when its spread is missing or
    understated (see the module doc), naming the ``--n`` that gives a fuller one; None when neither."""
    m, enough = capped_subset_size(n_real, n_fake, subset_size), INDEPENDENT_RATIO * subset_size
    if m == n_real == n_fake:
        return f"one subset of {m}: no spread; --n {enough} gives one"
    if subsets == 1:
        return f"one subset of {m}: no spread"
    if max(n_real, n_fake) < INDEPENDENT_RATIO * m:
        return (f"subsets of {m} drawn from {max(n_real, n_fake)} overlap mostly: the spread understates; "
                f"--n {enough} or more")
    return None


def _subset_mmds_each(real: np.ndarray, fake: np.ndarray, draws: list[tuple[np.ndarray, np.ndarray]],
                      progress: bool = False) -> np.ndarray:
    """MMD^2_u of each subset (S,), one subset at a time: O(S m^2 D) for S subsets of m."""
    return np.array([mmd2_unbiased(real[i], fake[j])
                     for i, j in tqdm(draws, desc="KID", unit="subset", disable=not progress, leave=False)])


def _indicators(n: int, subsets: list[np.ndarray]) -> np.ndarray:
    """(n, S): 1 where feature i is in subset s, else 0."""
    out = np.zeros((n, len(subsets)))
    for s, idx in enumerate(subsets):
        out[idx, s] = 1.0
    return out


def _subset_kernel_sums(x: np.ndarray, y: np.ndarray, in_x: np.ndarray, in_y: np.ndarray) -> np.ndarray:
    """sum over i in subset s of x and j in subset s of y of k(x_i, y_j), for each s (S,)."""
    sums = np.zeros(in_x.shape[1])
    for start in range(0, len(x), KERNEL_CHUNK):
        k = polynomial_kernel(x[start:start + KERNEL_CHUNK], y)  # (B, Ny)
        sums += ((k @ in_y) * in_x[start:start + KERNEL_CHUNK]).sum(0)  # (B, S) -> (S,)
    return sums


def _subset_mmds_blocked(real: np.ndarray, fake: np.ndarray,
                         draws: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """MMD^2_u of each subset (S,) from the whole sets' kernel matrices, a block of rows at a time:
    O(N^2 (D + S)), far cheaper than :func:`_subset_mmds_each` when N is not much larger than m."""
    m, D = len(draws[0][0]), real.shape[1]
    in_real, in_fake = _indicators(len(real), [i for i, _ in draws]), _indicators(len(fake), [j for _, j in draws])
    self_real = _cube((real * real).sum(1) / D + KERNEL_COEF) @ in_real  # (S,): the left-out k(x_i, x_i)
    self_fake = _cube((fake * fake).sum(1) / D + KERNEL_COEF) @ in_fake
    within = (_subset_kernel_sums(real, real, in_real, in_real) - self_real
              + _subset_kernel_sums(fake, fake, in_fake, in_fake) - self_fake) / (m * (m - 1))
    return within - 2 * _subset_kernel_sums(real, fake, in_real, in_fake) / (m * m)


def kid_standard_error(std: float | None, subsets: int = DEFAULT_SUBSETS) -> float | None:
    """std / sqrt(subsets): the standard error of the mean over subsets (None when std is None).

    The subsets overlap (they are drawn from the same N features), so this understates the
    error of KID as an estimate for the whole distribution; it says how well the subset
    average has converged.
    """
    return None if std is None else std / math.sqrt(subsets)
