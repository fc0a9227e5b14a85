"""Why latent diffusion exists, measured: seconds to sample one 64x64 image, the latent model (configs/
shapes64_latent.yaml: 16x16x4 latents, then the decoder) against the pixel model at 64x64 (configs/shapes.yaml at
data.resolution 64) with the same sampler and steps, in one run:

    python bench/latent_speed.py                       # dpmpp-2m, 20 steps, 32 prompts, 3 interleaved rounds

The pixel model appears at patch 1 (every pixel a position: a plain pixel-space UNet, DDPM's), patch 2 (the
shipped shapes config's choice) and patch 4 (16x16 positions, the same as the latent model: what the pixel row of
bench/framings.py trains, and why its quality falls). Sampling cost does not depend on what the weights are, so
each network is a run trained for 2 steps (the real loading and sampling path, the text encoder included); the
systems are timed in turn, round after round, and the median round counts (a shared, noisy machine). Results:
bench/results/latent-speed-<date>.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from difflab import io  # noqa: E402
from difflab.tasks import sampling_run  # noqa: E402
from runs import run_process  # noqa: E402
from text_to_image import BENCH_SEED, grammar_prompts  # noqa: E402

PIXEL = ["data.resolution=64", "model.patch_size={p}"]
SYSTEMS = {  # name -> (config, overrides)
    "pixel, patch 1 (64x64 positions)": ("configs/shapes.yaml", PIXEL),
    "pixel, patch 2 (32x32 positions)": ("configs/shapes.yaml", PIXEL),
    "pixel, patch 4 (16x16 positions)": ("configs/shapes.yaml", PIXEL),
    "latent (16x16x4, then the decoder)": ("configs/shapes64_latent.yaml",
                                           ["model.autoencoder_overrides=[train.max_steps=2]"]),
}
PATCH = {name: int(name.split("patch ")[1][0]) for name in SYSTEMS if "patch" in name}
LATENT = next(name for name in SYSTEMS if name.startswith("latent"))
STEPS_TRAINED = 2


def build(out: Path, config: str, overrides: list[str]) -> None:
    """A run of ``config`` trained for STEPS_TRAINED steps (every stage), reused when there."""
    if io.is_finished(out):
        return
    cmd = [sys.executable, "-m", "difflab.cli", "train", str(ROOT / config), "--out", str(out), "--no-progress",
           "--set", *overrides, f"train.max_steps={STEPS_TRAINED}", f"train.checkpoint_every={STEPS_TRAINED}"]
    run_process(cmd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sampler", default="dpmpp-2m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=32, help="images per timed call (one batch)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    work = args.out / "latent_speed"
    runs = {}
    for i, (name, (config, overrides)) in enumerate(SYSTEMS.items()):
        folder = work / f"system{i}"
        build(folder, config, [o.format(p=PATCH.get(name, 0)) for o in overrides])
        runs[name] = sampling_run(folder)
    prompts, _ = grammar_prompts(args.images, BENCH_SEED)
    options = {"sampler": args.sampler, "steps": args.steps, "seed": BENCH_SEED, "progress": False,
               "batch_size": args.images}
    for run in runs.values():  # warm-up: first-call allocations and the text encoder's caches
        run.sample(2, cond=prompts[:2], **options)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run.sample(args.images, cond=prompts, **options)
            times[name].append((time.perf_counter() - t0) / args.images)
        print(f"round {r + 1}: " + ", ".join(f"{n}: {t[-1]:.4f}" for n, t in times.items()), flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    rows = [{"system": name, "sec_per_image": median[name], "rounds": times[name],
             "pixel_over_latent": median[name] / median[LATENT],
             "parameters": sum(q.numel() for q in runs[name].model.parameters())} for name in runs]
    date = datetime.date.today().isoformat()
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "sampler": args.sampler,
           "steps": args.steps, "images": args.images, "rounds": args.rounds, "rows": rows}
    (args.out / f"latent-speed-{date}.json").write_text(json.dumps(res, indent=1))
    print(f"| system | s / image ({args.sampler}, {args.steps} steps) | time / latent's |\n|---|---|---|")
    for row in rows:
        print(f"| {row['system']} | {row['sec_per_image']:.4f} | {row['pixel_over_latent']:.2f}x |")


if __name__ == "__main__":
    main()
