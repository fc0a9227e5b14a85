"""KID and precision/recall/density/coverage against reference implementations, and `difflab eval`.

References: torchmetrics' KernelInceptionDistance and poly_mmd (1.9.0, given features through an
identity "extractor"), an O(n^2) double loop written here from Binkowski et al.'s formula, and
the PyPI package ``prdc`` (0.2, Naeem et al.'s own code). All features are seeded Gaussians.
"""

from __future__ import annotations

import json

import numpy as np
import prdc
import pytest
import torch
from scipy.spatial.distance import cdist
from torch import nn
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

from difflab import io
from difflab.cli import main
from difflab.errors import UserError
from difflab.evaluate import kid as kid_module
from difflab.evaluate import prdc as prdc_module
from difflab.data.images import ImageDataset
from difflab.evaluate import fid as fid_module
from difflab.evaluate.features import FeatureNet, train_feature_extractor
from difflab.evaluate.fid import compute_fid, fid_note
from difflab.evaluate.kid import (kid_from_features, kid_note, kid_standard_error, kid_subset_indices,
                                  mmd2_unbiased, polynomial_kernel)
from difflab.evaluate.prdc import nearest_neighbour_radii, pairwise_distances, prdc_from_features, prdc_note
from difflab.evaluate.run_eval import (EVAL_FILE, MIN_SAMPLES, evaluate_images, format_table, metrics_from_features,
                                       update_eval_file)
from difflab.measure import evaluate_run
from difflab.tasks import load_run

from conftest import TINY

DIGITS_STEPS = 60  # a rough digits extractor (about 1 s); the eval tests need features, not accuracy
EVAL_N = 40  # samples per `difflab eval` in these tests
METRIC_KEYS = {"checkpoint_step": int, "data": str, "n": int, "seed": int, "sampler": str, "steps": int,
               "fid": float, "kid": float, "kid_std": (float, type(None)), "precision": float, "recall": float,
               "density": float, "coverage": float, "real_n": int, "notes": dict}  # the format other commands read


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """n correlated Gaussian features (n, d), the same distribution for every seed (mean ``shift``)."""
    mix = np.random.default_rng(1234).normal(size=(d, d)) / np.sqrt(d)
    return np.random.default_rng(seed).normal(size=(n, d)) @ mix + shift


# -- KID -------------------------------------------------------------------------------------------
def _loop_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al.'s unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, as plain double loops."""
    d = x.shape[1]

    def k(a, b):
        return (sum(float(ai) * float(bi) for ai, bi in zip(a, b)) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_a_double_loop_also_for_unequal_sizes():
    x, y = _features(25, 4, seed=0), _features(18, 4, seed=1, shift=0.5)
    assert mmd2_unbiased(x, y) == pytest.approx(_loop_mmd2(x, y), abs=1e-10)
    assert mmd2_unbiased(x, y[:9]) == pytest.approx(_loop_mmd2(x, y[:9]), abs=1e-10)


def test_kid_subset_average_matches_double_loop_and_torchmetrics_poly_mmd():
    real, fake = _features(60, 5, seed=0), _features(50, 5, seed=1, shift=0.3)
    mean, std = kid_from_features(real, fake, subsets=7, subset_size=20, seed=3)
    draws = kid_subset_indices(60, 50, subsets=7, subset_size=20, seed=3)
    assert len(draws) == 7 and all(len(i) == len(j) == 20 and len(set(i)) == 20 for i, j in draws)
    loops = np.array([_loop_mmd2(real[i], fake[j]) for i, j in draws])
    torch_mmds = np.array([float(poly_mmd(torch.from_numpy(real[i]), torch.from_numpy(fake[j]))) for i, j in draws])
    np.testing.assert_allclose(torch_mmds, loops, atol=1e-10)
    assert mean == pytest.approx(loops.mean(), abs=1e-6)
    assert std == pytest.approx(loops.std(), abs=1e-6)  # population std, as torch-fidelity / torchmetrics
    assert kid_standard_error(std, 7) == pytest.approx(std / np.sqrt(7))


@pytest.mark.parametrize("way", ["_subset_mmds_each", "_subset_mmds_blocked"])
def test_both_ways_of_summing_subsets_match_the_double_loop(way: str):
    """kid_from_features takes whichever is cheaper: one subset at a time, or whole-set kernel blocks."""
    real, fake = _features(70, 6, seed=0), _features(45, 6, seed=1, shift=0.3)
    draws = kid_subset_indices(70, 45, subsets=5, subset_size=30, seed=1)
    expected = [_loop_mmd2(real[i], fake[j]) for i, j in draws]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kid_module, "KERNEL_CHUNK", 16)  # several row blocks, a short last one
        np.testing.assert_allclose(getattr(kid_module, way)(real, fake, draws), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchmetrics warns that it keeps all features
def test_kid_matches_torchmetrics_kernel_inception_distance():
    """With subset_size = N every subset is a permutation of both whole sets, so the value does not
    depend on how either implementation draws its subsets; torchmetrics' std there is rounding, and
    difflab reports none (None)."""
    real, fake = _features(300, 16, seed=0), _features(300, 16, seed=1, shift=0.2)
    metric = KernelInceptionDistance(feature=nn.Identity(), subsets=3, subset_size=300)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    ref_mean, ref_std = (float(v) for v in metric.compute())
    mean, std = kid_from_features(real, fake, subsets=3, subset_size=1000)  # capped at N = 300
    assert mean == pytest.approx(ref_mean, abs=1e-6, rel=1e-9)
    assert std is None and ref_std < 1e-9


def test_kid_is_zero_for_one_distribution_and_grows_with_a_shift():
    """Unbiased: over independent pairs of samples of one distribution KID averages to 0 (values
    measured: -0.002 .. 0.0035 each at N = 1000, against 0.19 for a mean shift of 0.25 per coordinate)."""
    a = _features(1000, 16, seed=0)
    same = [kid_from_features(a, _features(1000, 16, seed=s), subsets=1, subset_size=1000)[0] for s in range(1, 9)]
    assert max(abs(v) for v in same) < 0.01 and abs(np.mean(same)) < 0.003
    shifted = [kid_from_features(a, _features(1000, 16, seed=1, shift=s), subsets=20, subset_size=500)[0]
               for s in (0.25, 0.5, 1.0)]
    assert 0.1 < shifted[0] < shifted[1] < shifted[2]  # ~ shift^2 for small shifts: far above the noise


def test_kid_of_a_set_with_itself_is_minus_2_over_n_times_the_diagonal_excess():
    """MMD^2_u(X, X) = -(2 / m) (mean k(x_i, x_i) - mean_{i != j} k(x_i, x_j)): -> 0 like 1/m."""
    values = []
    for m in (100, 1000):
        x = _features(m, 16, seed=0)
        k = polynomial_kernel(x, x)
        expected = -2 / m * (np.diag(k).mean() - (k.sum() - np.trace(k)) / (m * (m - 1)))
        values.append(kid_from_features(x, x, subsets=2, subset_size=m)[0])
        assert values[-1] == pytest.approx(expected, rel=1e-9)
    assert values[0] < values[1] < 0 and abs(values[1]) < 0.02


def test_kid_rejects_bad_features():
    with pytest.raises(ValueError, match="N >= 2"):
        kid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="feature sizes differ"):
        kid_from_features(np.zeros((5, 4)), np.zeros((5, 3)))


# -- precision, recall, density, coverage ----------------------------------------------------------
def test_pairwise_distances_and_radii():
    x, y = _features(40, 6, seed=0), _features(30, 6, seed=1)
    np.testing.assert_allclose(pairwise_distances(x, y), cdist(x, y), atol=1e-10)
    k = 3
    expected = np.sort(cdist(x, x), axis=1)[:, k]  # column 0 is each point itself
    np.testing.assert_allclose(nearest_neighbour_radii(x, k, chunk_size=7), expected, atol=1e-10)


@pytest.mark.parametrize("k, chunk_size", [(5, 1024), (3, 37)])
def test_prdc_matches_the_prdc_package(k: int, chunk_size: int, capsys):
    real, fake = _features(300, 8, seed=0), _features(260, 8, seed=1, shift=0.4)
    ref = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    got = prdc_from_features(real, fake, k=k, chunk_size=chunk_size)
    assert set(got) == set(ref)
    for key in ref:
        assert got[key] == pytest.approx(float(ref[key]), abs=1e-6), key
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1  # the case is not degenerate


def test_prdc_subset_cap_matches_the_prdc_package_on_the_kept_rows(capsys):
    real, fake = _features(400, 8, seed=0), _features(350, 8, seed=1, shift=0.4)
    cap = 120
    kept_real, kept_fake = prdc_module._cap(real, cap), prdc_module._cap(fake, cap)
    assert kept_real.shape == (cap, 8) and kept_fake.shape == (cap, 8)
    assert {tuple(r) for r in kept_real} <= {tuple(r) for r in real}  # rows of the input, no copies made up
    ref = prdc.compute_prdc(real_features=kept_real, fake_features=kept_fake, nearest_k=5)
    got = prdc_from_features(real, fake, max_samples=cap, chunk_size=50)
    for key in ref:
        assert got[key] == pytest.approx(float(ref[key]), abs=1e-6), key
    assert prdc_from_features(real, fake, max_samples=1000) == prdc_from_features(real, fake)


def test_prdc_floors_and_ceilings():
    a, b = _features(600, 8, seed=0), _features(600, 8, seed=1)
    same = prdc_from_features(a, b)
    assert same["precision"] > 0.7 and same["recall"] > 0.7
    assert 0.8 < same["density"] < 1.2  # Naeem et al.: E[density] = 1 for one distribution
    assert 0.93 < same["coverage"] < 1.0  # ~ 1 - 2^-k = 0.97
    far = prdc_from_features(a, b + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    with pytest.raises(ValueError, match="k-NN"):
        prdc_from_features(a[:5], b, k=5)


# -- small samples: each figure says what it cannot tell ------------------------------------------
def test_kid_with_every_subset_the_whole_sets_has_no_spread():
    """Below the subset size (1000) both sets are whole in each of the 100 subsets: one value, no std."""
    real, fake = _features(500, 8, seed=0), _features(500, 8, seed=1, shift=0.2)
    mean, std = kid_from_features(real, fake)
    assert std is None and mean == pytest.approx(mmd2_unbiased(real, fake), rel=1e-12)
    assert kid_standard_error(std) is None
    assert kid_note(500, 500) == "one subset of 500: no spread; --n 2000 gives one"
    assert kid_from_features(real, _features(600, 8, seed=2), subsets=1)[1] is None  # one subset: no spread either
    assert kid_note(500, 600, subsets=1) == "one subset of 500: no spread"
    _, std = kid_from_features(real, _features(600, 8, seed=2), subsets=5)  # the generated side is subsampled
    assert std is not None and std > 0
    assert "overlap" in kid_note(500, 600) and kid_note(500, 2000) is None  # 500 of 600 vs 500 of 2000
    assert kid_note(2000, 2000) is None and "understates" in kid_note(1200, 1200)


def test_table_of_a_small_evaluation_says_kid_has_no_spread_and_stores_null(tmp_path):
    real, fake = _features(500, 8, seed=0), _features(500, 8, seed=1, shift=0.2)
    m = metrics_from_features(real, fake)
    assert m["kid_std"] is None and m["kid_se"] is None and m["kid_subset_size"] == 500
    assert m["notes"] == {"kid": "one subset of 500: no spread; --n 2000 gives one"}  # FID, PRDC fine at 500 > 8
    kid_row = next(line for line in format_table(m).splitlines() if line.startswith("KID"))
    assert kid_row == f"KID        {m['kid']:.5f} (one subset of 500: no spread; --n 2000 gives one)"
    update_eval_file(tmp_path, m)
    text = (tmp_path / EVAL_FILE).read_text()
    assert '"kid_std": null' in text and json.loads(text)["notes"]["kid"] == m["notes"]["kid"]
    spread = metrics_from_features(_features(120, 8, seed=0), _features(120, 8, seed=1), kid_subset_size=50)
    assert spread["kid_std"] > 0 and "kid" not in spread["notes"]
    assert f"+- {spread['kid_std']:.5f} (std over subsets; standard error" in format_table(spread)


def test_fid_and_prdc_of_few_samples_say_so():
    """FID from N <= D samples has a singular covariance; PRDC's k-NN balls below 10 k images are wide."""
    assert fid_note(128, 5000, 128).startswith("only 128 samples in 128 dimensions: singular covariance")
    assert fid_note(129, 5000, 128) is None and "real images" in fid_note(2000, 100, 128)
    assert fid_note(2000, None, 128) is None
    assert prdc_note(49, 1000) is not None and prdc_note(50, 50) is None
    m = metrics_from_features(_features(20, 32, seed=0), _features(20, 32, seed=1))
    assert set(m["notes"]) == {"fid", "kid", "prdc"}
    rows = {line.split()[0]: line for line in format_table(m).splitlines()}
    assert "singular covariance, biased far upwards; --n 33 or more" in rows["FID"]
    assert "only 20 images for k=5 balls: each spans 5 of the other 19" in rows["precision"]
    assert "read high; --n 50 or more" in rows["precision"] and "(" not in rows["recall"]  # printed once
    with pytest.raises(ValueError, match="k-NN balls need 1 <= k < N"):
        metrics_from_features(_features(5, 4, seed=0), _features(40, 4, seed=1))  # k = 5: no 5th neighbour


def test_one_image_is_a_user_error_not_a_numpy_one(monkeypatch):
    one = np.zeros((1, 1, 8, 8), dtype=np.uint8)
    with pytest.raises(UserError, match=f"at least {MIN_SAMPLES} images.*pass --n {MIN_SAMPLES}"):
        evaluate_images(one, data="digits")
    net = FeatureNet(in_channels=1, num_classes=2, resolution=(8, 8), width=8, feature_dim=8)
    with pytest.raises(UserError, match="at least 2 generated images.*--n 2"):
        compute_fid(one, data="digits", extractor=net, progress=False)
    folder = ImageDataset(name="image-folder", images=torch.as_tensor(one), labels=None, class_names=[], texts=None)
    monkeypatch.setattr(fid_module, "load_dataset", lambda *args, **kwargs: folder)
    with pytest.raises(UserError, match="has 1 train image.*larger dataset"):
        compute_fid(np.zeros((4, 1, 8, 8), dtype=np.uint8), data="image-folder", extractor=net, progress=False)


# -- difflab eval ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "3", "--set", *TINY]) == 0
    return run


@pytest.fixture(scope="module")
def digits_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("fx") / "digits.safetensors"
    return train_feature_extractor("digits", steps=DIGITS_STEPS, out=out, progress=False)


def test_eval_writes_metrics_json_and_keeps_other_keys(tiny_run, digits_weights, capsys):
    nll = {"bpd": 3.2, "n": 100}
    (tiny_run / EVAL_FILE).write_text(json.dumps({"nll": nll, "fid": -1.0}))
    code = main(["eval", str(tiny_run), "--data", "digits", "--n", str(EVAL_N), "--steps", "2", "--seed", "3",
                 "--weights", str(digits_weights), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    m = json.loads((tiny_run / EVAL_FILE).read_text())
    for key, kind in METRIC_KEYS.items():
        assert isinstance(m[key], kind), key
    assert m["nll"] == nll and m["fid"] > 0  # the other key kept, the stale one replaced
    assert (m["checkpoint_step"], m["data"], m["n"], m["seed"], m["steps"], m["real_n"]) == (3, "digits", EVAL_N, 3, 2,
                                                                                            EVAL_N)
    assert m["sampler"] == io.read_run_config(tiny_run).sample.sampler
    assert m["kid_std"] is None and "no spread" in m["notes"]["kid"]  # 40 < the 1000 of a KID subset
    assert all(0 <= m[k] <= 1 for k in ("precision", "recall", "coverage"))
    assert "KID" in out.out and "coverage" in out.out and f"{m['fid']:.3f}" in out.out
    assert not list(tiny_run.glob(".tmp-*"))  # written atomically, no temporaries left


def test_eval_fid_is_the_fid_of_difflab_fid(tiny_run, digits_weights, capsys):
    """The same samples (same seed) give evaluate_run's FID and compute_fid's, which `difflab fid` prints."""
    result = evaluate_run(tiny_run, n=EVAL_N, steps=2, sampler="ddim", eta=1.0, weights=digits_weights,
                          write=False, progress=False)
    run = load_run(tiny_run)
    images = run.sample(EVAL_N, sampler="ddim", steps=2, eta=1.0, seed=0, progress=False).data
    assert result["fid"] == pytest.approx(compute_fid(images, data="digits", weights=digits_weights,
                                                      progress=False), rel=1e-9)
    assert result["sampler_options"] == {"eta": 1.0} and result["sampler"] == "ddim"
    capsys.readouterr()
    assert main(["fid", str(tiny_run), "--data", "digits", "--n", str(EVAL_N), "--sampler", "ddim", "--steps", "2",
                 "--eta", "1", "--features", str(digits_weights)]) == 0
    assert f"FID {result['fid']:.3f} ({EVAL_N} samples vs digits)" in capsys.readouterr().out


def test_eval_bad_input_is_one_line_exit_2(tiny_run, digits_weights, tmp_path, capsys):
    nockpt = tmp_path / "nockpt"
    nockpt.mkdir()
    (nockpt / io.CONFIG_FILE).write_text((tiny_run / io.CONFIG_FILE).read_text())
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / EVAL_FILE).write_text("{not json")
    fx = ["--weights", str(digits_weights), "--steps", "1", "--no-progress"]
    cases = {
        "unknown data": (["eval", str(tiny_run), "--data", "nope", *fx], "unknown dataset"),
        "one sample": (["eval", str(tiny_run), "--n", "1", *fx], "at least 6 samples"),
        "zero samples": (["eval", str(tiny_run), "--n", "0", *fx], "must be positive"),
        "no checkpoints": (["eval", str(nockpt), *fx], "no checkpoints"),
        "not a run": (["eval", str(tmp_path), *fx], "not a run folder"),
        "missing weights": (["eval", str(tiny_run), "--weights", str(tmp_path / "x.safetensors")], "not found"),
    }
    for case, (args, words) in cases.items():
        code = main(args)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (case, err)
    with pytest.raises(UserError, match="not valid JSON.*fix or delete it"):
        update_eval_file(corrupt, {"fid": 1.0})


def test_eval_nll_only_stores_the_bound_beside_the_sample_metrics(tiny_run, capsys):
    """`difflab eval --nll-only` adds an 'nll' block (bits/dim on test digits) and keeps what is there."""
    (tiny_run / EVAL_FILE).write_text(json.dumps({"fid": 1.5}))
    code = main(["eval", str(tiny_run), "--nll-only", "--nll-n", "8", "--nll-strata", "4", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    m = json.loads((tiny_run / EVAL_FILE).read_text())
    assert m["fid"] == 1.5 and m["nll"]["n"] == 8 and m["nll"]["strata"] == 4
    assert m["nll"]["data"] == "digits (test split)" and m["nll"]["checkpoint_step"] == 3
    # a bound in bits/dim of 8-bit data: positive and finite; its parts are in it
    assert 0 < m["nll"]["prior_bpd"] + m["nll"]["decoder_bpd"] < m["nll"]["bpd"] < 64
    assert len(m["nll"]["t"]) == len(m["nll"]["kl_bpd"]) == m["nll"]["exact_head"] + 4  # exact head, 4 strata
    assert "NLL bound" in out.out and "bits/dim" in out.out
    assert main(["eval", str(tiny_run), "--nll-only", "--nll-n", "1", "--no-progress"]) == 2
    assert "at least 2 test images" in capsys.readouterr().err


def test_eval_and_fid_of_a_handful_of_samples_are_honest_or_one_line_errors(tiny_run, digits_weights, capsys):
    """--n 6 (the least PRDC allows) prints every caveat; --n 5 and fid --n 1 are one-line errors; fid --n 2
    prints a finite number."""
    fx = ["--data", "digits", "--steps", "1", "--weights", str(digits_weights), "--no-progress"]
    assert main(["eval", str(tiny_run), "--n", "6", *fx]) == 0
    out = capsys.readouterr().out
    assert "one subset of 6: no spread; --n 2000 gives one" in out and "+-" not in out
    assert "only 6 samples in 128 dimensions: singular covariance" in out and "only 6 images for k=5 balls" in out
    m = json.loads((tiny_run / EVAL_FILE).read_text())
    assert m["kid_std"] is None and m["kid_se"] is None and set(m["notes"]) == {"fid", "kid", "prdc"}
    for args, words in ((["eval", str(tiny_run), "--n", "5", *fx], "at least 6 samples"),
                        (["fid", str(tiny_run), "--n", "1", "--data", "digits", "--steps", "1",
                          "--features", str(digits_weights)], "at least 2 generated images")):
        assert main(args) == 2
        err = capsys.readouterr().err  # `difflab fid` has no --no-progress: its sampling bar comes first
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and words in errors[0] and "Traceback" not in err, err
    assert main(["fid", str(tiny_run), "--n", "2", "--data", "digits", "--steps", "1",
                 "--features", str(digits_weights)]) == 0
    fid = float(capsys.readouterr().out.split()[1])
    assert np.isfinite(fid) and fid > 0
