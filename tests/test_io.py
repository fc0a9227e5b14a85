"""Run folders: atomic writes, checkpoints, image outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import grids, io
from difflab.errors import UserError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_checkpoint_round_trip_and_pruning(tmp_path):
    w = {"a": torch.randn(3, 4)}
    for step in (5, 10, 15):
        io.save_checkpoint(tmp_path, step, {io.MODEL_FILE: w}, {"step": step}, keep=2)
    names = sorted(p.name for p in (tmp_path / io.CHECKPOINTS).iterdir())
    assert names == [io.LATEST, "step-00000010", "step-00000015"]
    ckpt = io.latest_checkpoint(tmp_path)
    assert ckpt.name == "step-00000015" and io.load_state(ckpt)["step"] == 15
    m = torch.nn.Linear(4, 3, bias=False)
    m.weight.data.zero_()
    io.save_checkpoint(tmp_path, 20, {io.MODEL_FILE: {"weight": w["a"]}}, {"step": 20})
    io.load_weights(m, io.latest_checkpoint(tmp_path) / io.MODEL_FILE)
    assert torch.equal(m.weight, w["a"])


def test_wrong_architecture_is_a_user_error(tmp_path):
    io.save_checkpoint(tmp_path, 1, {io.MODEL_FILE: {"weight": torch.zeros(2, 2)}}, {"step": 1})
    with pytest.raises(UserError, match="does not fit the model"):
        io.load_weights(torch.nn.Linear(4, 3, bias=False), io.latest_checkpoint(tmp_path) / io.MODEL_FILE)


def test_no_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoints"):
        io.require_checkpoint(tmp_path)


def test_save_images_formats(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    grids.save_images(tmp_path / "s.npz", imgs, np.arange(6))
    z = np.load(tmp_path / "s.npz")
    assert z["images"].dtype == np.uint8 and np.array_equal(z["images"], imgs)
    assert np.array_equal(z["labels"], np.arange(6))
    grids.save_images(tmp_path / "g.png", imgs, ncol=3)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    pad = grids.GRID_PAD
    assert grid.shape == (2 * (8 + pad) + pad, 3 * (8 + pad) + pad)
    assert np.array_equal(grid[pad:pad + 8, pad + 8 + pad:pad + 16 + pad], imgs[1, ..., 0])  # row 0, col 1
    grids.save_images(tmp_path / "dir", imgs)
    assert len(list((tmp_path / "dir").glob("*.png"))) == 6
    with pytest.raises(UserError, match=".npz or .png"):
        grids.save_images(tmp_path / "x.jpg", imgs)


def test_torn_metrics_line_is_ignored(tmp_path):
    io.append_metrics(tmp_path, {"step": 1, "loss": 1.0})
    io.append_metrics(tmp_path, {"step": 2, "loss": 0.5})
    with open(tmp_path / io.METRICS_FILE, "a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in io.read_metrics(tmp_path)] == [1, 2]
    io.truncate_metrics(tmp_path, 1)
    assert [r["step"] for r in io.read_metrics(tmp_path)] == [1]
