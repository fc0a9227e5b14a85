"""Text-to-image: caption conditioning of the UNet, the training task, prompts on the command line."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import grids, io
from difflab.cli import main
from difflab.config import apply_overrides, load_config
from difflab.models.text_encoders import build_text_encoder
from difflab.models.unet import UNet
from difflab.tasks import load_run
from difflab.tasks.text_to_image import TOKENIZER_FILE, TextToImageTask, build_text_unet, default_prompts

from conftest import ROOT, TINY

SHAPES = ["data.name=shapes", "data.size=256", "model.text_encoder=scratch", "model.text_width=32",
          "model.text_layers=1", "model.text_heads=2", "model.patch_size=2", *TINY]
PROMPTS = ["a large red circle in the center", "a small blue square at the top left"]


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero weights everywhere (a fresh UNet's zero-initialised output would hide the condition)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_pooled_condition_and_drop():
    torch.manual_seed(0)
    net = UNet(in_channels=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
               num_heads=2, context_dim=8, pooled_dim=6)
    _randomise(net)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0])
    ctx, pooled = torch.randn(2, 3, 8), torch.randn(2, 6)
    out = net(x, t, context=ctx, pooled=pooled)
    assert not torch.allclose(out, net(x, t, context=ctx, pooled=pooled + 1)), "the pooled vector must matter"
    drop = torch.ones(2, dtype=torch.bool)
    dropped = net(x, t, context=ctx, pooled=pooled, drop=drop)
    assert torch.allclose(dropped, net(x, t, context=-ctx, pooled=5 * pooled, drop=drop)), "dropped = null condition"
    assert torch.allclose(dropped, net(x, t), atol=1e-5), "no condition = the null condition"


def test_scratch_encoder_trains_jointly():
    cfg = apply_overrides(load_config(), SHAPES)
    encoder = build_text_encoder("scratch", texts=PROMPTS, width=32, layers=1, heads=2)
    model = build_text_unet(cfg, 3, encoder)
    _randomise(model.unet)
    text = encoder.tokenize(PROMPTS)
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([100.0, 900.0]), **text)
    out.square().mean().backward()
    grads = [p.grad for p in model.text_encoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("t2i") / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "40", "--set", *SHAPES,
                 "train.lr=3e-3"]) == 0
    return run


def test_training_writes_vocabulary_and_loss_falls(t2i_run):
    assert (t2i_run / TOKENIZER_FILE).is_file()
    losses = [r["loss"] for r in io.read_metrics(t2i_run)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_guidance_zero_ignores_the_prompt(t2i_run):
    """w = 0 is the unconditional model: the prompt (even an empty one) must not change the samples."""
    run = load_run(t2i_run)
    a = run.sample(2, cond=PROMPTS, guidance=0.0, steps=3, progress=False).data
    b = run.sample(2, cond=["", "an unknown zebra"], guidance=0.0, steps=3, progress=False).data
    c = run.sample(2, cond=["", "an unknown zebra"], guidance=3.0, steps=3, progress=False).data
    assert np.array_equal(a, b) and not np.array_equal(b[1], c[1]) and np.array_equal(b[0], c[0])


def test_default_prompts_come_from_the_test_captions(t2i_run):
    cfg = load_config(t2i_run / io.CONFIG_FILE)
    prompts = default_prompts(cfg, 5, seed=3)
    assert len(prompts) == 5 and all(p.startswith("a ") for p in prompts)
    assert prompts == default_prompts(cfg, 5, seed=3)


def test_sample_with_prompts(t2i_run, tmp_path, capsys):
    file = tmp_path / "prompts.txt"
    file.write_text("a small green cross at the top right\n\n")
    out = tmp_path / "s.npz"
    code = main(["sample", str(t2i_run), "--prompt", PROMPTS[0], "--prompt", "", "--prompts", str(file),
                 "--n", "2", "--steps", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    z = np.load(out)
    assert z["images"].shape == (6, 32, 32, 3)
    assert list(z["prompts"]) == [PROMPTS[0]] * 2 + [""] * 2 + ["a small green cross at the top right"] * 2
    assert main(["sample", str(t2i_run), "--prompt", PROMPTS[1], "--n", "3", "--steps", "2",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size[1] >= 64 + grids.CAPTION_HEIGHT  # a row upscaled x2, its caption strip
    assert main(["sample", str(t2i_run), "--prompt", PROMPTS[1], "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / "metadata.jsonl").read_text().count(PROMPTS[1]) == 2


def test_unknown_words_and_long_prompts(t2i_run):
    run = load_run(t2i_run)
    long = " ".join(["red"] * 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = run.sample(2, cond=["a purple hexagon floating", long], steps=2, progress=False).data
    assert images.shape == (2, 32, 32, 3)
    assert any("truncated" in str(w.message) for w in caught)


def test_a_scratch_encoder_cannot_read_longer_prompts_after_training(t2i_run, capsys):
    assert main(["sample", str(t2i_run), "--steps", "2", "--text-max-length", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "retrain with model.text_max_length=32" in err


@pytest.mark.parametrize("args, message", [
    (["--class", "1"], "--prompt"),
    (["--prompts", "/nonexistent/prompts.txt"], "not found"),
])
def test_prompt_errors(t2i_run, capsys, args, message):
    assert main(["sample", str(t2i_run), "--steps", "2", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_prompt_on_a_class_run_is_an_error(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "1", "--set", *TINY]) == 0
    assert main(["sample", str(run), "--prompt", "a cat", "--steps", "2"]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(["sample", str(run), "--steps", "2", "--text-max-length", "32"]) == 2
    assert "no text encoder, so --text-max-length does not apply" in capsys.readouterr().err


def test_captionless_data_is_an_error():
    cfg = apply_overrides(load_config(), [*TINY, "model.text_encoder=scratch"])
    with pytest.raises(Exception, match="no captions"):
        TextToImageTask(cfg)


def test_minilm_encoder_trains_and_stays_out_of_checkpoints(tmp_path):
    run = tmp_path / "minilm"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "2",
                 "--set", *SHAPES, "model.text_encoder=minilm"]) == 0
    ckpt = io.require_checkpoint(run)
    assert (ckpt / io.EMA_FILE).stat().st_size < 20e6  # MiniLM alone is 90 MB
    loaded = load_run(run)
    images = loaded.sample(2, cond=PROMPTS, steps=2, guidance=2.0, progress=False).data
    assert images.shape == (2, 32, 32, 3)
    long = "a really rather large and bright red circle placed right in the very middle of the whole picture"
    with pytest.warns(UserWarning, match="--text-max-length"):  # 20 tokens: cut at the run's 16 ...
        loaded.sample(1, cond=[long], steps=2, progress=False)
    with warnings.catch_warnings(record=True) as caught:  # ... and read whole with the flag
        warnings.simplefilter("always")
        assert main(["sample", str(run), "--prompt", long, "--n", "1", "--steps", "2", "--text-max-length", "32",
                     "--out", str(tmp_path / "long.png")]) == 0  # a frozen MiniLM reads past model.text_max_length
    assert not [w for w in caught if "truncated" in str(w.message)]
    assert main(["sample", str(run), "--prompt", long, "--steps", "2", "--text-max-length", "600"]) == 2


def test_shapes_config_is_the_demo_default():
    from difflab.config import to_dict
    from difflab.demo import demo_config

    assert to_dict(load_config(ROOT / "configs" / "shapes.yaml")) == to_dict(demo_config())


# --- the held-out vocabulary levers (issue 17) ---

def test_paraphrased_captions_draw_training_words_only():
    from difflab.data.shape_words import HELD_OUT_WORDS, parse_prompt, words_of

    cfg = apply_overrides(load_config(), [*SHAPES, "data.captions=paraphrase", "data.caption_variants=4"])
    task = TextToImageTask(cfg)
    assert task.caption_ids.shape == (256, 4)
    attrs = [tuple(a) for a in task_attributes(cfg)]
    for i in range(0, 256, 37):  # every variant of an image describes that image, in training words
        for c in (task.captions[k] for k in task.caption_ids[i].tolist()):
            assert parse_prompt(c) == attrs[i]
            assert not words_of(c) & (HELD_OUT_WORDS["validation"] | HELD_OUT_WORDS["test"])
    g = torch.Generator().manual_seed(0)
    picked = task.caption_of(torch.zeros(200, dtype=torch.long), g)
    assert set(picked.tolist()) == set(task.caption_ids[0].tolist()), "each variant is drawn"
    grammar = TextToImageTask(apply_overrides(load_config(), SHAPES))
    assert grammar.caption_ids.shape == (256, 1)


def task_attributes(cfg):
    from difflab.data import load_dataset

    return load_dataset("shapes", split="train", size=cfg.data.size).attributes.tolist()


def test_paraphrase_needs_shapes(tmp_path, capsys):
    folder = tmp_path / "imgs"
    from difflab.data.shapes import write_shapes_folder

    write_shapes_folder(folder, 4)
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", "--max-steps", "1", "--set", *SHAPES,
                 "data.name=image-folder", f"data.path={folder}", "data.captions=paraphrase"]) == 2
    assert "data.captions=paraphrase" in capsys.readouterr().err


def test_reading_levers_pooled_context_normalised_and_training_noise():
    from difflab.models.text_unet import unit_rms

    encoder = build_text_encoder("scratch", texts=PROMPTS, width=32, layers=1, heads=2)
    text = encoder.tokenize(PROMPTS)
    for levers in (["model.text_context=pooled"], ["model.text_normalize=true"], ["model.text_noise=0.5"]):
        model = build_text_unet(apply_overrides(load_config(), [*SHAPES, *levers]), 3, encoder)
        model.eval()
        context, mask, pooled = model.read(**text)
        states, _, mean = encoder(**text)
        if "model.text_context=pooled" in levers:
            assert context.shape == (2, 1, 32) and mask.all() and torch.equal(context[:, 0], mean)
        elif "model.text_normalize=true" in levers:
            torch.testing.assert_close(context.pow(2).mean(-1), torch.ones(2, states.shape[1]))
            torch.testing.assert_close(pooled, unit_rms(mean))
        else:
            assert torch.equal(context, states), "no noise when sampling"
            model.train()
            noisy, _, _ = model.read(**text)
            ratio = ((noisy - states).pow(2).mean(-1) / states.pow(2).mean(-1)).sqrt()  # (B, L): noise / signal RMS
            assert 0.3 < ratio.mean() < 0.7
