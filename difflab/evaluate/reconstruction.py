"""How close reconstructions are to their originals: PSNR, SSIM and rFID.

Notation (Wang et al. 2004, "Image Quality Assessment: From Error Visibility to Structural Similarity",
eq. 13 and Sec. III-C)::

    L            the dynamic range of the pixels (255 for uint8)
    MSE          mean squared difference of two images, over pixels and channels
    PSNR         10 log10(L^2 / MSE) in dB (inf for identical images)
    w            a Gaussian window, 11 x 11, sigma 1.5, normalised to sum 1
    mu_x, mu_y   local means (w * x, w * y); sigma_x^2, sigma_y^2, sigma_xy local (co)variances
    C1, C2       (K1 L)^2 and (K2 L)^2 with K1 = 0.01, K2 = 0.03
    SSIM map     (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
    SSIM         the mean of the map over the positions where the whole window fits ("valid"), per channel,
                 then over channels

This is ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=L, channel_axis=...)`` and torchmetrics'
``structural_similarity_index_measure`` (tests/test_autoencoder.py checks the latter on random images). Images
smaller than the window get the largest odd window that fits (same sigma), and the result says so.

rFID (reconstruction FID, Rombach et al. 2022, Table 8) is the Frechet distance between the features of the
reconstructions and of their originals, in difflab's own per-dataset feature space
(:mod:`difflab.evaluate.features`), like every FID of difflab.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.evaluate.features import EVAL_BATCH, FeatureNet, extract_features
from difflab.evaluate.fid import fid_from_features, fid_note

PIXEL_RANGE = 255.0  # L of uint8 images
SSIM_WINDOW = 11  # Wang et al. 2004, Sec. III-C
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
# identical images have an infinite PSNR; the mean over a set counts them at this many dB (above any PSNR that
# two different uint8 images of fewer than about 10^7 values can have: 10 log10(255^2 * N) for one value off by 1)
PSNR_CAP_DB = 100.0


def _as_float(images: Tensor | np.ndarray) -> Tensor:
    """uint8 or float images (N, C, H, W) as float64 on the CPU."""
    return torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images).double().cpu()


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"need two image batches (N, C, H, W) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: Tensor | np.ndarray, y: Tensor | np.ndarray, data_range: float = PIXEL_RANGE) -> np.ndarray:
    """Per-image PSNR in dB of images (N, C, H, W) ``x`` against ``y`` (inf where they are identical)."""
    x, y = _as_float(x), _as_float(y)
    _check_pair(x, y)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))  # (N,)
    with np.errstate(divide="ignore"):
        return (10 * np.log10(data_range ** 2 / mse.numpy())).astype(np.float64)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """The 1-D Gaussian window (size,), float64, summing to 1 (the 2-D window is its outer product)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim_window(height: int, width: int) -> int:
    """The SSIM window side for images of this size: SSIM_WINDOW, or the largest odd side that fits."""
    side = min(SSIM_WINDOW, height, width)
    return side if side % 2 else side - 1


def _filter(x: Tensor, g: Tensor) -> Tensor:
    """Separable 'valid' filtering of x (B, C, H, W) by the window g (k,) along H and W, channel by channel."""
    C, k = x.shape[1], len(g)
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(C, 1, k, 1), groups=C)  # (B, C, H-k+1, W)
    return F.conv2d(x, g.view(1, 1, 1, k).expand(C, 1, 1, k), groups=C)  # (B, C, H-k+1, W-k+1)


def ssim(x: Tensor | np.ndarray, y: Tensor | np.ndarray, data_range: float = PIXEL_RANGE) -> np.ndarray:
    """Per-image SSIM (N,) of images (N, C, H, W) ``x`` against ``y`` (see the module doc), in [-1, 1].

    Raises:
        ValueError: images of different shapes, or a side below 3 pixels (no window fits).
    """
    x, y = _as_float(x), _as_float(y)
    _check_pair(x, y)
    k = ssim_window(x.shape[2], x.shape[3])
    if k < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {tuple(x.shape[2:])}")
    g = gaussian_window(k)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _filter(x, g), _filter(y, g)  # (N, C, h, w)
    var_x = (_filter(x * x, g) - mu_x ** 2).clamp(min=0)  # >= 0 up to rounding
    var_y = (_filter(y * y, g) - mu_y ** 2).clamp(min=0)
    cov = _filter(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).numpy()  # mean over positions, then channels (equal counts)


def mean_psnr(values: np.ndarray) -> float:
    """The mean of per-image PSNRs, identical images counted at PSNR_CAP_DB."""
    return float(np.minimum(values, PSNR_CAP_DB).mean())


def reconstruction_metrics(originals: Tensor | np.ndarray, reconstructions: Tensor | np.ndarray, *,
                           extractor: FeatureNet | None = None, batch_size: int = EVAL_BATCH,
                           progress: bool = True) -> dict[str, Any]:
    """PSNR, SSIM and (with an ``extractor``) rFID of uint8 ``reconstructions`` (N, C, H, W) of ``originals``.

    Returns:
        {"psnr" (mean dB, identical images at PSNR_CAP_DB), "psnr_std", "ssim", "ssim_std", "rfid" (None
        without an extractor), "ssim_window", "notes"}: "notes" holds "rfid" (a singular covariance at this
        size, :func:`~difflab.evaluate.fid.fid_note`) and "ssim" (a window smaller than 11) where they apply.
    """
    originals, reconstructions = torch.as_tensor(originals), torch.as_tensor(reconstructions)
    p, s = psnr(originals, reconstructions), ssim(originals, reconstructions)
    out: dict[str, Any] = {"psnr": mean_psnr(p), "psnr_std": float(np.minimum(p, PSNR_CAP_DB).std()),
                           "ssim": float(s.mean()), "ssim_std": float(s.std()), "rfid": None,
                           "ssim_window": ssim_window(*originals.shape[2:])}
    notes = {}
    if out["ssim_window"] < SSIM_WINDOW:
        notes["ssim"] = f"images smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} window: a {out['ssim_window']}x" \
                        f"{out['ssim_window']} one (sigma {SSIM_SIGMA})"
    if extractor is not None:
        real = extract_features(extractor, originals, batch_size=batch_size, progress=progress)
        fake = extract_features(extractor, reconstructions, batch_size=batch_size, progress=progress)
        out["rfid"] = fid_from_features(real, fake)
        if note := fid_note(len(fake), len(real), fake.shape[1]):
            notes["rfid"] = note
    out["notes"] = notes
    return out


__all__ = ["PIXEL_RANGE", "PSNR_CAP_DB", "gaussian_window", "mean_psnr", "psnr", "reconstruction_metrics", "ssim",
           "ssim_window"]

