"""``difflab demo``: train the built-in default (class-conditional 8x8 digits), sample, measure.

Reuses a finished run in the output folder, and resumes an interrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from difflab import io
from difflab.config import load_config
from difflab.tasks.image import ImageTask, generate, load_image_model
from difflab.train import train

DEMO_FID_SAMPLES = 1000  # fixed sample count for the demo's FID (digits has 1,437 training images)
DEMO_PER_CLASS = 10  # grid columns: samples per class, one row per class


def _finished(run: Path) -> bool:
    ckpt = io.latest_checkpoint(run)
    return ckpt is not None and bool(io.load_state(ckpt).get("finished", False))


def run_demo(out: Path, config: str | None = None) -> None:
    """Train (or reuse) the demo run in ``out``, write a grid with one row per class, print FID."""
    from difflab.evaluate.fid import compute_fid

    t0 = time.perf_counter()
    if _finished(out):
        print(f"reusing the finished run in {out} (delete it to train again)")
    else:
        resume = io.latest_checkpoint(out) is not None
        cfg = io.read_run_config(out) if resume else load_config(config)
        print(f"training {cfg.data.name} for at most {cfg.train.max_minutes or '-'} minutes / "
              f"{cfg.train.max_steps} steps into {out}")
        train(ImageTask(cfg), out, resume=resume)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model = load_image_model(out, device)
    K = max(cfg.model.num_classes, 1)
    labels = torch.arange(K).repeat_interleave(DEMO_PER_CLASS) if cfg.model.num_classes else None
    images, labels_np = generate(cfg, model, K * DEMO_PER_CLASS, labels=labels, seed=0)
    grid = io.save_images(out / "samples" / "demo_grid.png", images, labels_np, ncol=DEMO_PER_CLASS)
    print(f"wrote {grid} (one row per class, {cfg.sample.sampler} with {cfg.sample.steps} steps)")
    images, _ = generate(cfg, model, DEMO_FID_SAMPLES, seed=1, progress=False)
    fid = compute_fid(images, data=cfg.data.name, data_path=cfg.data.path, resolution=cfg.data.resolution)
    print(f"FID {fid:.2f} ({DEMO_FID_SAMPLES} samples vs the {cfg.data.name} training set, "
          f"difflab's own {cfg.data.name} feature extractor); demo took {time.perf_counter() - t0:.0f} s")
