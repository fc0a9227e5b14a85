"""The KL autoencoder and the VAE: the network's shapes, the loss's KL against its closed form, a short train that
lowers the loss, a save/load round trip, the latent scale stored in the run, PSNR/SSIM against a reference
implementation and hand-computed cases, ``difflab eval`` of reconstructions, and the VAE sampling like any image
run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import difflab.tasks.autoencoder as ae
from difflab import io
from difflab.cli import main
from difflab.config import load_config
from difflab.errors import UserError
from difflab.evaluate.features import load_feature_extractor, train_feature_extractor
from difflab.evaluate.reconstruction import PSNR_CAP_DB, mean_psnr, psnr, reconstruction_metrics, ssim
from difflab.grids import GRID_PAD
from difflab.models.autoencoder import KLAutoencoder, build_autoencoder
from difflab.tasks import build_task, load_run
from difflab.tasks.autoencoder import (LATENTS_FILE, AutoencoderRun, encode_means, kl_to_standard_normal,
                                       latent_scale, load_autoencoder)
from difflab.train import train

from conftest import ROOT

# a tiny autoencoder on digits (8x8, latents 2x2x4): a step takes milliseconds
AE = ["task=autoencoder", "data.name=digits", "autoencoder.base_channels=8", "autoencoder.max_channels=16",
      "train.batch_size=16", "train.warmup_steps=5", "train.log_every=5", "train.checkpoint_every=1000",
      "autoencoder.scale_images=200"]
TRAIN_STEPS = 60
DIGITS_FEATURE_STEPS = 60  # a rough digits extractor (about 1 s): rFID needs features, not accuracy


def _train(out: Path, overrides: list[str], steps: int) -> Path:
    cfg = load_config(None, [*overrides, f"train.max_steps={steps}"])
    train(build_task(cfg), out, progress=False)
    return out


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("ae") / "run", AE, TRAIN_STEPS)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("vae") / "run", [*AE, "task=vae", "autoencoder.recon_loss=l2"], 2)


@pytest.fixture(scope="module")
def digits_features(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fx") / "digits.safetensors"
    return train_feature_extractor("digits", steps=DIGITS_FEATURE_STEPS, out=out, progress=False)


# -- the network -------------------------------------------------------------------------------
@pytest.mark.parametrize("f", [4, 8])
def test_encode_decode_shapes(f):
    model = KLAutoencoder(in_channels=3, latent_channels=4, downsample=f, base_channels=8, max_channels=16)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (2, 4, 32 // f, 32 // f)
    assert model.decode(mean).shape == x.shape
    x_hat, m2, _ = model(x, torch.randn_like(mean))
    assert x_hat.shape == x.shape and torch.equal(m2, mean)
    assert torch.equal(model(x)[0], model.decode(mean))  # no noise: z = the mean
    with pytest.raises(ValueError, match="channels"):
        model.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(UserError, match="multiple of autoencoder.downsample"):
        model.encode(torch.zeros(1, 3, 36 if f == 8 else 30, 36 if f == 8 else 30))


def test_widths_follow_the_config():
    cfg = load_config(None, ["autoencoder.downsample=8", "autoencoder.base_channels=16", "autoencoder.max_channels=32"])
    model = build_autoencoder(cfg.autoencoder, 3)
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {c.out_channels for c in convs} == {16, 32, 2 * 4}  # widths 16, 32, 32, 32 (capped); (mean, logvar)
    assert sum(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in model.encoder.modules()) == 3


def test_kl_matches_the_closed_form_of_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert torch.allclose(kl_to_standard_normal(mean, logvar), expected, atol=1e-5)
    assert torch.allclose(kl_to_standard_normal(torch.zeros(1, 4), torch.zeros(1, 4)), torch.zeros(1))


def test_loss_terms_and_the_kind_default_weight(monkeypatch, digits_features):
    task = build_task(load_config(None, AE))
    assert task.config.autoencoder.kl_weight == 1e-6  # the kind's default, written into the saved config
    assert build_task(load_config(None, [*AE, "task=vae"])).config.autoencoder.kl_weight > 1e-3
    model = task.build_model()
    terms = task.terms(model, task.batch(4, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    assert torch.allclose(terms["loss"], terms["recon"] + 1e-6 * terms["kl"])
    # the perceptual term: the dataset's FID features (frozen, never part of the model's weights)
    monkeypatch.setattr(ae, "get_feature_extractor", lambda *a, **k: load_feature_extractor(digits_features))
    task = build_task(load_config(None, [*AE, "autoencoder.perceptual_weight=0.5"]))
    model = task.build_model()
    terms = task.terms(model, task.batch(4, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    assert terms["perceptual"] > 0
    assert torch.allclose(terms["loss"], terms["recon"] + 1e-6 * terms["kl"] + 0.5 * terms["perceptual"])
    terms["loss"].backward()
    assert all(p.grad is None for p in task.phi.parameters())
    assert not any(k.startswith("phi") for k in model.state_dict())


# -- training, saving, the latent scale --------------------------------------------------------
def test_a_short_train_lowers_the_loss(ae_run):
    rows = io.read_metrics(ae_run)
    assert rows[-1]["step"] == TRAIN_STEPS
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"], [r["loss"] for r in rows]


def test_save_load_round_trip(tmp_path):
    """Weights written to a run folder come back exactly: identical reconstructions after load."""
    cfg = build_task(load_config(None, AE)).config
    torch.manual_seed(3)
    model = build_autoencoder(cfg.autoencoder, cfg.data.channels)
    for p in model.parameters():  # a model that is not the zero-initialised identity of a fresh one
        p.data.normal_(0, 0.1)
    run = tmp_path / "run"
    io.init_run(run, cfg)
    weights = {io.MODEL_FILE: model.state_dict(), io.EMA_FILE: model.state_dict()}
    io.save_checkpoint(run, 7, weights, {"step": 7, "finished": True})
    loaded = load_run(run)
    assert isinstance(loaded, AutoencoderRun) and loaded.checkpoint_step == 7
    images = loaded.images("test", 16)
    model.eval().requires_grad_(False)  # as loaded (PyTorch's CPU kernels differ in the last bit otherwise)
    with torch.no_grad():
        x = images.float() / 127.5 - 1
        assert torch.equal(loaded.model.encode(x)[0], model.encode(x)[0])
    assert torch.equal(loaded.reconstruct(images), load_run(run).reconstruct(images))


def test_the_latent_scale_is_computed_once_and_stored(ae_run):
    path = ae_run / LATENTS_FILE
    path.unlink(missing_ok=True)
    model, scale, cfg = load_autoencoder(ae_run)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert cfg.task == "autoencoder" and path.is_file()
    stored = json.loads(path.read_text())
    assert stored["latent_scale"] == pytest.approx(scale) and stored["checkpoint_step"] == TRAIN_STEPS
    run = load_run(ae_run)
    fresh = encode_means(model, run.images("train", 200))  # the same fixed subset of training images
    assert scale == pytest.approx(1 / float(fresh.std()), rel=1e-5)
    assert float((scale * fresh).std()) == pytest.approx(1.0, rel=1e-5)  # what latent diffusion trains on
    path.write_text(json.dumps({**stored, "latent_scale": 123.0}))  # read back, not recomputed
    assert load_autoencoder(ae_run)[1] == 123.0
    path.write_text(json.dumps({**stored, "checkpoint_step": 1, "latent_scale": 123.0}))  # another checkpoint's
    assert latent_scale(run) == pytest.approx(scale, rel=1e-6)
    assert json.loads(path.read_text())["checkpoint_step"] == TRAIN_STEPS


def test_a_broken_latent_file_is_one_line(ae_run):
    path = ae_run / LATENTS_FILE
    text = path.read_text() if path.exists() else None
    try:
        for bad in ("{'latent_scale': 3", json.dumps({"latent_scale": -1.0, "checkpoint_step": 1}), "[1, 2]"):
            path.write_text(bad)
            with pytest.raises(UserError, match="latent file .* delete it"):
                load_autoencoder(ae_run)
    finally:
        path.unlink()
        if text is not None:
            path.write_text(text)


def test_load_autoencoder_refuses_other_kinds(tmp_path):
    run = _train(tmp_path / "img", ["data.name=digits", "model.base_channels=16", "model.channel_mult=[1,2]",
                                    "model.num_res_blocks=1", "model.attention_levels=[]", "train.batch_size=8"], 1)
    with pytest.raises(UserError, match="is an image run, not an autoencoder"):
        load_autoencoder(run)


# -- PSNR and SSIM -----------------------------------------------------------------------------
def _pair(seed: int = 0, shape=(3, 3, 24, 31)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, generator=g).double()
    y = (x + torch.randn(shape, generator=g, dtype=torch.float64) * 25).clamp(0, 255).round()
    return x, y


def test_ssim_and_psnr_match_torchmetrics():
    """torchmetrics averages its SSIM map over the reflect-padded border too; cropped to the positions where the
    whole 11x11 window fits (skimage's and Wang et al.'s mean) the two agree to rounding."""
    tm = pytest.importorskip("torchmetrics.functional.image")
    x, y = _pair()
    _, full = tm.structural_similarity_index_measure(y, x, data_range=255.0, reduction="none", return_full_image=True)
    pad = 5  # (11 - 1) / 2
    reference = full[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(ssim(x, y), reference, atol=1e-12)
    expected = [float(tm.peak_signal_noise_ratio(y[i:i + 1], x[i:i + 1], data_range=255.0)) for i in range(len(x))]
    np.testing.assert_allclose(psnr(x, y), expected, rtol=1e-6)  # torchmetrics: float32 sums


def test_ssim_matches_skimage_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _pair(1, (2, 3, 20, 20))
    for i in range(len(x)):
        a, b = (v[i].permute(1, 2, 0).numpy() for v in (x, y))
        ref = metrics.structural_similarity(a, b, data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False)
        assert ssim(x[i:i + 1], y[i:i + 1])[0] == pytest.approx(ref, abs=1e-9)


def test_ssim_and_psnr_on_hand_computed_cases():
    x = torch.randint(0, 256, (2, 1, 16, 16), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    assert np.allclose(ssim(x, x), 1.0) and np.isinf(psnr(x, x)).all()
    assert mean_psnr(psnr(x, x)) == PSNR_CAP_DB
    # constant images a and b: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 100.0, 140.0, (0.01 * 255) ** 2
    xa, xb = torch.full((1, 3, 12, 12), a), torch.full((1, 3, 12, 12), b)
    assert ssim(xa, xb)[0] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)
    assert psnr(xa, xb)[0] == pytest.approx(10 * math.log10(255 ** 2 / (b - a) ** 2))
    # y = 2 x: sigma_xy = 2 sigma_x^2, sigma_y^2 = 4 sigma_x^2, mu_y = 2 mu_x (hand-computed from the definition)
    small = torch.randint(0, 100, (1, 1, 11, 11), generator=torch.Generator().manual_seed(1)).double()
    w = torch.exp(-(torch.arange(11) - 5.0) ** 2 / (2 * 1.5 ** 2)).double()
    w2 = torch.outer(w, w) / torch.outer(w, w).sum()
    mu = float((w2 * small[0, 0]).sum())
    var = float((w2 * small[0, 0] ** 2).sum()) - mu ** 2
    c2 = (0.03 * 255) ** 2
    expected = (4 * mu * mu + c1) * (4 * var + c2) / ((5 * mu * mu + c1) * (5 * var + c2))
    assert ssim(small, 2 * small)[0] == pytest.approx(expected, rel=1e-10)


def test_small_images_get_a_smaller_window_and_say_so():
    x, y = _pair(2, (8, 1, 8, 8))
    m = reconstruction_metrics(x.to(torch.uint8), y.to(torch.uint8))
    assert m["ssim_window"] == 7 and "7x7" in m["notes"]["ssim"] and m["rfid"] is None
    assert 0 < m["ssim"] < 1 and m["psnr"] == pytest.approx(float(np.mean(psnr(x, y))))


# -- difflab eval, sample, report --------------------------------------------------------------
def test_eval_of_an_autoencoder_prints_psnr_ssim_rfid(ae_run, digits_features, capsys):
    code = main(["eval", str(ae_run), "--n", "64", "--features", str(digits_features), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "64 reconstructions" in out.out and "PSNR (dB)" in out.out and "rFID" in out.out, out.out
    m = json.loads((ae_run / "metrics.json").read_text())
    assert m["outputs"] == "reconstructions" and m["n"] == 64 and m["data"] == "digits (test split)"
    assert 5 < m["psnr"] < 60 and 0 < m["ssim"] <= 1 and m["rfid"] >= 0
    assert m["latent_scale"] == pytest.approx(json.loads((ae_run / LATENTS_FILE).read_text())["latent_scale"])
    assert "sampler" not in m
    # the report shows originals over reconstructions and the numbers
    assert main(["report", str(ae_run), "--no-progress"]) == 0
    html = (ae_run / "report.html").read_text()
    assert "Reconstructions" in html and "PSNR (dB)" in html and "64 test images, reconstructed" in html


def test_an_autoencoder_run_does_not_sample(ae_run, capsys):
    assert main(["sample", str(ae_run)]) == 2
    assert "is an autoencoder run, which cannot sample" in capsys.readouterr().err
    assert main(["eval", str(ae_run), "--n", "8", "--sampler", "ddim"]) == 2
    assert "reconstructs in one pass of its decoder, so --sampler cannot be used" in capsys.readouterr().err


def test_vae_samples_like_an_image_run(vae_run, tmp_path, digits_features, capsys):
    run = load_run(vae_run)
    samples = run.sample(5, seed=3)
    assert samples.data.shape == (5, 8, 8, 1) and samples.data.dtype == np.uint8
    assert np.array_equal(samples.data, run.sample(5, seed=3).data)  # seeded
    assert not np.array_equal(samples.data, run.sample(5, seed=4).data)
    assert (samples.conditions["labels"] == -1).all()
    out = tmp_path / "x.png"
    assert main(["sample", str(vae_run), "--out", str(out), "--n", "16"]) == 0, capsys.readouterr().err
    side = 4 * (8 + GRID_PAD) + GRID_PAD  # a 4 x 4 grid of 8x8 images
    assert Image.open(out).size == (side, side)
    assert main(["sample", str(vae_run), "--steps", "4"]) == 2
    assert "decodes z ~ N(0, I) in one pass of its decoder, so --steps cannot be used" in capsys.readouterr().err
    code = main(["eval", str(vae_run), "--n", "16", "--features", str(digits_features), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    m = json.loads((vae_run / "metrics.json").read_text())
    assert m["outputs"] == "samples" and m["sampler"] == "z ~ N(0, I), decoded" and "steps" not in m
    assert {"fid", "kid", "precision", "psnr", "ssim", "rfid"} <= set(m) and m["recon_n"] == 16
    assert main(["fid", str(vae_run), "--n", "16", "--features", str(digits_features)]) == 0
    assert "FID" in capsys.readouterr().out
    assert main(["report", str(vae_run), "--no-progress"]) == 0
    html = (vae_run / "report.html").read_text()
    assert "decodes z ~ N(0, I)" in html and "Reconstructions" in html and "FID" in html


@pytest.mark.parametrize("name, overrides", [
    ("shapes64_autoencoder.yaml", ["data.size=16", "autoencoder.base_channels=8", "autoencoder.max_channels=16"]),
    ("fashion_vae.yaml", ["data.name=digits"]),  # Fashion-MNIST is not installed everywhere; the same network
])
def test_shipped_configs_build_and_give_a_loss(name, overrides):
    cfg = load_config(ROOT / "configs" / name, [*overrides, "train.batch_size=4", "train.warmup_steps=1"])
    task = build_task(cfg)
    assert task.config.task == name.split("_")[-1].removesuffix(".yaml")
    loss = task.loss(task.build_model(), 4, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
