"""Imagen's pieces: dynamic thresholding for every sampler, the super-resolution stage (noise-conditioning
augmentation, tiles), the cascade (base 16x16 -> super-resolution 64x64) and `difflab upscale`."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import io
from difflab.cli import main
from difflab.config import apply_overrides, load_config
from difflab.denoisers import dynamic_threshold, thresholded
from difflab.models.super_resolution import LowResConditionedUNet
from difflab.models.text_encoders import build_text_encoder
from difflab.models.unet import UNet
from difflab.samplers import SAMPLERS, sample
from difflab.schedules import make_schedule
from difflab.tasks import build_task, load_run, stages
from difflab.tasks import is_stage_name as is_stage
from difflab.tasks.cascade import CascadeRun, base_config
from difflab.tasks.super_resolution import (LowResolution, SuperResolutionRun, SuperResolutionTask,
                                            build_super_resolution_net, cut_tiles, low_res_condition, sampling_level,
                                            stitch_tiles)
from difflab.tasks.text_to_image import TextToImageRun, prompt_condition

from conftest import ROOT, TINY

TEXT = ["data.name=shapes", "data.size=64", "model.text_encoder=scratch", "model.text_width=16", "model.text_layers=1",
        "model.text_heads=2", *TINY, "train.batch_size=8", "sample.steps=3"]
# 16x16 base (patch 2) -> 64x64 super-resolution (patch 4: a 16x16 grid of positions, cheap on a CPU)
CASCADE = ["task=cascade", *TEXT, "data.resolution=64", "model.patch_size=4", "train.lr=3e-3",
           "super_res.low_resolution=16", 'cascade.base_overrides=["model.patch_size=2","train.max_steps=6"]']
PROMPTS = ["a large red circle in the center", "a small blue square at the top left"]


# -- dynamic thresholding ----------------------------------------------------------------------
def test_dynamic_threshold_bounds_and_percentile():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 8, 8, generator=g) * 4  # far out of [-1, 1]
    y = dynamic_threshold(x0, 99.5)
    assert y.abs().max() <= 1 + 1e-6
    s = np.percentile(np.abs(x0.numpy()).reshape(5, -1), 99.5, axis=1)  # numpy's percentile, linear
    expected = np.clip(x0.numpy(), -s[:, None, None, None], s[:, None, None, None]) / s[:, None, None, None]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(y.abs().flatten(1).max(1).values, torch.ones(5))  # the values above s are clipped to s


def test_dynamic_threshold_leaves_images_in_range_alone_and_works_on_any_rank():
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1  # s <= 1 for every sample
    assert torch.equal(dynamic_threshold(x0, 99.5), x0)
    mixed = torch.stack([torch.full((10,), 0.5), torch.linspace(-3, 3, 10)])  # (B, D): one in range, one not
    out = dynamic_threshold(mixed, 100)
    assert torch.equal(out[0], mixed[0]) and torch.allclose(out[1], mixed[1] / 3)
    with pytest.raises(Exception, match=r"\(0, 100\]"):
        dynamic_threshold(mixed, 0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_with_dynamic_thresholding(name):
    """A denoiser whose x0_hat is 3x too large: thresholded, every sampler ends inside [-1, 1]; not, outside."""
    schedule = make_schedule("cosine", 100)

    def loud(x_t, t, cond=None):
        return 3 * torch.tanh(x_t)

    g = torch.Generator().manual_seed(0)
    shape = (4, 3, 8, 8)
    x = sample(name, thresholded(loud, 99.5), shape, schedule, steps=4, generator=g)
    assert torch.isfinite(x).all() and x.abs().max() <= 1 + 1e-4
    raw = sample(name, loud, shape, schedule, steps=4, generator=torch.Generator().manual_seed(0))
    assert raw.abs().max() > 1.5


# -- the super-resolution network and its condition --------------------------------------------
def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_network_reads_the_low_resolution_image_and_the_augmentation_level():
    net = LowResConditionedUNet(UNet(in_channels=6, out_channels=3, base_channels=16, channel_mult=(1, 2),
                                     num_res_blocks=1, attention_levels=(), num_heads=2))
    _randomise(net)
    x, t, low = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 500.0]), torch.randn(2, 3, 16, 16)
    out = net(x, t, low_res=low, aug_t=torch.tensor([-1.0, -1.0]))
    assert out.shape == (2, 3, 16, 16)
    assert not torch.allclose(out, net(x, t, low_res=low, aug_t=torch.tensor([300.0, 300.0]))), "level unused"
    assert not torch.allclose(out, net(x, t, low_res=-low, aug_t=torch.tensor([-1.0, -1.0]))), "image unused"


def test_guidance_drops_the_caption_never_the_low_resolution_image():
    cfg = apply_overrides(load_config(), TEXT)
    encoder = build_text_encoder("scratch", texts=PROMPTS, width=16, layers=1, heads=2)
    net = build_super_resolution_net(cfg, 3, encoder)
    _randomise(net)
    x, t, low = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 500.0]), torch.randn(2, 3, 16, 16)
    text, level, drop = encoder.tokenize(PROMPTS), torch.zeros(2), torch.ones(2, dtype=torch.bool)
    dropped = net(x, t, low_res=low, aug_t=level, drop=drop, **text)
    assert torch.allclose(dropped, net(x, t, low_res=low, aug_t=level, drop=drop, **encoder.tokenize(["", "x"])))
    assert not torch.allclose(dropped, net(x, t, low_res=-low, aug_t=level, drop=drop, **text))


def test_low_res_condition_is_the_forward_process_at_the_level():
    schedule = make_schedule("cosine", 1000)
    x_low = torch.rand(3, 3, 4, 4) * 2 - 1
    eps = torch.randn(3, 3, 4, 4)
    clean = low_res_condition(x_low, torch.zeros(3), eps, schedule, 16, "bilinear")
    up = torch.nn.functional.interpolate(x_low, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(clean["low_res"], up) and torch.equal(clean["aug_t"], torch.full((3,), -1.0))
    noisy = low_res_condition(x_low, torch.full((3,), 0.5), eps, schedule, 4, "bilinear")["low_res"]
    alpha_bar = schedule.alpha_bar_at(torch.tensor([499.0])).float()  # t_s = 0.5 T - 1
    assert torch.allclose(noisy, alpha_bar.sqrt() * x_low + (1 - alpha_bar).sqrt() * eps, atol=1e-5)


def test_training_levels_and_the_ablation():
    cfg = apply_overrides(load_config(), [*TEXT, "task=super-resolution", "data.resolution=32",
                                          "super_res.aug_max=0.3"])
    task = build_task(cfg)
    assert isinstance(task, SuperResolutionTask) and task.config.task == "super-resolution"
    g = torch.Generator().manual_seed(0)
    s = task.levels(256, g, torch.device("cpu"))
    assert 0 <= s.min() and s.max() <= 0.3 and s.std() > 0.05
    x0, cond = task.batch(8, g)
    assert cond["low_res"].shape == x0.shape == (8, 3, 32, 32) and cond["aug_t"].shape == (8,)
    text = set(task.inner.encoder.tokenize(["a cat"]))
    assert set(cond) == {"low_res", "aug_t", "drop", *text}  # the caption and its dropout ride along
    off = SuperResolutionTask(replace(cfg, super_res=replace(cfg.super_res, noise_aug=False)))
    assert torch.equal(off.levels(16, g, torch.device("cpu")), torch.zeros(16))
    assert sampling_level(off.config) == 0 and sampling_level(task.config) == task.config.super_res.aug_level
    with pytest.raises(Exception, match="without noise-conditioning augmentation"):
        sampling_level(off.config, 0.2)


def test_tiles_cut_and_stitch_back():
    image = np.random.default_rng(0).integers(0, 256, (21, 35, 3), dtype=np.uint8)
    tiles, rows, cols = cut_tiles(image, 8)
    assert tiles.shape == (3 * 5, 8, 8, 3) and (rows, cols) == (3, 5)
    assert np.array_equal(tiles[1], image[:8, 8:16])  # row-major
    assert np.array_equal(stitch_tiles(tiles, rows, cols)[:21, :35], image)


# -- the cascade ---------------------------------------------------------------------------------
def test_base_stage_config_is_derived_from_the_cascade():
    cfg = apply_overrides(load_config(), CASCADE)
    before, main_cfg = stages(cfg)
    assert [s.name for s in before] == ["base"] and main_cfg.task == "cascade"
    base = before[0].config
    assert (base.task, base.data.resolution, base.model.patch_size, base.train.max_steps) == ("text-to-image", 16, 2, 6)
    assert base.model.text_encoder == "scratch" and base.cascade.base_overrides == ()
    bad = apply_overrides(cfg, ['cascade.base_overrides=["model.widht=3"]'])
    with pytest.raises(Exception, match="cascade.base_overrides: unknown config key model.widht"):
        base_config(bad)
    assert is_stage("base") and not is_stage("runs/t2i16") and not is_stage("/abs/base")
    with pytest.raises(Exception, match="not a run folder"):
        stages(apply_overrides(cfg, ["cascade.base_run=/nonexistent/t2i"]))


def test_the_shipped_config_builds_both_stages():
    cfg = load_config(ROOT / "configs" / "shapes64_cascade.yaml")
    before, main_cfg = stages(cfg)
    assert main_cfg.task == "cascade" and main_cfg.data.resolution == 64
    assert before[0].config.data.resolution == main_cfg.super_res.low_resolution == 32


@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cascade") / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "80", "--set", *CASCADE]) == 0
    return run


def test_cascade_trains_both_stages_and_the_loss_falls(cascade_run):
    assert io.is_finished(cascade_run / "base") and io.read_run_config(cascade_run / "base").data.resolution == 16
    losses = [r["loss"] for r in io.read_metrics(cascade_run)]
    assert len(losses) == 40 and np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4])


def test_cascade_shapes(cascade_run):
    run = load_run(cascade_run)
    assert isinstance(run, CascadeRun) and isinstance(run.base, TextToImageRun) and run.factor == 4
    low = run.base.sample(2, cond=PROMPTS, steps=2, progress=False)
    assert low.data.shape == (2, 16, 16, 3) and low.data.dtype == np.uint8
    s = run.sample(2, cond=PROMPTS, steps=2, progress=False)
    assert s.data.shape == (2, 64, 64, 3) and s.data.dtype == np.uint8 and list(s.conditions["prompts"]) == PROMPTS
    up = run.upscale(LowResolution(low.data, PROMPTS), steps=2, progress=False)
    assert up.shape == (2, 64, 64, 3)
    assert run.base.model.text_encoder in run.text_encoders()  # --text-max-length reaches the base's prompts


def test_runs_threshold_their_guided_estimate(cascade_run):
    """GaussianRunBase.denoiser: --dynamic-threshold P, else sample.dynamic_threshold; 0 turns it off."""
    base = load_run(cascade_run).base
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    t, cond = torch.full((2,), 900.0), prompt_condition(base.model, PROMPTS, base.device)
    on = base.denoiser(guidance=7.0, dynamic_threshold=99.5)(x_t, t, cond)
    assert on.abs().max() <= 1 + 1e-5
    s = replace(base.config.sample, dynamic_threshold=99.5)
    configured = type(base)(base.folder, replace(base.config, sample=s), base.model, base.checkpoint)
    assert torch.equal(configured.denoiser(guidance=7.0)(x_t, t, cond), on)
    assert torch.equal(configured.denoiser(guidance=7.0, dynamic_threshold=0)(x_t, t, cond),
                       base.denoiser(guidance=7.0)(x_t, t, cond))


def test_sampling_uses_the_augmentation_level(cascade_run):
    run = load_run(cascade_run)
    low = LowResolution(run.base.sample(2, cond=PROMPTS, steps=2, progress=False).data, PROMPTS)
    a = run.upscale(low, steps=2, aug_level=0.0, progress=False)
    assert np.array_equal(a, run.upscale(low, steps=2, aug_level=0.0, progress=False))  # seeded
    assert not np.array_equal(a, run.upscale(low, steps=2, aug_level=0.4, progress=False))
    with pytest.raises(Exception, match=r"\[0, 1\]"):
        run.upscale(low, steps=2, aug_level=1.5, progress=False)


def test_save_load_round_trip(cascade_run):
    a, b = load_run(cascade_run), load_run(cascade_run)
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert state_a.keys() == state_b.keys() and any(k.startswith("aug_embed.") for k in state_a)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a.config == b.config == io.read_run_config(cascade_run)
    assert np.array_equal(a.sample(2, cond=PROMPTS, steps=2, seed=5, progress=False).data,
                          b.sample(2, cond=PROMPTS, steps=2, seed=5, progress=False).data)


def test_difflab_sample_on_a_cascade_writes_64x64_images(cascade_run, tmp_path, capsys):
    out = tmp_path / "folder"
    code = main(["sample", str(cascade_run), "--prompt", PROMPTS[0], "--n", "2", "--steps", "2", "--sr-steps", "1",
                 "--aug-level", "0.2", "--dynamic-threshold", "99.5", "--guidance", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    files = sorted(out.glob("*.png"))
    assert len(files) == 2 and all(Image.open(f).size == (64, 64) for f in files)
    assert (out / "metadata.jsonl").read_text().count(PROMPTS[0]) == 2


def test_difflab_upscale_writes_a_png_four_times_the_size(cascade_run, tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 36, 4), dtype=np.uint8), "RGBA").save(image)
    out = tmp_path / "out.png"
    code = main(["upscale", str(cascade_run), str(image), "--out", str(out), "--prompt", PROMPTS[0], "--steps", "1"])
    assert code == 0, capsys.readouterr().err
    im = Image.open(out)
    assert im.size == (4 * 36, 4 * 20) and im.mode == "RGB"


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    """task super-resolution alone, unconditional (no text encoder), 16 -> 32."""
    run = tmp_path_factory.mktemp("sr") / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "3", "--set", *TINY,
                 "task=super-resolution", "data.name=shapes", "data.size=64", "data.resolution=32",
                 "train.batch_size=8", "sample.steps=2"]) == 0
    return run


def test_super_resolution_run_samples_held_out_images_and_refuses_prompts(sr_run, tmp_path, capsys):
    run = sr_run
    loaded = load_run(run)
    assert isinstance(loaded, SuperResolutionRun) and not loaded.conditional and loaded.factor == 2
    s = loaded.sample(3, seed=1, progress=False)
    assert s.data.shape == (3, 32, 32, 3) and "prompts" not in s.conditions
    assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["images"].shape == (2, 32, 32, 3)
    assert main(["sample", str(run), "--prompt", "a red circle"]) == 2
    assert "difflab upscale" in capsys.readouterr().err
    assert main(["upscale", str(run), str(tmp_path / "s.npz"), "--out", str(tmp_path / "u.png")]) == 2
    assert main(["upscale", str(run), str(_png(tmp_path)), "--out", str(tmp_path / "u.png"), "--prompt", "cat"]) == 2
    assert "takes no prompt" in capsys.readouterr().err
    assert not (tmp_path / "u.png").exists()


def _png(folder):
    path = folder / "small.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    return path


def test_cascade_eval_measures_the_final_images_like_text_to_image(cascade_run, monkeypatch):
    """`difflab eval` of a cascade goes through TextToImageRun.metrics: the image metrics of 64x64 samples and
    the prompt metrics of their prompts (both recorded here instead of computed)."""
    from difflab.evaluate.run_eval import MIN_SAMPLES
    from difflab.measure import evaluate_run
    from difflab.tasks import image as image_task

    seen = {}
    monkeypatch.setattr(image_task.ImageRun, "check_metrics", lambda self, **_: None)
    monkeypatch.setattr(image_task, "evaluate_images",
                        lambda images, **kw: seen.setdefault("images", images.shape) and {"fid": 1.0})
    monkeypatch.setattr(TextToImageRun, "prompt_metrics",
                        lambda self, samples, **kw: seen.setdefault("prompts", len(samples.conditions["prompts"]))
                        and {"clip_score": 2.0})
    m = evaluate_run(cascade_run, n=MIN_SAMPLES, steps=1, write=False, progress=False)
    assert seen == {"images": (MIN_SAMPLES, 64, 64, 3), "prompts": MIN_SAMPLES}
    assert m["fid"] == 1.0 and m["clip_score"] == 2.0 and json.dumps(m)


def test_held_out_images_come_with_their_originals_without_repeats(sr_run):
    from difflab.tasks.super_resolution import downsample
    from difflab.data.images import to_model_range, to_uint8

    run = load_run(sr_run)
    low = run.held_out(12, seed=3)
    assert low.originals.shape == (12, 32, 32, 3) and low.images.shape == (12, 16, 16, 3)
    assert len({o.tobytes() for o in low.originals}) == 12  # drawn without replacement
    again = to_uint8(downsample(to_model_range(torch.from_numpy(low.originals).permute(0, 3, 1, 2)), 16))
    assert np.array_equal(again.permute(0, 2, 3, 1).numpy(), low.images)  # the low images are the originals, averaged


def test_fidelity_compares_with_the_interpolation_the_network_sees(sr_run):
    """PSNR/SSIM of upscaled images against the originals, beside bicubic's on the same low-resolution images."""
    import torch.nn.functional as F
    from difflab.data.images import to_model_range, to_uint8
    from difflab.evaluate.reconstruction import PSNR_CAP_DB

    run = load_run(sr_run)
    low = run.held_out(6, seed=0)
    x = to_model_range(torch.from_numpy(low.images).permute(0, 3, 1, 2))
    bicubic = to_uint8(F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False)).permute(0, 2, 3, 1)
    assert np.array_equal(run.interpolate(low), bicubic.numpy())
    same = run.fidelity(low, run.interpolate(low))
    assert same["baseline"] == "bicubic" and same["psnr"] == same["baseline_psnr"] and same["ssim"] == same["baseline_ssim"]
    perfect = run.fidelity(low, low.originals)
    assert perfect["psnr"] == PSNR_CAP_DB and perfect["ssim"] == pytest.approx(1.0)
    assert perfect["baseline_psnr"] < PSNR_CAP_DB
    with pytest.raises(ValueError, match="originals"):
        run.fidelity(LowResolution(low.images), low.originals)


def test_super_resolution_eval_reports_fidelity_beside_the_baseline(sr_run, monkeypatch):
    from difflab.evaluate.run_eval import MIN_SAMPLES
    from difflab.measure import evaluate_run
    from difflab.tasks import image as image_task

    monkeypatch.setattr(image_task.ImageRun, "check_metrics", lambda self, **_: None)
    monkeypatch.setattr(image_task, "evaluate_images", lambda images, **kw: {"fid": 1.0})
    m = evaluate_run(sr_run, n=MIN_SAMPLES, steps=1, write=False, progress=False)
    assert m["fid"] == 1.0 and m["baseline"] == "bicubic" and m["outputs"] == "upscaled test images"
    assert 0 < m["psnr"] and 0 < m["baseline_psnr"] and -1 <= m["ssim"] <= 1 and json.dumps(m)
    from difflab.evaluate.run_eval import format_table
    assert "PSNR base" in format_table(m) and "bicubic interpolation of the same inputs" in format_table(m)


def test_patches_wider_than_the_channels_warn():
    """A 4x4x3 patch (48 values) packed into 32 channels left a 64x64 stage's samples noisy: training warns."""
    import warnings

    from difflab.tasks.image import warn_narrow_patches

    cfg = load_config(ROOT / "configs" / "shapes.yaml", ["model.patch_size=4"])
    with pytest.warns(UserWarning, match=r"model.patch_size=4 packs 48 pixel values into model.base_channels=32"):
        warn_narrow_patches(cfg, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_narrow_patches(cfg, 1)  # 16 values
        for name in ("shapes.yaml", "shapes64_cascade.yaml", "photos_sr.yaml", "fashion_mnist.yaml"):
            shipped = load_config(ROOT / "configs" / name)
            warn_narrow_patches(shipped, 1 if name.startswith("fashion") else 3)


def test_a_residual_stage_learns_the_scaled_difference_from_the_interpolation():
    """super_res.residual: the plain stage's batch, its target (x0 - up(x_low)) * scale, the scale 1 / std of the
    training residuals (stored in the task's config), the condition alike."""
    from difflab.data.images import to_model_range
    from difflab.tasks.super_resolution import downsample, from_residual, to_residual, upsample

    cfg = apply_overrides(load_config(None), [*TINY, "task=super-resolution", "data.name=shapes", "data.size=16",
                                              "data.resolution=32", "model.text_encoder=none"])
    plain = SuperResolutionTask(cfg).batch(4, torch.Generator().manual_seed(0))
    task = SuperResolutionTask(replace(cfg, super_res=replace(cfg.super_res, residual=True)))
    residual, scale = task.batch(4, torch.Generator().manual_seed(0)), task.config.super_res.residual_scale
    x0, x_low = plain[0], downsample(plain[0], 16)
    assert scale > 1 and torch.allclose(residual[0], (x0 - upsample(x_low, 32, "bicubic")) * scale, atol=1e-5)
    assert torch.allclose(from_residual(residual[0], x_low, task.config), x0, atol=1e-5)
    assert plain[1].keys() == residual[1].keys() and all(torch.equal(plain[1][k], residual[1][k]) for k in plain[1])
    every = to_model_range(task.inner.images)  # the whole training set: its residuals have unit variance
    assert to_residual(every, downsample(every, 16), task.config).std().item() == pytest.approx(1.0, rel=1e-3)


def test_a_residual_run_that_adds_nothing_returns_the_interpolation(sr_run, monkeypatch):
    """A residual stage whose x0 estimate is 0 upscales to exactly the baseline it adds its residual to; its
    denoiser does not clip the residual to [-1, 1]."""
    from difflab.tasks.super_resolution import unclipped

    run = load_run(sr_run)
    run.config = replace(run.config, super_res=replace(run.config.super_res, residual=True, residual_scale=4.0))
    assert run.config.sample.clip_x0 and not unclipped(run.config).sample.clip_x0
    monkeypatch.setattr(run, "denoiser", lambda *a, **k: (lambda x_t, t, cond: torch.zeros_like(x_t)))
    low = run.held_out(5, seed=2)
    out = run.upscale(low, sampler="ddim", steps=3, progress=False)
    assert np.array_equal(out, run.interpolate(low))
    assert run.fidelity(low, out)["psnr"] == run.fidelity(low, out)["baseline_psnr"]
