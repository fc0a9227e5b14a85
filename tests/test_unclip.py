"""DALL-E 2's framing (tasks prior and unclip): the prior's networks and stages, a tiny three-stage run trained
by `difflab train`, sampling through prior and decoder, variations, guidance of the prior with every sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from difflab import io
from difflab.cli import main
from difflab.config import Config, apply_overrides
from difflab.data.shapes import random_attributes, render_shapes
from difflab.errors import UserError
from difflab.models.prior import ImageEmbeddingEncoder, PriorMLP, embedding_scale, scaled_embedding
from difflab.models.text_unet import TextConditionedUNet
from difflab.samplers import SAMPLERS
from difflab.tasks import load_run, stages
from difflab.tasks.image import build_unet
from difflab.tasks.prior import PriorRun
from difflab.tasks.text_to_image import TextToImageRun
from difflab.tasks.unclip import UnclipRun, build_decoder

from conftest import TINY

E = 16  # the tiny CLIP's embedding dimension
TINY_UNCLIP = ["task=unclip", "data.name=shapes", "data.size=128", "data.resolution=16", *TINY,
               f"clip.embed_dim={E}", "clip.image_width=8", "clip.text_width=16", "clip.text_layers=1",
               "clip.text_heads=2", "prior.clip_steps=20", "prior.clip_minutes=null", "prior.width=32",
               "prior.blocks=1", "prior.train_steps=80", "prior.train_minutes=null", "prior.batch_size=64",
               "prior.lr=3e-3", "prior.steps=3", "prior.decoder_text=true", "train.max_steps=3",
               "train.max_minutes=null", "sample.steps=2"]
PROMPTS = ["a large red circle in the center", "a small blue square at the top left"]


@pytest.fixture(scope="module")
def unclip_run(tmp_path_factory):
    """A tiny unclip run: RUN/clip, RUN/prior and the decoder, trained by one `difflab train`."""
    run = tmp_path_factory.mktemp("unclip") / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--set", *TINY_UNCLIP]) == 0
    return run


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / io.METRICS_FILE).read_text().splitlines()]


# -- the networks ---------------------------------------------------------------------------------
def test_prior_network_maps_embeddings_to_embeddings_and_drops_to_its_null():
    net = PriorMLP(E, width=32, num_blocks=2)
    x, t, text = torch.randn(5, E), torch.rand(5) * 999, torch.randn(5, E)
    assert net(x, t, text_embed=text).shape == (5, E)
    drop = torch.tensor([True, False, True, False, False])
    out, null = net(x, t, text_embed=text, drop=drop), net(x, t)  # None = the null condition for all
    assert torch.allclose(out[drop], null[drop]) and not torch.allclose(out[~drop], null[~drop])
    with pytest.raises(ValueError):
        net(torch.randn(5, E + 1), t)


def test_scaled_embeddings_have_unit_variance_components():
    z = scaled_embedding(torch.randn(4000, 64))
    assert torch.allclose(z.norm(dim=1), torch.full((4000,), embedding_scale(64)))
    assert z.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)  # E[z_j^2] = |z|^2 / E = 1


@pytest.mark.parametrize("text_dim", [0, 12])
def test_decoder_output_shape_and_null_condition(text_dim):
    encoder = ImageEmbeddingEncoder(E, tokens=3, text_dim=text_dim)
    net = TextConditionedUNet(build_unet(apply_overrides(Config(), TINY), 3, context_dim=E, pooled_dim=E), encoder)
    torch.manual_seed(0)
    with torch.no_grad():  # zero-initialised last layers would hide the condition
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, t, z = torch.randn(2, 3, 16, 16), torch.full((2,), 500.0), torch.randn(2, E)
    text = {"context": torch.randn(2, 5, text_dim), "context_mask": torch.ones(2, 5, dtype=torch.bool)} if text_dim \
        else {}
    context, mask, pooled = encoder(z, **text)
    assert context.shape == (2, 3 + (5 if text_dim else 0), E) and mask.all() and torch.equal(pooled, z)
    out = net(x, t, image_embed=z, **text)
    assert out.shape == (2, 3, 16, 16)
    dropped = net(x, t, image_embed=z, drop=torch.tensor([True, False]), **text)
    null = net(x, t)  # no image embedding: the UNet's learned null condition
    assert torch.allclose(dropped[0], null[0], atol=1e-5) and torch.allclose(dropped[1], out[1], atol=1e-5)
    assert not torch.allclose(out[0], null[0], atol=1e-3)


# -- stages ---------------------------------------------------------------------------------------
def test_stages_train_clip_then_prior_and_the_decoder_names_them():
    cfg = apply_overrides(Config(), TINY_UNCLIP)
    before, main_cfg = stages(cfg)
    assert [s.name for s in before] == ["clip", "prior"]
    clip_cfg, prior_cfg = (s.config for s in before)
    assert clip_cfg.task == "clip" and clip_cfg.clip.embed_dim == E and clip_cfg.train.max_steps == 20
    assert prior_cfg.task == "prior" and prior_cfg.prior.clip_run == "../clip"  # RUN/prior/../clip = RUN/clip
    assert (prior_cfg.diffusion.prediction, prior_cfg.train.max_steps, prior_cfg.sample.clip_x0) == ("x0", 80, False)
    assert (main_cfg.prior.clip_run, main_cfg.prior.prior_run, main_cfg.diffusion.prediction) == ("clip", "prior",
                                                                                                  "eps")
    assert stages(main_cfg)[0][0].name == "clip"  # a stage's own name is the stage (a --resume re-checks it)
    trained = apply_overrides(cfg, ["prior.clip_run=/runs/clip", "prior.prior_run=/runs/prior"])
    assert stages(trained)[0] == []
    with pytest.raises(UserError, match="must use its CLIP"):
        stages(apply_overrides(cfg, ["prior.prior_run=/runs/prior"]))
    with pytest.raises(UserError, match="would not sample"):
        stages(apply_overrides(cfg, ["prior.sampler=fast"]))  # before the CLIP stage spends minutes


# -- a trained run --------------------------------------------------------------------------------
def test_three_runs_and_the_prior_learns(unclip_run):
    assert all(io.is_finished(f) for f in (unclip_run / "clip", unclip_run / "prior", unclip_run))
    prior = load_run(unclip_run / "prior")
    assert isinstance(prior, PriorRun) and prior.config.prior.clip_run == "../clip"
    assert prior.dim == prior.clip.config.clip.embed_dim == E
    assert prior.model(torch.randn(3, E), torch.ones(3)).shape == (3, E)  # output dimension = CLIP's
    losses = _losses(unclip_run / "prior")
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


def test_save_load_round_trip(unclip_run):
    run = load_run(unclip_run)
    assert isinstance(run, UnclipRun) and run.config.prior.decoder_text
    saved = load_file(io.require_checkpoint(unclip_run) / io.EMA_FILE)
    state = run.model.state_dict()
    assert set(saved) == set(state) and all(torch.equal(saved[k], state[k]) for k in saved)
    rebuilt = build_decoder(run.config, 3, run.clip)
    rebuilt.load_state_dict(saved)
    first = run.sample(2, cond=PROMPTS, steps=2, seed=4, progress=False).data
    again = load_run(unclip_run).sample(2, cond=PROMPTS, steps=2, seed=4, progress=False).data
    assert first.shape == (2, 16, 16, 3) and first.dtype == np.uint8 and np.array_equal(first, again)


def test_metrics_are_the_text_to_image_ones():
    assert UnclipRun.metrics is TextToImageRun.metrics and UnclipRun.prompt_metrics is TextToImageRun.prompt_metrics


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_prior_guidance_works_with_every_sampler(unclip_run, sampler):
    prior = load_run(unclip_run / "prior")
    prompts = PROMPTS * 2

    def draw(texts, guidance):
        return prior.embeddings(texts, sampler=sampler, steps=3, seed=1, guidance=guidance, progress=False)

    guided = draw(prompts, 4.0)
    assert guided.shape == (4, E) and torch.isfinite(guided).all()
    assert torch.allclose(guided.norm(dim=1), torch.full((4,), embedding_scale(E)), atol=1e-4)
    assert not torch.allclose(guided, draw(prompts, 1.0), atol=1e-3)
    # guidance 0 is the unconditional prior: the same draws as empty prompts (the learned null)
    assert torch.allclose(draw(prompts, 0.0), draw([""] * 4, 1.0), atol=1e-4)


def test_sample_runs_text_prior_decoder(unclip_run, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", str(unclip_run), "--prompt", PROMPTS[0], "--prompt", "", "--n", "2", "--steps", "2",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    with np.load(out) as f:
        assert f["images"].shape == (4, 16, 16, 3) and list(f["prompts"]) == [PROMPTS[0]] * 2 + [""] * 2
    assert main(["sample", str(unclip_run), "--n", "3", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size[0] > 16
    guided = ["sample", str(unclip_run), "--prompt", PROMPTS[1], "--n", "2", "--steps", "2", "--prior-guidance", "3",
              "--prior-steps", "2"]
    assert main([*guided, "--out", str(tmp_path / "guided.npz")]) == 0
    run = load_run(unclip_run)
    direct = run.sample(2, cond=[PROMPTS[1]] * 2, steps=2, prior_guidance=3.0, prior_steps=2, progress=False).data
    with np.load(tmp_path / "guided.npz") as f:  # the flags reach the prior
        assert np.array_equal(f["images"], direct)
    capsys.readouterr()
    assert main([*guided[:-1], "0", "--out", str(tmp_path / "no.npz")]) == 2
    assert "prior's steps must be positive" in capsys.readouterr().err and not (tmp_path / "no.npz").exists()
    assert main([*guided, "--text-max-length", "40"]) == 2  # CLIP's text tower learned its positions
    assert "retrain the CLIP with clip.max_length=40" in capsys.readouterr().err
    assert Image.open(tmp_path / "g.png").size[0] > 16
    assert main(["sample", str(unclip_run / "prior"), "--prompt", PROMPTS[1], "--n", "3",
                 "--out", str(tmp_path / "z.npz")]) == 0
    with np.load(tmp_path / "z.npz") as f:  # the prior alone: unit CLIP image embeddings
        assert f["embeddings"].shape == (3, E) and np.allclose(np.linalg.norm(f["embeddings"], axis=1), 1, atol=1e-5)


def test_prior_metrics_in_clip_space(unclip_run):
    prior = load_run(unclip_run / "prior")
    samples = prior.sample(16, seed=2, progress=False)
    m = prior.metrics(samples)
    assert m["data"] == "shapes (test split)" and 0 <= m["clip_retrieval"] <= 1 and 0 <= m["clip_score"] <= 100
    assert m["clip_retrieval_chance"] == pytest.approx(1 / len(set(samples.conditions["prompts"])))
    assert m["clip_score_real"] > m["clip_score_mismatched"]  # the CLIP it samples in tells pairs apart


def test_variations_writes_n_images(unclip_run, tmp_path, capsys):
    image = render_shapes(random_attributes(1, seed=5), resolution=40, seed=0)[0]
    Image.fromarray(image[:, :30]).save(tmp_path / "in.png")  # not square, not the run's side
    out = tmp_path / "v.npz"
    assert main(["variations", str(unclip_run), str(tmp_path / "in.png"), "--n", "3", "--steps", "2",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    with np.load(out) as f:
        assert f["images"].shape == (3, 16, 16, 3) and len({a.tobytes() for a in f["images"]}) == 3
    assert main(["variations", str(unclip_run), str(tmp_path / "in.png"), "--n", "5", "--steps", "2",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size == (3 * 18 + 2, 2 * 18 + 2)  # 5 cells of 16 + 2 px: 3 x 2
    before = sorted(tmp_path.iterdir())
    capsys.readouterr()
    assert main(["variations", str(unclip_run), str(tmp_path / "in.png"), "--out", str(tmp_path / "v.jpg")]) == 2
    assert "use a .png grid" in capsys.readouterr().err and sorted(tmp_path.iterdir()) == before


# -- a decoder below the output's side, then an upsampler (DALL-E 2's 64x64 decoder + upsamplers) -------------
UPSAMPLED = ["data.resolution=32", "prior.decoder_resolution=16", 'prior.upsampler_overrides=["train.max_steps=3","sample.steps=2"]']


def test_a_smaller_decoder_adds_the_upsampler_stage():
    cfg = apply_overrides(Config(), [*TINY_UNCLIP, *UPSAMPLED])
    before, main_cfg = stages(cfg)
    assert [s.name for s in before] == ["clip", "prior", "upsampler"]
    up = before[2].config
    assert (up.task, up.model.text_encoder, up.super_res.low_resolution, up.data.resolution) == (
        "super-resolution", "none", 16, 32)
    assert (up.train.max_steps, up.sample.steps, up.prior.upsampler_overrides) == (3, 2, ())
    assert main_cfg.prior.upsampler_run == "upsampler" and stages(cfg)[0][1].name == "prior"
    assert [s.name for s in stages(apply_overrides(cfg, ["prior.upsampler_run=/runs/sr"]))[0]] == ["clip", "prior"]
    with pytest.raises(UserError, match="must divide data.resolution=32"):
        stages(apply_overrides(cfg, ["prior.decoder_resolution=12"]))
    with pytest.raises(UserError, match="prior.upsampler_overrides: unknown config key"):
        stages(apply_overrides(cfg, ['prior.upsampler_overrides=["train.nope=1"]']))


@pytest.fixture(scope="module")
def upsampled_run(unclip_run):
    """The tiny unclip's CLIP and prior (16x16), a decoder at 16x16 and an upsampler stage 16 -> 32."""
    run = unclip_run.parent / "upsampled"
    assert main(["train", "--out", str(run), "--no-progress", "--set", *TINY_UNCLIP, *UPSAMPLED,
                 f"prior.clip_run={unclip_run / 'clip'}", f"prior.prior_run={unclip_run / 'prior'}"]) == 0
    return run


def test_the_decoder_samples_small_and_the_upsampler_brings_it_to_the_output_side(upsampled_run, tmp_path):
    run = load_run(upsampled_run)
    assert isinstance(run, UnclipRun) and run.decoder_shape == (3, 16, 16) and run.image_shape == (3, 32, 32)
    assert run.upsampler is not None and run.upsampler.factor == 2 and (upsampled_run / "upsampler").is_dir()
    s = run.sample(2, cond=PROMPTS, seed=1, progress=False)
    assert s.data.shape == (2, 32, 32, 3) and list(s.conditions["prompts"]) == PROMPTS
    assert np.array_equal(s.data, load_run(upsampled_run).sample(2, cond=PROMPTS, seed=1, progress=False).data)
    z = run.prior.embeddings(PROMPTS, steps=2, progress=False)
    low = run._images(run.draw(2, run.decoder_shape, run.decoder_condition(z, PROMPTS), seed=0, progress=False))
    assert low.shape == (2, 16, 16, 3)
    image = render_shapes(random_attributes(1, seed=5), resolution=24, seed=0)[0]
    assert run.variations(image, 2, steps=2).data.shape == (2, 32, 32, 3)


def test_an_upsampler_of_other_sides_is_refused(upsampled_run, unclip_run, capsys):
    from difflab.tasks.unclip import load_upsampler

    cfg = load_run(upsampled_run).config
    with pytest.raises(UserError, match="takes 16x16 images to 32x32, but the decoder .* makes 8x8"):
        load_upsampler(upsampled_run, apply_overrides(cfg, ["prior.decoder_resolution=8"]), "cpu")
    with pytest.raises(UserError, match="is a prior run: name a super-resolution run"):
        load_upsampler(upsampled_run, apply_overrides(cfg, [f"prior.upsampler_run={unclip_run / 'prior'}"]), "cpu")
