"""Captioned shapes: caption grammar, the rendered geometry and colours measured off the pixels,
holdout, determinism, and the attribute classifier trained once per module (~20 s on one core)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from difflab.data import DATASETS, load_dataset
from difflab.data.shapes import (ATTRIBUTES, CLASS_NAMES, COLOR_JITTER, COLORS, POSITION_CENTERS, POSITION_JITTER,
                                 caption, matches_holdout, parse_caption, parse_holdout, random_attributes,
                                 render_shapes)
from difflab.errors import UserError
from difflab.evaluate import attributes as attributes_module
from difflab.evaluate.attributes import (attribute_accuracy, get_attribute_classifier, load_attribute_classifier,
                                         predict_attributes, train_attribute_classifier)
from difflab.evaluate.features import extract_features, load_feature_extractor, train_feature_extractor

ALL = np.array(list(itertools.product(*(range(len(v)) for v in ATTRIBUTES.values()))))  # (320, 4)
SIZE, COLOR, SHAPE, POSITION = range(4)
CIRCLE, SQUARE, TRIANGLE, CROSS = range(4)
CENTER = 4
CLASSIFIER_STEPS = 120  # 1.0 accuracy on fresh 32x32 renders, about 20 s on one core (measured)


def _alpha(images: np.ndarray) -> np.ndarray:
    """Coverage estimate (n, H, W) of uint8 (n, H, W, 3) renders: brightness relative to the brightest pixel."""
    s = images.astype(np.float64).sum(-1)  # (n, H, W)
    return s / s.max(axis=(1, 2), keepdims=True)


def _centroid(alpha: np.ndarray) -> np.ndarray:
    """(n, 2) coverage-weighted (x, y) of each image, in pixels (pixel i spans [i, i + 1])."""
    grid = np.arange(alpha.shape[-1]) + 0.5
    mass = alpha.sum((1, 2))
    return np.stack([(alpha.sum(1) * grid).sum(1) / mass, (alpha.sum(2) * grid).sum(1) / mass], axis=1)


# -- captions ------------------------------------------------------------------------------------
def test_every_caption_parses_back():
    captions = [caption(a) for a in ALL]
    assert len(set(captions)) == len(ALL)
    assert caption((0, 0, 0, 0)) == "a small red circle at the top left"
    assert caption((1, 7, 3, 4)) == "a large orange cross in the center"
    for a, text in zip(ALL, captions):
        assert parse_caption(text) == tuple(a)
        assert parse_caption("  " + text.upper().replace(" ", "   ") + " ") == tuple(a)
    for bad in ("a small red circle", "a tiny red circle at the top left", "small red circle at the top left",
                "a small red circle at the top left now", ""):
        assert parse_caption(bad) is None


# -- rendering -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def every_combination() -> np.ndarray:
    return render_shapes(ALL, 32, seed=3)  # (320, 32, 32, 3)


def test_colour_at_the_object_centre_within_jitter(every_combination):
    xy = np.floor(_centroid(_alpha(every_combination))).astype(int)  # (n, 2)
    centre = every_combination[np.arange(len(ALL)), xy[:, 1], xy[:, 0]].astype(int)  # (n, 3)
    spec = np.clip(COLORS[ALL[:, COLOR]], 0, 255).astype(int)
    assert np.abs(centre - spec).max() <= COLOR_JITTER


def test_background_black(every_combination):
    q = 32 // 2
    for img, (_, _, _, p) in zip(every_combination, ALL):
        if p == CENTER:  # the four 3x3 corners
            assert img[:3, :3].max() == img[:3, -3:].max() == img[-3:, :3].max() == img[-3:, -3:].max() == 0
        else:  # the diagonally opposite quadrant, two pixels clear of the middle
            top, left = p in (0, 1), p in (0, 2)
            rows = slice(q + 2, None) if top else slice(None, q - 2)
            cols = slice(q + 2, None) if left else slice(None, q - 2)
            assert img[rows, cols].max() == 0
    assert (every_combination.max(-1) == 0).mean() > 0.5


@pytest.mark.parametrize("resolution", [32, 64])
def test_size_and_position(resolution):
    images = render_shapes(ALL, resolution, seed=4)
    alpha = _alpha(images)
    p = ALL[:, POSITION]
    x, y = _centroid(alpha).T / resolution
    quadrant = p != CENTER
    assert np.all(((x < 0.5) == np.isin(p, (0, 2)))[quadrant]) and np.all(((y < 0.5) == np.isin(p, (0, 1)))[quadrant])
    lit_x, lit_y = (alpha > 0).any(1), (alpha > 0).any(2)  # (n, W), (n, H)
    grid = np.arange(resolution)
    box = [(np.where(lit, grid, resolution).min(1) + np.where(lit, grid, -1).max(1) + 1) / 2 / resolution
           for lit in (lit_x, lit_y)]  # bounding-box centre (x, y) / side
    expected = np.array(POSITION_CENTERS)[p]  # (n, 2)
    tolerance = POSITION_JITTER + 1.5 / resolution  # jitter, plus half a pixel of rounding and one of clipping
    assert np.abs(np.stack(box, 1) - expected).max() <= tolerance
    cols = lit_x.sum(1) / resolution  # (n,) width of the lit columns / side
    unclipped = p == CENTER
    for size, fraction in enumerate((0.28, 0.5)):
        sel = unclipped & (ALL[:, SIZE] == size)
        assert np.all(np.abs(cols[sel] - fraction) <= 2 / resolution)
        squares = sel & (ALL[:, SHAPE] == SQUARE)
        np.testing.assert_allclose(np.sqrt(alpha[squares].sum((1, 2))) / resolution, fraction, atol=0.01)


def test_triangle_apex_up_and_cross_shape():
    attrs = np.array([[1, 6, TRIANGLE, CENTER], [1, 6, CROSS, CENTER]])
    tri, cross = _alpha(render_shapes(attrs, 64, seed=5))
    rows = tri.sum(1)  # (H,) mass per row
    lit = np.flatnonzero(rows > 0)
    top, bottom = lit[: len(lit) // 2], lit[len(lit) // 2:]
    assert rows[bottom].sum() > 2 * rows[top].sum()  # 3:1 for an ideal apex-up triangle
    assert (tri[lit[1]] > 0).sum() < (tri[lit[-2]] > 0).sum() / 4  # narrow apex row, wide base row
    c = 32  # large cross at the centre: arm half-length 16, arm half-width 16/3
    assert cross[c, c] == cross[c - 13, c] == cross[c + 13, c] == cross[c, c - 13] == cross[c, c + 13] == 1
    assert cross[c - 12, c - 12] == cross[c + 12, c + 12] == cross[c - 12, c + 12] == cross[c + 12, c - 12] == 0


def test_edges_are_anti_aliased(every_combination):
    alpha = _alpha(every_combination[ALL[:, SHAPE] == CIRCLE])
    partial = ((alpha > 0.1) & (alpha < 0.9)).sum((1, 2))  # (n,) edge pixels per image
    assert partial.min() >= 4


def test_render_deterministic_by_seed():
    attrs = random_attributes(64, seed=7)
    assert np.array_equal(attrs, random_attributes(64, seed=7))
    assert not np.array_equal(attrs, random_attributes(64, seed=8))
    assert np.array_equal(render_shapes(attrs, 32, seed=1), render_shapes(attrs, 32, seed=1))
    assert not np.array_equal(render_shapes(attrs, 32, seed=1), render_shapes(attrs, 32, seed=2))


# -- the dataset ---------------------------------------------------------------------------------
def test_dataset_fields():
    assert "shapes" in DATASETS
    ds = load_dataset("shapes", split="test")
    assert ds.images.shape == (2000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.attributes.shape == (2000, 4) and ds.attributes.dtype == torch.int64
    assert [parse_caption(t) for t in ds.texts] == [tuple(a) for a in ds.attributes.tolist()]
    assert torch.equal(ds.labels, ds.attributes[:, SHAPE] * 8 + ds.attributes[:, COLOR])
    assert ds.class_names == CLASS_NAMES and len(CLASS_NAMES) == 32 and CLASS_NAMES[0] == "red circle"
    assert all(ds.class_names[int(y)] in t for y, t in zip(ds.labels[:50], ds.texts[:50]))
    for k, values in enumerate(ATTRIBUTES.values()):  # uniform draws
        counts = np.bincount(ds.attributes[:, k].numpy(), minlength=len(values))
        assert np.all(np.abs(counts / 2000 * len(values) - 1) < 0.25)
    again = load_dataset("shapes", split="test")
    assert torch.equal(ds.images, again.images) and ds.texts == again.texts
    train = load_dataset("shapes", split="train", size=300)
    assert len(train) == 300 and not torch.equal(train.images[:300], ds.images[:300])


def test_holdout_only_out_of_train():
    holdout = ["red triangle", "large cyan", "small blue cross in the center"]
    train = load_dataset("shapes", size=3000, holdout=holdout)
    test = load_dataset("shapes", split="test", holdout=holdout)
    assert not matches_holdout(train.attributes.numpy(), holdout).any()
    assert matches_holdout(test.attributes.numpy(), holdout).sum() > 100  # ~ 1/32 + 1/16 of 2000
    rows = np.array([[0, 0, TRIANGLE, 0], [1, 5, CIRCLE, 3], [0, 2, CROSS, CENTER], [0, 2, CROSS, 0]])
    assert matches_holdout(rows, holdout).tolist() == [True, True, True, False]


def test_bad_holdout_and_options():
    with pytest.raises(UserError, match="'purple'.*red, green"):
        parse_holdout(["purple triangle"])
    with pytest.raises(UserError, match="two values"):
        parse_holdout(["red blue"])
    with pytest.raises(UserError, match="every image"):
        random_attributes(10, seed=0, holdout=["small", "large"])
    with pytest.raises(UserError, match="holdout"):
        load_dataset("shapes", split="test", holdout=["big red"])
    with pytest.raises(UserError, match="resolution"):
        load_dataset("shapes", resolution=8)
    with pytest.raises(UserError, match="channels"):
        load_dataset("shapes", channels=4)
    with pytest.raises(UserError, match="size"):
        load_dataset("shapes", size=0)


def test_resolution_64_and_grey():
    ds = load_dataset("shapes", resolution=64, channels=1, size=50)
    rgb = load_dataset("shapes", resolution=64, size=50)
    assert ds.images.shape == (50, 1, 64, 64)
    luma = rgb.images.double().permute(0, 2, 3, 1) @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    assert (ds.images[:, 0].double() - luma).abs().max() <= 0.5 + 1e-6


def test_fid_feature_extractor_trains_on_shapes(tmp_path):
    path = train_feature_extractor("shapes", steps=10, out=tmp_path / "f.safetensors", progress=False)
    net = load_feature_extractor(path)
    assert net.config.num_classes == 32 and net.config.in_channels == 3
    assert extract_features(net, load_dataset("shapes", split="test").images[:8], progress=False).shape == (8, 128)


# -- the attribute classifier --------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    return train_attribute_classifier(32, steps=CLASSIFIER_STEPS, out=tmp_path_factory.mktemp("attr") / "a.safetensors",
                                      progress=False)


def test_attribute_classifier_accuracy(classifier_path):
    net = load_attribute_classifier(classifier_path)
    assert all(v >= 0.99 for v in net.config.accuracy.values())
    test = load_dataset("shapes", split="test")  # renders the classifier never saw
    images, attrs = test.images[:500], test.attributes[:500].numpy()
    acc = attribute_accuracy(images, attrs, net=net)
    assert set(acc) == {"size", "color", "shape", "position", "all"}
    assert min(acc.values()) >= 0.99
    nhwc = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    assert np.array_equal(predict_attributes(net, nhwc), predict_attributes(net, images))
    wrong = (attrs + 1) % np.array([2, 8, 4, 5])
    assert attribute_accuracy(images, wrong, net=net)["all"] <= 0.01


def test_attribute_classifier_cache(classifier_path, tmp_path, monkeypatch, capsys):
    cached = tmp_path / "shapes-32x32.safetensors"
    cached.write_bytes(classifier_path.read_bytes())
    cached.with_suffix(".json").write_bytes(classifier_path.with_suffix(".json").read_bytes())
    monkeypatch.setattr(attributes_module, "default_weights_path", lambda resolution: cached)
    net = get_attribute_classifier(32)
    assert capsys.readouterr().out == ""  # loaded, not trained
    ref = load_attribute_classifier(classifier_path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(UserError, match="not found"):
        load_attribute_classifier(tmp_path / "missing.safetensors")


def test_cli_writes_an_image_folder_that_reads_back(tmp_path):
    from difflab.cli import main

    out = tmp_path / "shapes"
    assert main(["data", "shapes", "--out", str(out), "--n", "12", "--seed", "2"]) == 0
    ds = load_dataset("image-folder", path=str(out))
    attrs = random_attributes(12, seed=2)
    assert ds.texts == [caption(a) for a in attrs]
    assert torch.equal(ds.images, torch.from_numpy(render_shapes(attrs, 32, seed=2)).permute(0, 3, 1, 2))
    assert main(["data", "shapes", "--out", str(out), "--n", "12"]) == 2  # exists: refused
