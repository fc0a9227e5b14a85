"""Frechet distance between Gaussian fits of image features (FID), offline.

Notation (Heusel et al. 2017, https://arxiv.org/abs/1706.08500, section "FID")::

    mu, sigma   mean (D,) and covariance (D, D) of the features of one image set
    FID         ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))

The features come from difflab's own per-dataset classifier (:mod:`difflab.evaluate.features`),
so values are comparable only between measurements with the same extractor, the same real set
and the same number of generated samples: FID is biased upward by a term that shrinks roughly
like 1/N (Chong & Forsyth 2020, https://arxiv.org/abs/1911.07023), so compare only at equal N.
With N <= D features a covariance has rank N - 1 < D: the distance is still finite, but far too
high (for two samples of one 128-D Gaussian it measured 24 at N = 128 and 270 at N = 2, against 1.8
at N = 2000), and :func:`fid_note` says so. One feature has no covariance at all: a UserError.

Statistics of the real images are cached in ``cache_dir("fid_stats")`` under a key naming the
dataset, split, resolution, channels, number of images, a hash of the images and a hash of the
extractor's weights, so a retrained extractor or changed data never reuses stale statistics.
"""

from __future__ import annotations

import hashlib
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import scipy
import torch
from scipy import linalg
from torch import Tensor

from difflab.data import load_dataset
from difflab.errors import UserError
from difflab.evaluate.features import (EVAL_BATCH, FeatureNet, extract_features, get_feature_extractor,
                                       weights_fingerprint)
from difflab.paths import atomic_path, cache_dir

STATS_DIR = "fid_stats"
IMAG_ATOL = 1e-3  # largest imaginary part tolerated on the diagonal of (sigma1 sigma2)^(1/2)
HASH_CHARS = 12  # hex digits of each hash in a cache key
SUBSET_SEED = 0  # which real images a num_real subset takes
CHANNEL_COUNTS = (1, 3, 4)  # channel counts recognised when guessing (N, C, H, W) vs (N, H, W, C)
# SciPy 1.16 deprecated sqrtm's `disp` argument (removed in 1.18); older versions print without it.
_SQRTM_HAS_DISP = tuple(int(re.match(r"\d+", p).group()) for p in scipy.__version__.split(".")[:2]) < (1, 16)


# -- the distance --------------------------------------------------------------------------------
def fit_gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D), float64, of features (N, D) (N - 1 normalisation)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need features (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """Principal square root of a square matrix, without printed or logged warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a, disp=False)[0] if _SQRTM_HAS_DISP else linalg.sqrtm(a)


def _sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> np.ndarray:
    """(sigma1 sigma2)^(1/2), retried with eps * I added to both when it is not finite."""
    root = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = eps * np.eye(len(sigma1))
        root = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        imag = np.abs(np.diagonal(root).imag).max()
        if imag > IMAG_ATOL:
            raise ValueError(f"(sigma1 sigma2)^(1/2) has an imaginary diagonal part of {imag:.3g}: "
                             f"the covariances are not valid (use more samples than feature dimensions)")
        root = root.real
    return root


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``, with the matrix
    square root from SciPy; when that is not finite (near-singular covariances) it is recomputed
    with ``eps * I`` added to both covariances.

    Raises:
        ValueError: mismatched shapes, or a square root with a significant imaginary diagonal.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    D = len(mu1)
    if mu2.shape != (D,) or sigma1.shape != (D, D) or sigma2.shape != (D, D):
        raise ValueError(f"mismatched Gaussians: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrt_product(sigma1, sigma2, eps)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*fit_gaussian(features1), *fit_gaussian(features2))


def fid_note(n_fake: int, n_real: int | None, dim: int) -> str | None:
    """What to print beside an FID of ``n_fake`` generated and ``n_real`` real features (None = not
    known) in ``dim`` dimensions when a covariance is singular (N <= D, see the module doc); else None."""
    if n_fake <= dim:
        return (f"only {n_fake} samples in {dim} dimensions: singular covariance, biased far upwards; "
                f"--n {dim + 1} or more")
    if n_real is not None and n_real <= dim:
        return f"only {n_real} real images in {dim} dimensions: singular covariance, biased far upwards"
    return None


# -- images --------------------------------------------------------------------------------------
def to_nchw(images: Tensor | np.ndarray) -> Tensor:
    """uint8 images (N, C, H, W) or (N, H, W, C) as a tensor (N, C, H, W)."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.dtype != torch.uint8:
        raise UserError(f"FID needs uint8 images (N, C, H, W) or (N, H, W, C), got {x.dtype} "
                        f"{tuple(x.shape)}: pass samples as written by `difflab sample --out FILE.npz`")
    if x.shape[1] in CHANNEL_COUNTS:
        return x
    if x.shape[-1] in CHANNEL_COUNTS:
        return x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    raise UserError(f"cannot tell the channel axis of images {tuple(x.shape)}: pass (N, C, H, W) "
                    f"or (N, H, W, C) with C in {CHANNEL_COUNTS}")


def _digest(*chunks: bytes | str) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c.encode() if isinstance(c, str) else c)
    return h.hexdigest()[:HASH_CHARS]


def fixed_subset(images: np.ndarray, num: int | None) -> np.ndarray:
    """A fixed random subset (:data:`SUBSET_SEED`) of ``num`` images (in dataset order), or all of them."""
    if num is None or num >= len(images):
        return images
    if num < 2:
        raise UserError(f"num_real must be at least 2, got {num}: pass a larger number of real images")
    idx = np.sort(np.random.default_rng(SUBSET_SEED).choice(len(images), size=num, replace=False))
    return images[idx]


def _load_stats(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as z:
            return z["mu"], z["sigma"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def real_statistics(net: FeatureNet, data: str, *, data_path: str | None = None, resolution: int | None = None,
                    channels: int | None = None, split: str = "train", num_real: int | None = None,
                    batch_size: int = EVAL_BATCH, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a dataset's features under ``net``, cached in ``cache_dir("fid_stats")``."""
    ds = load_dataset(data, path=data_path, resolution=resolution, channels=channels, split=split)
    images = np.ascontiguousarray(fixed_subset(np.asarray(ds.images), num_real))  # (N, C, H, W)
    N, C, H, W = images.shape
    if N < 2:
        raise UserError(f"dataset {data} has {N} {split} image(s), and FID needs the covariance of at least 2: "
                        f"evaluate against a larger dataset")
    key = (f"{data}-{split}-{H}x{W}-c{C}-n{N}-data{_digest(images.tobytes())}"
           f"-feat{_digest(weights_fingerprint(net))}.npz")
    path = cache_dir(STATS_DIR) / key
    if path.is_file() and (stats := _load_stats(path)) is not None:
        return stats
    mu, sigma = fit_gaussian(extract_features(net, images, batch_size=batch_size, progress=progress))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, num_images=N)
    return mu, sigma


def extractor_for(channels: int, *, data: str, data_path: str | None = None, resolution: int | None = None,
                  extractor: FeatureNet | None = None, weights: str | Path | None = None) -> FeatureNet:
    """``extractor``, else the one in ``weights``, else the dataset's cached one, checked to take
    ``channels``-channel images (a UserError naming the fix when it does not)."""
    net = extractor if extractor is not None else get_feature_extractor(
        data, data_path=data_path, resolution=resolution, channels=channels, weights=weights)
    if net.config.in_channels != channels:
        raise UserError(f"the feature extractor takes {net.config.in_channels}-channel images but the "
                        f"samples have {channels}: pass a matching --features WEIGHTS")
    return net


def compute_fid(fake_uint8: Tensor | np.ndarray, *, data: str, data_path: str | None = None,
                resolution: int | None = None, extractor: FeatureNet | None = None,
                weights: str | Path | None = None, real_split: str = "train", num_real: int | None = None,
                batch_size: int = EVAL_BATCH, progress: bool = True) -> float:
    """FID of generated images against a dataset, in difflab's own feature space.

    FID is biased by the number of generated images (smaller N gives larger FID), so compare
    models only at the same N; the caller chooses N by what it passes.

    Args:
        fake_uint8: generated images, uint8 (N, C, H, W) or (N, H, W, C); their channel count
            selects the dataset's channels and they are resized to the extractor's resolution.
        data, data_path: the reference dataset (see :func:`difflab.data.load_dataset`).
        resolution: the dataset's side in pixels (None = native); also the extractor's.
        extractor: a feature extractor to use (``weights`` is then ignored); None = ``weights``
            if given, else the dataset's cached extractor (trained once when missing).
        weights: a feature-extractor ``.safetensors`` file (with its ``.json`` sidecar).
        real_split: which split of the dataset the real statistics come from.
        num_real: a fixed random subset of this many real images (None = all).
        batch_size: images per forward pass of the extractor.
        progress: show progress bars.

    Returns:
        The Frechet distance between the Gaussian fits of real and generated features.
    """
    fake = to_nchw(fake_uint8)  # (N, C, H, W)
    if len(fake) < 2:
        raise UserError(f"FID needs at least 2 generated images, got {len(fake)}: pass --n 2 or more")
    C = fake.shape[1]
    net = extractor_for(C, data=data, data_path=data_path, resolution=resolution, extractor=extractor,
                        weights=weights)
    mu_real, sigma_real = real_statistics(net, data, data_path=data_path, resolution=resolution, channels=C,
                                          split=real_split, num_real=num_real, batch_size=batch_size,
                                          progress=progress)
    mu_fake, sigma_fake = fit_gaussian(extract_features(net, fake, batch_size=batch_size, progress=progress))
    return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake)
