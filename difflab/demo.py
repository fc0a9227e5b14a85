"""``difflab demo``: type a sentence, get a picture.

Trains the built-in text-to-image default (:func:`demo_config`: captioned shapes, a scratch text
encoder, cross-attention and classifier-free guidance), writes a grid with one row per prompt
(the prompt printed under its row), and prints FID and CLIP score. Reuses a finished run in the
output folder and resumes an interrupted one. ``--config`` trains any other config instead
(class-conditional runs get one row per class).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from difflab import io
from difflab.config import Config, DataConfig, DiffusionConfig, ModelConfig, SampleConfig, TrainConfig, load_config
from difflab.tasks.image import generate, load_image_model
from difflab.tasks.text_to_image import default_prompts, is_text_to_image

DEMO_FID_SAMPLES = 1000  # fixed sample count of the demo's FID and CLIP score
DEMO_MINUTES = 6.0  # the demo's training budget (configs/shapes.yaml trains 10): make demo < 15 min on 2 cores
DEMO_PER_ROW = 8  # grid columns: samples per prompt (or class)
DEMO_PROMPTS = (
    "a large red circle in the center",
    "a small blue square at the top left",
    "a large yellow triangle at the bottom right",
    "a small green cross at the top right",
    "a large magenta square at the bottom left",
    "a small white circle in the center",
    "a large cyan cross at the top left",
    "a small orange triangle at the bottom right",
)


def demo_config() -> Config:
    """The built-in default that ``make demo`` trains; configs/shapes.yaml spells it out."""
    return Config(
        data=DataConfig(name="shapes"),
        model=ModelConfig(patch_size=2, coord_channels=True, text_encoder="minilm"),
        diffusion=DiffusionConfig(schedule="cosine", prediction="v"),
        train=TrainConfig(batch_size=64, lr=2e-3, warmup_steps=100, ema_decay=0.99, max_steps=100_000,
                          max_minutes=10.0),
        sample=SampleConfig(guidance=3.0),
    )


def _train(out: Path, config: str | None) -> None:
    """Train (or resume, or reuse) the demo run in ``out``."""
    from difflab.tasks import build_task
    from difflab.train import train

    if io.is_finished(out):
        print(f"reusing the finished run in {out} (delete it to train again)")
        return
    resume = io.latest_checkpoint(out) is not None
    cfg = io.read_run_config(out) if resume else load_config(config) if config else replace(
        demo_config(), train=replace(demo_config().train, max_minutes=DEMO_MINUTES))
    print(f"training {cfg.data.name} for at most {cfg.train.max_minutes or '-'} minutes / "
          f"{cfg.train.max_steps} steps into {out}")
    train(build_task(cfg), out, resume=resume)


def _grid(out: Path, cfg: Config, model: torch.nn.Module) -> Path:
    """One row per demo prompt (text-to-image) or per class; returns the PNG."""
    path = out / "samples" / "demo_grid.png"
    if is_text_to_image(cfg):
        prompts = [p for p in DEMO_PROMPTS for _ in range(DEMO_PER_ROW)]
        images, labels = generate(cfg, model, len(prompts), prompts=prompts, seed=0)
        return io.save_images(path, images, labels, ncol=DEMO_PER_ROW, prompts=prompts)
    K = max(cfg.model.num_classes, 1)
    labels = torch.arange(K).repeat_interleave(DEMO_PER_ROW) if cfg.model.num_classes else None
    images, labels_np = generate(cfg, model, K * DEMO_PER_ROW, labels=labels, seed=0)
    return io.save_images(path, images, labels_np, ncol=DEMO_PER_ROW)


def run_demo(out: Path, config: str | None = None) -> None:
    """Train (or reuse) the demo run in ``out``, write its grid, print FID (and CLIP score)."""
    from difflab.evaluate.fid import compute_fid

    t0 = time.perf_counter()
    _train(out, config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model = load_image_model(out, device)
    grid = _grid(out, cfg, model)
    print(f"wrote {grid} (one row per {'prompt' if is_text_to_image(cfg) else 'class'}, "
          f"{cfg.sample.sampler} with {cfg.sample.steps} steps, guidance {cfg.sample.guidance})")
    prompts = default_prompts(cfg, DEMO_FID_SAMPLES, seed=1) if is_text_to_image(cfg) else None
    images, _ = generate(cfg, model, DEMO_FID_SAMPLES, prompts=prompts, seed=1, progress=False)
    fid = compute_fid(images, data=cfg.data.name, data_path=cfg.data.path, resolution=cfg.data.resolution)
    print(f"FID {fid:.2f} ({DEMO_FID_SAMPLES} samples vs the {cfg.data.name} training set, "
          f"difflab's own {cfg.data.name} feature extractor)")
    if prompts is not None:
        _print_text_metrics(cfg, images, prompts)
    print(f"demo took {time.perf_counter() - t0:.0f} s; try: difflab sample {out} --prompt \"{DEMO_PROMPTS[0]}\"")


def _print_text_metrics(cfg: Config, images, prompts: list[str]) -> None:
    """CLIP score (difflab's own CLIP) and, on shapes, attribute accuracy of the demo's samples."""
    from difflab.evaluate.run_eval import text_metrics

    m = text_metrics(cfg, images, prompts)
    print(f"CLIP score {m['clip_score']:.1f} (real pairs {m['clip_score_real']:.1f}, mismatched "
          f"{m['clip_score_mismatched']:.1f}; difflab's own CLIP)")
    if "attr_all" in m:
        print(f"attributes right: all four {100 * m['attr_all']:.1f}% (size {100 * m['attr_size']:.0f}%, color "
              f"{100 * m['attr_color']:.0f}%, shape {100 * m['attr_shape']:.0f}%, position "
              f"{100 * m['attr_position']:.0f}%; difflab's own attribute classifier)")


__all__ = ["DEMO_PROMPTS", "demo_config", "run_demo"]
