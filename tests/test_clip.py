"""difflab's own CLIP: the contrastive loss, the encoders, a tiny training run, CLIP score and retrieval, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from difflab import io
from difflab.cli import main
from difflab.config import Config, apply_overrides, dump_config, load_config
from difflab.contrastive import clip_contrastive_loss
from difflab.errors import UserError
from difflab.evaluate.clip_score import (clip_eval, clip_score, clip_score_from_embeddings, distinct_captions,
                                         embed_images, retrieval_accuracy, retrieval_from_embeddings)
from difflab.models.clip import MAX_LOGIT_SCALE, TOKENIZER_FILE, CLIPModel
from difflab.tasks import TASKS, build_task
from difflab.tasks import clip as clip_task
from difflab.tasks.clip import ClipTask, clip_config, evaluate_clip_run, get_default_clip, load_clip
from difflab.train import train

from conftest import ROOT

# A CLIP small enough to learn 16x16 shapes in a few seconds.
TINY_CLIP = ["data.size=1024", "clip.embed_dim=32", "clip.image_width=8", "clip.text_width=32", "clip.text_layers=1",
             "clip.text_heads=2", "train.batch_size=64", "train.max_steps=100", "train.warmup_steps=10",
             "train.checkpoint_every=50", "train.log_every=10", "train.max_minutes=null"]
TINY_ARCH = dict(embed_dim=16, image_width=8, text_width=16, text_layers=1, text_heads=2, max_length=8,
                 temperature=0.07)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("clip") / "run"
    cfg = clip_config("shapes", resolution=16, overrides=TINY_CLIP)
    task = ClipTask(cfg)
    train(task, run, progress=False)
    return run, task


def hand_infonce(logits: np.ndarray, target: np.ndarray) -> float:
    """Mean over rows and columns of -sum_j target_ij log softmax(logits)_ij, written out."""
    def one_side(z: np.ndarray, p: np.ndarray) -> float:
        log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-(p * log_softmax).sum(axis=1).mean())
    return 0.5 * (one_side(logits, target) + one_side(logits.T, target.T))


# -- loss and model ------------------------------------------------------------------------------
def test_loss_equals_hand_written_infonce():
    g = torch.Generator().manual_seed(0)
    image, text = (F.normalize(torch.randn(6, 5, generator=g), dim=-1) for _ in range(2))
    t = torch.tensor(math.log(1 / 0.07))
    logits = (math.exp(float(t)) * image @ text.T).double().numpy()
    expected = hand_infonce(logits, np.eye(6))
    assert float(clip_contrastive_loss(image, text, t)) == pytest.approx(expected, rel=1e-5)
    assert float(clip_contrastive_loss(image, text, t, groups=torch.arange(6))) == pytest.approx(expected, rel=1e-5)
    groups = torch.tensor([0, 1, 0, 2, 1, 3])  # pairs 0,2 and 1,4 share a caption: positives of each other
    same = (groups[:, None] == groups[None, :]).double().numpy()
    expected = hand_infonce(logits, same / same.sum(axis=1, keepdims=True))
    assert float(clip_contrastive_loss(image, text, t, groups=groups)) == pytest.approx(expected, rel=1e-5)


def test_loss_is_lowest_for_matched_pairs():
    e = torch.eye(4)
    t = torch.tensor(math.log(100))
    assert float(clip_contrastive_loss(e, e, t)) < 1e-3 < float(clip_contrastive_loss(e, e.roll(1, 0), t))


def test_logit_scale_starts_at_temperature_and_is_clamped():
    model = CLIPModel(3, 16, 10, **TINY_ARCH)
    assert model.clamped_logit_scale().item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.clamped_logit_scale().item() == pytest.approx(MAX_LOGIT_SCALE)
    assert math.exp(MAX_LOGIT_SCALE) == pytest.approx(100)
    with pytest.raises(UserError, match="temperature"):
        CLIPModel(3, 16, 10, **{**TINY_ARCH, "temperature": 0.0})


def test_encoders_give_unit_vectors():
    model = CLIPModel(3, 16, 10, **TINY_ARCH)
    images = torch.rand(5, 3, 16, 16) * 2 - 1
    tokens = torch.randint(3, 10, (5, 8))
    mask = torch.arange(8)[None, :] < torch.tensor([2, 3, 8, 5, 1])[:, None]  # (5, 8)
    I_e, T_e = model.encode_image(images), model.encode_text(tokens, mask)
    states, pooled = model.text_states(tokens, mask)
    assert I_e.shape == T_e.shape == pooled.shape == (5, 16) and states.shape == (5, 8, 16)
    for e in (I_e, T_e, pooled):
        assert torch.allclose(e.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.equal(pooled, T_e)
    assert not torch.allclose(model.encode_image(images.flip(-1)), I_e)  # the coordinates see left from right


# -- scores from embeddings ------------------------------------------------------------------------
def test_clip_score_formula_on_hand_made_embeddings():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, -2.0]])  # cos 1, 0, 0.6, -1 (-> 0)
    assert clip_score_from_embeddings(image, text) == pytest.approx(100 * (1 + 0 + 0.6 + 0) / 4)
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert retrieval_from_embeddings(image, candidates, torch.tensor([0, 1, 0, 0])) == pytest.approx(0.75)


def test_distinct_captions_keep_first_appearance():
    distinct, index = distinct_captions(["b", "a", "b", "c"])
    assert distinct == ["b", "a", "c"] and index.tolist() == [0, 1, 0, 2]


# -- training and the run folder --------------------------------------------------------------------
def test_tiny_clip_learns_retrieval_far_above_chance(tiny_run):
    run, _ = tiny_run
    m = evaluate_clip_run(run, n=500)
    assert m["retrieval"] > max(0.5, 20 * m["chance"]), m
    assert m["gap"] > 10 and m["clip_score"] > m["clip_score_mismatched"], m
    assert json.loads((run / "metrics.json").read_text())["clip"]["retrieval"] == m["retrieval"]


def test_run_folder_round_trip(tiny_run):
    run, task = tiny_run
    cfg, model, tokenizer = load_clip(run)
    assert cfg.task == "clip" and (cfg.data.resolution, cfg.data.channels) == (16, 3)
    assert tokenizer.vocab == task.tokenizer.vocab
    assert json.loads((run / TOKENIZER_FILE).read_text())["vocab"] == task.tokenizer.vocab
    ema = load_file(str(io.latest_checkpoint(run) / io.EMA_FILE))
    for name, value in model.state_dict().items():
        assert torch.equal(value, ema[name]), name
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    images = task.images[:40].permute(0, 2, 3, 1).numpy()  # (N, H, W, C) uint8
    texts = [tokenizer.decode(t[None], m[None])[0] for t, m in zip(task.tokens[:40], task.mask[:40])]
    assert torch.allclose(embed_images(model, images), embed_images(model, task.images[:40]))
    m = clip_eval(model, tokenizer, images, texts)
    assert m["clip_score"] == pytest.approx(clip_score(model, tokenizer, images, texts), abs=1e-4)
    assert m["retrieval"] == pytest.approx(retrieval_accuracy(model, tokenizer, images, texts))
    assert m["gap"] == pytest.approx(m["clip_score"] - m["clip_score_mismatched"])


def test_clip_task_reads_image_folder_captions(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        if i < 4:
            rows.append(json.dumps({"file_name": f"{i}.png", "text": f"picture number {i % 2}"}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    cfg = clip_config("image-folder", data_path=str(tmp_path), resolution=16)
    task = build_task(cfg)
    assert isinstance(task, ClipTask)
    assert task.images.shape == (4, 3, 16, 16)  # the two uncaptioned images are left out
    assert task.caption_ids.tolist() == [0, 1, 0, 1]
    assert task.run_files()[TOKENIZER_FILE] == task.tokenizer.to_json()


def test_difflab_train_with_task_clip_writes_a_clip_run(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = [o for o in TINY_CLIP if not o.startswith("train.max_steps")]
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "2",
                 "--set", "task=clip", "data.name=shapes", "data.resolution=16", *tiny]) == 0
    cfg, model, tokenizer = load_clip(run)
    assert cfg.task == "clip" and tokenizer.vocab_size > 10


def test_default_clip_is_trained_once(monkeypatch, capsys):
    monkeypatch.setattr(clip_task, "CLIP_DEFAULTS", ("task=clip", *TINY_CLIP, "train.max_steps=5"))
    run = get_default_clip("shapes", resolution=16, channels=3, progress=False)
    assert "training one once" in capsys.readouterr().out
    assert get_default_clip("shapes", resolution=16, channels=3, progress=False) == run
    assert capsys.readouterr().out == ""
    assert load_clip(run)[1].resolution == 16


# -- errors ----------------------------------------------------------------------------------------
def test_unknown_task_lists_the_tasks():
    cfg = apply_overrides(clip_config("shapes"), ["task=segmentation"])
    with pytest.raises(UserError, match=", ".join(TASKS)):
        build_task(cfg)


def test_cli_errors_are_one_line(tiny_run, tmp_path, capsys):
    assert main(["clip", "train", "--data", "digits", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no captions" in err
    assert main(["clip", "eval", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "diffusion").mkdir()
    (tmp_path / "diffusion" / io.CONFIG_FILE).write_text(dump_config(Config()))
    assert main(["clip", "eval", str(tmp_path / "diffusion")]) == 2
    assert "not a CLIP run" in capsys.readouterr().err
    run, _ = tiny_run
    assert main(["clip", "eval", str(run), "--n", "300"]) == 0
    out = capsys.readouterr().out
    assert "retrieval accuracy" in out and "CLIP score mismatched" in out


def test_config_file_spells_out_the_built_in_default():
    assert load_config(ROOT / "configs" / "clip_shapes.yaml") == clip_config("shapes")
