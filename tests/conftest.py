"""Shared test set-up: offline, a private cache, tiny models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(1)  # tiny tests: threads cost more than they give, and subprocesses inherit this
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# A model small enough to train for a few steps in a second on a laptop CPU.
TINY = ["model.base_channels=16", "model.channel_mult=[1,2]", "model.num_res_blocks=1",
        "model.attention_levels=[1]", "model.num_heads=2", "train.batch_size=16", "train.warmup_steps=5",
        "train.log_every=2", "sample.batch_size=64"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feature extractors and FID statistics go to a per-session cache, never the user's."""
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def difflab_cmd(*args: str) -> list[str]:
    """The CLI as a subprocess command line (same interpreter)."""
    return [sys.executable, "-m", "difflab.cli", *args]
