"""Precision, recall, density and coverage of generated features against real ones, by k-NN balls.

Notation (Kynkaanniemi et al. 2019, https://arxiv.org/abs/1904.06991, eq. 1-3; Naeem et al. 2020,
https://arxiv.org/abs/2002.09797, eq. 1-4)::

    X_i, Y_j      real features i = 1..N and generated features j = 1..M (D,)
    NND_k(X_i)    distance from X_i to its k-th nearest neighbour among the other real features
    B(X_i)        the ball around X_i of radius NND_k(X_i)
    precision     the fraction of Y_j inside at least one real ball    (fidelity)
    recall        the fraction of X_i inside at least one generated ball B(Y_j) (diversity)
    density       (1 / k M) sum_j #{i : Y_j in B(X_i)}                 (fidelity, counts overlaps)
    coverage      the fraction of X_i whose ball holds at least one Y_j   (diversity)

Membership is strict (distance < radius), as in the reference package ``prdc`` of Naeem et al.,
with which :func:`prdc_from_features` agrees. Two samples of one distribution give precision and
recall a little below 1, density about 1 and coverage about ``1 - 2^-k`` (0.97 for k = 5), not 1.

Small sets. Each ball holds the k nearest of the N - 1 other features, a fraction k / (N - 1) of
the set, so at small N the balls are wide and all four figures read high: for 128-D Gaussians
shifted by 0.3 per coordinate (mean of 5 draws) coverage measured 1.00 at N = 6 and 10, 0.97 at 20,
0.92 at 50 and 0.70 at 4000, precision 0.97 at N = 6 against 0.49 at 4000. Below
:data:`FEW_PER_K` k features (50 for k = 5) :func:`prdc_note` says so; above it the values still
drift with N (like FID), so compare them only at equal N. N <= k leaves no k-th neighbour: an error.

Distances are computed in row blocks of ``chunk_size`` features, so memory stays at
``chunk_size x max(N, M)`` instead of ``N x M``; ``max_samples`` caps N and M by fixed random
subsets for large sets (the time is O(N M D)).
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

DEFAULT_K = 5  # nearest neighbours (Naeem et al. recommend k = 5)
DEFAULT_CHUNK = 1024  # rows of each block of pairwise distances
SUBSET_SEED = 0  # which features a max_samples cap keeps
FEW_PER_K = 10  # below FEW_PER_K * k features each ball spans over a tenth of the set (see prdc_note)


def pairwise_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances (M, N) between the rows of x (M, D) and y (N, D), in float64."""
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * (x @ y.T)  # (M, N)
    return np.sqrt(np.maximum(sq, 0.0))


def _blocks(n: int, chunk_size: int, desc: str, progress: bool):
    """(start, stop) of the row blocks, with a tqdm bar counting features."""
    bar = tqdm(total=n, desc=desc, unit="feature", disable=not progress, leave=False)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        yield start, stop
        bar.update(stop - start)
    bar.close()


def nearest_neighbour_radii(features: np.ndarray, k: int = DEFAULT_K, *, chunk_size: int = DEFAULT_CHUNK,
                            progress: bool = False) -> np.ndarray:
    """NND_k of each feature (N,): the distance to its k-th nearest neighbour among the others.

    The distance to itself (0) is the smallest of each row, so NND_k is the (k + 1)-th smallest.
    """
    radii = np.empty(len(features))
    for start, stop in _blocks(len(features), chunk_size, "k-NN radii", progress):
        d = pairwise_distances(features[start:stop], features)  # (B, N)
        radii[start:stop] = np.partition(d, k, axis=1)[:, k]
    return radii


def _cap(features: np.ndarray, max_samples: int | None) -> np.ndarray:
    """A fixed random subset of ``max_samples`` rows (in their order), or all of them."""
    if max_samples is None or len(features) <= max_samples:
        return features
    idx = np.sort(np.random.default_rng(SUBSET_SEED).choice(len(features), size=max_samples, replace=False))
    return features[idx]


def prdc_from_features(real: np.ndarray, fake: np.ndarray, *, k: int = DEFAULT_K, max_samples: int | None = None,
                       chunk_size: int = DEFAULT_CHUNK, progress: bool = False) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` (see the module doc).

    Args:
        real, fake: features (N, D) and (M, D), each with more than k rows.
        k: the nearest neighbour that sets each ball's radius.
        max_samples: keep a fixed random subset (:data:`SUBSET_SEED`) of at most this many rows
            of each set (None = all).
        chunk_size: rows per block of pairwise distances (memory ``chunk_size x max(N, M)``).
        progress: show tqdm bars.

    Returns:
        {"precision", "recall", "density", "coverage"} as floats.
    """
    real = _cap(np.asarray(real, dtype=np.float64), max_samples)
    fake = _cap(np.asarray(fake, dtype=np.float64), max_samples)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need features (N, D) and (M, D), got {real.shape} and {fake.shape}")
    if k < 1 or min(len(real), len(fake)) <= k:
        raise ValueError(f"k-NN balls need 1 <= k < N and M, got k={k}, N={len(real)}, M={len(fake)}")
    real_radii = nearest_neighbour_radii(real, k, chunk_size=chunk_size, progress=progress)  # (N,)
    fake_radii = nearest_neighbour_radii(fake, k, chunk_size=chunk_size, progress=progress)  # (M,)
    balls_holding = np.zeros(len(fake), dtype=np.int64)  # #{i : Y_j in B(X_i)} for each j
    recalled = np.zeros(len(real), dtype=bool)
    covered = np.zeros(len(real), dtype=bool)
    for start, stop in _blocks(len(real), chunk_size, "PRDC", progress):
        d = pairwise_distances(real[start:stop], fake)  # (B, M)
        inside = d < real_radii[start:stop, None]  # (B, M): Y_j in B(X_i)
        balls_holding += inside.sum(0)
        recalled[start:stop] = (d < fake_radii[None, :]).any(1)  # X_i in some B(Y_j)
        covered[start:stop] = inside.any(1)
    return {"precision": float((balls_holding > 0).mean()), "recall": float(recalled.mean()),
            "density": float(balls_holding.mean() / k), "coverage": float(covered.mean())}


def prdc_note(n_real: int, n_fake: int, k: int = DEFAULT_K) -> str | None:
    """What to print beside precision, recall, density and coverage of ``n_real`` and ``n_fake`` features
    when the k-NN balls are too wide to mean much (fewer than :data:`FEW_PER_K` k, see the module doc)."""
    n = min(n_real, n_fake)
    if n >= FEW_PER_K * k:
        return None
    return (f"only {n} images for k={k} balls: each spans {k} of the other {n - 1}, so precision, recall, "
            f"density and coverage read high; --n {FEW_PER_K * k} or more")
