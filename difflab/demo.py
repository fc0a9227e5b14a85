"""``difflab demo``: type a sentence, get a picture.

Trains the built-in text-to-image default (:func:`demo_config`: captioned shapes, a scratch text
encoder, cross-attention and classifier-free guidance), writes a grid with one row per prompt
(the prompt printed under its row), and prints FID and CLIP score. Reuses a finished run in the
output folder and resumes an interrupted one. ``--config`` trains any other config instead
(class-conditional runs get one row per class).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from difflab import files, io
from difflab.config import Config, DataConfig, DiffusionConfig, ModelConfig, SampleConfig, TrainConfig, load_config
from difflab.tasks.base import Run, SampleRequest, rows_condition

DEMO_FID_SAMPLES = 1000  # fixed sample count of the demo's FID and CLIP score
DEMO_MINUTES = 6.0  # the demo's training budget (configs/shapes.yaml trains 10): make demo < 15 min on 2 cores
DEMO_PER_ROW = 8  # grid columns: samples per prompt (or class)
PROMPT_FLAG = "--prompt"  # runs whose kind samples with this flag get one grid row per demo prompt
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
        task="text-to-image",
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
    files.check_output(out, "run folder", folder=True)
    resume = io.latest_checkpoint(out) is not None
    cfg = io.read_run_config(out) if resume else load_config(config) if config else replace(
        demo_config(), train=replace(demo_config().train, max_minutes=DEMO_MINUTES))
    print(f"training {cfg.data.name} for at most {cfg.train.max_minutes or '-'} minutes / "
          f"{cfg.train.max_steps} steps into {out}")
    train(build_task(cfg), out, resume=resume)


def _grid(out: Path, run: Run) -> Path:
    """One row per demo prompt (a run that takes prompts) or per row of the run's own grid; returns the PNG."""
    path = out / "samples" / "demo_grid.png"
    if PROMPT_FLAG in _flags(run):
        args = argparse.Namespace(prompt_list=list(DEMO_PROMPTS), prompts_file=None, seed=0)
        req = run.request(args, DEMO_PER_ROW, DEMO_PER_ROW)
    else:
        rows = run.grid_rows(DEMO_PER_ROW, 0)
        req = SampleRequest(max(len(rows), 1) * DEMO_PER_ROW, rows_condition(rows, DEMO_PER_ROW), DEMO_PER_ROW)
    samples = run.sample(req.n, cond=req.cond, seed=0)
    return run.save(replace(samples, ncol=req.ncol), path)


def _flags(run: Run) -> list[str]:
    """The condition flags a run's kind samples with."""
    parser = argparse.ArgumentParser(add_help=False)
    type(run).add_flags(parser)
    return [a.option_strings[0] for a in parser._actions]


def run_demo(out: Path, config: str | None = None) -> None:
    """Train (or reuse) the demo run in ``out``, write its grid, print its metrics (FID, CLIP score)."""
    from difflab.tasks import sampling_run

    t0 = time.perf_counter()
    _train(out, config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = sampling_run(out, device, verb="demo")
    grid = _grid(out, run)
    s = run.config.sample
    print(f"wrote {grid} ({s.sampler} with {s.steps} steps, guidance {s.guidance})")
    samples = run.sample(DEMO_FID_SAMPLES, seed=1, progress=False)
    m = run.metrics(samples, progress=False)
    print(f"FID {m['fid']:.2f} ({DEMO_FID_SAMPLES} samples vs the {m['data']} training set, "
          f"difflab's own {m['data']} feature extractor)")
    _print_text_metrics(m)
    example = f' {PROMPT_FLAG} "{DEMO_PROMPTS[0]}"' if PROMPT_FLAG in _flags(run) else ""
    print(f"demo took {time.perf_counter() - t0:.0f} s; try: difflab sample {out}{example}")


def _print_text_metrics(m: dict) -> None:
    """CLIP score (difflab's own CLIP) and, on shapes, attribute accuracy of the demo's samples, if measured."""
    if "clip_score" not in m:
        return
    print(f"CLIP score {m['clip_score']:.1f} (real pairs {m['clip_score_real']:.1f}, mismatched "
          f"{m['clip_score_mismatched']:.1f}; difflab's own CLIP)")
    if "attr_all" in m:
        print(f"attributes right: all four {100 * m['attr_all']:.1f}% (size {100 * m['attr_size']:.0f}%, color "
              f"{100 * m['attr_color']:.0f}%, shape {100 * m['attr_shape']:.0f}%, position "
              f"{100 * m['attr_position']:.0f}%; difflab's own attribute classifier)")


__all__ = ["DEMO_PROMPTS", "demo_config", "run_demo"]
