"""FID: the Frechet distance against independent formulas, and difflab's own feature extractor
trained briefly on digits (once per module, a few seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from difflab.data import load_dataset
from difflab.data.images import ImageDataset
from difflab.errors import UserError
from difflab.evaluate import fid as fid_module
from difflab.evaluate import features as features_module
from difflab.evaluate.features import (FeatureNet, accuracy, extract_features, get_feature_extractor,
                                       load_feature_extractor, save_feature_extractor, train_feature_extractor)
from difflab.evaluate.fid import compute_fid, fid_from_features, fit_gaussian, frechet_distance

DIGITS_STEPS = 150  # about 3 s on 2 CPU cores; gives 0.99 test accuracy (measured)


# -- an independent Frechet distance -------------------------------------------------------------
def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _textbook_fid(mu1, s1, mu2, s2, eps: float = 0.0) -> float:
    """tr((s1 s2)^(1/2)) = sum of sqrt(eigenvalues of s1^(1/2) s2 s1^(1/2)), a symmetric PSD matrix.

    ``eps`` is added to the diagonals inside the square root only, as the numerical fallback does."""
    offset = eps * np.eye(len(s1))
    r1 = _psd_sqrt(s1 + offset)
    eig = np.linalg.eigvalsh(r1 @ (s2 + offset) @ r1)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _two_feature_sets(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    return a, b


def test_frechet_distance_matches_eigendecomposition():
    a, b = _two_feature_sets(500, 16)
    (mu1, s1), (mu2, s2) = fit_gaussian(a), fit_gaussian(b)
    assert mu1.dtype == s1.dtype == np.float64 and s1.shape == (16, 16)
    np.testing.assert_allclose(s1, np.cov(a.T), rtol=1e-12)
    expected = _textbook_fid(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-6)
    assert fid_from_features(a, b) == pytest.approx(expected, abs=1e-6)


def test_identical_gaussians_have_zero_distance():
    a, _ = _two_feature_sets(300, 12)
    mu, sigma = fit_gaussian(a)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_one_dimensional_closed_form():
    mu1, v1, mu2, v2 = 0.3, 2.0, -1.1, 0.5
    expected = (mu1 - mu2) ** 2 + (v1 ** 0.5 - v2 ** 0.5) ** 2
    got = frechet_distance(np.array([mu1]), np.array([[v1]]), np.array([mu2]), np.array([[v2]]))
    assert got == pytest.approx(expected, abs=1e-12)


def test_singular_covariances_give_the_finite_textbook_value():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 0.5  # N < D: rank-9 covariances
    (mu1, s1), (mu2, s2) = fit_gaussian(a), fit_gaussian(b)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got)
    assert got == pytest.approx(_textbook_fid(mu1, s1, mu2, s2), abs=1e-6)


def test_non_finite_square_root_falls_back_to_eps_identity(monkeypatch: pytest.MonkeyPatch):
    a, b = _two_feature_sets(10, 32, seed=1)
    (mu1, s1), (mu2, s2) = fit_gaussian(a), fit_gaussian(b)
    real_sqrtm, calls = fid_module._sqrtm, []

    def first_call_overflows(m: np.ndarray) -> np.ndarray:
        calls.append(m)
        return np.full_like(m, np.inf) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(fid_module, "_sqrtm", first_call_overflows)
    eps = 1e-3
    got = frechet_distance(mu1, s1, mu2, s2, eps=eps)
    assert len(calls) == 2
    assert got == pytest.approx(_textbook_fid(mu1, s1, mu2, s2, eps=eps), abs=1e-6)
    assert abs(got - _textbook_fid(mu1, s1, mu2, s2)) > 1e-3  # the eps really entered


def test_imaginary_square_root_is_an_error():
    mu = np.zeros(2)
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(mu, np.diag([1.0, -1.0]), mu, np.eye(2))


# -- the feature extractor -----------------------------------------------------------------------
@pytest.mark.parametrize("side", [8, 28, 32])
def test_feature_net_shapes(side: int):
    net = FeatureNet(in_channels=3, num_classes=7, resolution=(side, side), width=8, feature_dim=24)
    x = torch.rand(5, 3, side, side) * 2 - 1
    assert net.features(x).shape == (5, 24) and net(x).shape == (5, 7)
    bigger = torch.randint(0, 256, (4, 3, 2 * side, 2 * side), dtype=torch.uint8)
    assert extract_features(net, bigger, batch_size=3, progress=False).shape == (4, 24)  # resized


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory: pytest.TempPathFactory):
    """A cache holding a digits extractor trained for DIGITS_STEPS, and the weights' path."""
    cache = tmp_path_factory.mktemp("fid-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFLAB_CACHE", str(cache))
        path = train_feature_extractor("digits", steps=DIGITS_STEPS, progress=False)
    return cache, path


@pytest.fixture
def digits_net(digits_cache, monkeypatch: pytest.MonkeyPatch) -> FeatureNet:
    """The cached digits extractor, found through get_feature_extractor (never retrained here)."""
    monkeypatch.setenv("DIFFLAB_CACHE", str(digits_cache[0]))
    return get_feature_extractor("digits", train_if_missing=False)


def test_digits_extractor_is_accurate(digits_cache, digits_net: FeatureNet):
    cache, path = digits_cache
    assert path == cache / "features" / "digits-8x8-c1.safetensors"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["dataset"] == "digits" and sidecar["resolution"] == [8, 8] and sidecar["steps"] == DIGITS_STEPS
    test = load_dataset("digits", split="test")
    acc = accuracy(digits_net, torch.as_tensor(test.images), torch.as_tensor(test.labels))
    assert acc > 0.9
    assert acc == pytest.approx(sidecar["test_accuracy"])


def test_fid_of_held_out_digits_is_far_below_noise(digits_net: FeatureNet, monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path))
    test = np.asarray(load_dataset("digits", split="test").images)  # (N, 1, 8, 8)
    noise = np.random.default_rng(0).integers(0, 256, size=test.shape, dtype=np.uint8)
    fid_real = compute_fid(test, data="digits", extractor=digits_net, progress=False)
    fid_noise = compute_fid(noise, data="digits", extractor=digits_net, progress=False)
    assert 0 < 10 * fid_real < fid_noise
    channels_last = test.transpose(0, 2, 3, 1)  # (N, H, W, C)
    assert compute_fid(channels_last, data="digits", extractor=digits_net, progress=False) == fid_real


def test_real_statistics_are_cached_and_keyed_by_weights(digits_net: FeatureNet, monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path))
    calls = []

    def counting(net, images, **kwargs):
        calls.append(len(images))
        return extract_features(net, images, **kwargs)

    monkeypatch.setattr(fid_module, "extract_features", counting)
    fake = np.asarray(load_dataset("digits", split="test").images[:64])
    first = compute_fid(fake, data="digits", extractor=digits_net, num_real=500, progress=False)
    stats = sorted((tmp_path / "fid_stats").iterdir())
    assert len(stats) == 1 and "digits-train-8x8-c1-n500" in stats[0].name and calls == [500, 64]
    mtime = stats[0].stat().st_mtime_ns
    assert compute_fid(fake, data="digits", extractor=digits_net, num_real=500, progress=False) == first
    assert calls == [500, 64, 64] and stats[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    retrained = FeatureNet(**{k: getattr(digits_net.config, k) for k in
                              ("in_channels", "num_classes", "resolution", "width", "feature_dim")})
    retrained.load_state_dict(digits_net.state_dict())
    with torch.no_grad():
        retrained.head.bias += 1.0  # any change of the weights must give new statistics
    compute_fid(fake, data="digits", extractor=retrained, num_real=500, progress=False)
    assert len(list((tmp_path / "fid_stats").iterdir())) == 2 and calls[-2:] == [500, 64]


def test_weights_round_trip_gives_identical_features(digits_net: FeatureNet, tmp_path):
    path = save_feature_extractor(digits_net, tmp_path / "fx.safetensors")
    loaded = load_feature_extractor(path)
    assert loaded.config == digits_net.config
    images = load_dataset("digits", split="test").images[:100]
    np.testing.assert_array_equal(extract_features(loaded, images, progress=False),
                                  extract_features(digits_net, images, progress=False))
    assert get_feature_extractor("digits", weights=path).config == digits_net.config
    path.with_suffix(".json").unlink()
    with pytest.raises(UserError, match="not found"):
        load_feature_extractor(path)
    with pytest.raises(UserError, match="not found"):
        get_feature_extractor("digits", weights=tmp_path / "missing.safetensors")


def test_unlabelled_dataset_cannot_train_an_extractor(monkeypatch: pytest.MonkeyPatch):
    images = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    folder = ImageDataset(name="image-folder", images=images, labels=None, class_names=[], texts=None, skipped=0)
    monkeypatch.setattr(features_module, "load_dataset", lambda *args, **kwargs: folder)
    with pytest.raises(UserError, match="has no class labels.*--features WEIGHTS"):
        train_feature_extractor("image-folder", steps=1, progress=False)


def test_bad_sample_arrays_are_user_errors(digits_net: FeatureNet):
    with pytest.raises(UserError, match="uint8"):
        compute_fid(np.zeros((4, 1, 8, 8), dtype=np.float32), data="digits", extractor=digits_net)
    with pytest.raises(UserError, match="channel"):
        compute_fid(np.zeros((4, 3, 8, 8), dtype=np.uint8), data="digits", extractor=digits_net)


def test_random_shift_moves_each_image_rigidly():
    x = torch.full((6, 1, 8, 8), -1.0)
    x[:, :, 4, 3] = 1.0  # one bright pixel, well inside the border
    shifted = features_module._random_shift(x, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    for img in shifted[:, 0]:
        (r, c), = torch.nonzero(img == 1.0).tolist()  # still exactly one bright pixel ...
        assert abs(r - 4) <= 1 and abs(c - 3) <= 1  # ... moved by at most SHIFT_FRACTION * 8 = 1
    assert not all(torch.equal(s, x[0]) for s in shifted)  # and some image really moved
