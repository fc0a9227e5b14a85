"""Latent diffusion (task latent-text-to-image): one command trains the autoencoder stage and the denoiser on its
scaled latents; sampling decodes them (here tiny: 4x4x4 latents of 16x16 shapes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from difflab import io
from difflab.cli import main
from difflab.config import apply_overrides, load_config
from difflab.tasks import build_task, load_run, stages
from difflab.tasks.autoencoder import LATENTS_FILE, encode_means
from difflab.tasks.latent_text_to_image import LatentTextToImageRun

from conftest import ROOT, TINY

LATENT = ["task=latent-text-to-image", "data.name=shapes", "data.size=64", "data.resolution=16",
          "model.text_encoder=scratch", "model.text_width=16", "model.text_layers=1", "model.text_heads=2",
          "autoencoder.base_channels=8", "autoencoder.max_channels=16", "autoencoder.norm_groups=4",
          "autoencoder.scale_images=64", "sample.clip_x0=false", *TINY]


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("latent") / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "3", "--set", *LATENT]) == 0
    return run


def test_one_command_trains_the_autoencoder_stage_then_the_latent_denoiser(latent_run):
    assert io.is_finished(latent_run / "autoencoder") and io.is_finished(latent_run)
    saved = (latent_run / "config.yaml").read_text()
    assert "task: latent-text-to-image" in saved and "autoencoder_run: autoencoder" in saved
    assert "task: autoencoder" in (latent_run / "autoencoder" / "config.yaml").read_text()


def test_the_denoiser_trains_on_latents_scaled_by_the_runs_stored_scale(latent_run):
    cfg = apply_overrides(load_config(None), LATENT)
    _, main_cfg = stages(cfg)
    task = build_task(main_cfg, latent_run)
    scale = json.loads((latent_run / "autoencoder" / LATENTS_FILE).read_text())["latent_scale"]
    assert task.scale == pytest.approx(scale)
    assert task.latents.shape[1:] == (4, 4, 4)  # (c, H/f, W/f): 16x16 images, f = 4
    # the cached latents are the scaled means of q(z|x) of the training images
    from difflab.tasks.image import load_images
    images = load_images(replace_channels(main_cfg)).images[:8]
    assert torch.allclose(task.latents[:8], encode_means(task.autoencoder, images) * scale, atol=1e-5)
    x0, cond = task.batch(8, torch.Generator().manual_seed(0))
    assert x0.shape == (8, 4, 4, 4) and "drop" in cond


def replace_channels(cfg):
    from dataclasses import replace
    return replace(cfg, data=replace(cfg.data, channels=3))


def test_the_loss_falls(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "60", "--set", *LATENT,
                 "train.lr=3e-3", "model.autoencoder_overrides=[train.max_steps=20]"]) == 0
    losses = [r["loss"] for r in io.read_metrics(run)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_sampling_decodes_latents_into_images(latent_run, tmp_path):
    run = load_run(latent_run)
    assert isinstance(run, LatentTextToImageRun) and run.sample_shape == (4, 4, 4) and run.image_shape == (3, 16, 16)
    out = tmp_path / "s.npz"
    assert main(["sample", str(latent_run), "--prompt", "a large red circle in the center", "--n", "3", "--steps", "2",
                 "--out", str(out)]) == 0
    z = np.load(out)
    assert z["images"].shape == (3, 16, 16, 3) and z["images"].dtype == np.uint8


def test_a_named_autoencoder_run_is_used_without_a_stage(latent_run, tmp_path):
    cfg = apply_overrides(load_config(None), [*LATENT, f"model.autoencoder_run={latent_run / 'autoencoder'}"])
    before, _ = stages(cfg)
    assert before == []
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "2", "--set", *LATENT,
                 f"model.autoencoder_run={latent_run / 'autoencoder'}"]) == 0
    assert not (run / "autoencoder").exists()
    assert load_run(run).sample(2, steps=2, progress=False).data.shape == (2, 16, 16, 3)


def test_the_shipped_config_loads():
    cfg = load_config(ROOT / "configs" / "shapes64_latent.yaml")
    before, main_cfg = stages(cfg)
    assert [s.name for s in before] == ["autoencoder"] and before[0].config.task == "autoencoder"
    assert before[0].config.train.max_minutes == 10.0 and main_cfg.train.max_minutes == 15.0


def test_resume_after_a_kill_in_the_stage_knows_the_runs_kind(tmp_path, monkeypatch):
    """The run's config.yaml is written before its stages train, so `--resume` without CONFIG continues it."""
    import difflab.train as train_module

    run = tmp_path / "run"
    real = train_module._Trainer.train_step

    def interrupted(self):  # Ctrl-C while the autoencoder stage trains, after its first checkpoint
        if self.out.name == "autoencoder" and self.step == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(train_module._Trainer, "train_step", interrupted)
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "3", "--set", *LATENT,
                 "train.checkpoint_every=1"]) == 130
    assert "task: latent-text-to-image" in (run / "config.yaml").read_text()
    assert not io.is_finished(run / "autoencoder") and io.latest_checkpoint(run) is None
    monkeypatch.setattr(train_module._Trainer, "train_step", real)
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert io.is_finished(run / "autoencoder") and io.is_finished(run)


def test_a_refused_multi_stage_train_leaves_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--set", *LATENT, "model.autoencoder_overrides=[x=1]"]) == 2
    assert "model.autoencoder_overrides" in capsys.readouterr().err and not run.exists()
