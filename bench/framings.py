"""The lecture's text-to-image systems side by side on captioned shapes at 64x64, each trained from scratch with its
shipped config (all its stages, their own CPU budgets), measured the same way:

    python bench/framings.py                       # train (or reuse) and score every system
    python bench/framings.py --systems latent cascade --n 200
    python bench/framings.py --score-only          # score the runs already trained in bench/results/framings/

Systems (configs/):

* ``pixel``   configs/shapes.yaml at 64x64 (patch 4: the same 16x16 positions as the latent model), no decoder;
* ``latent``  configs/shapes64_latent.yaml: KL autoencoder stage, then diffusion on its 16x16x4 latents (SD);
* ``cascade`` configs/shapes64_cascade.yaml: 32x32 base stage, then 32 -> 64 super-resolution (Imagen);
* ``unclip``  configs/shapes64_unclip.yaml: CLIP, prior and decoder stages (DALL-E 2).

For each: all-four-attribute accuracy and per attribute on ``--n`` random grammar prompts (a seed no split uses;
difflab's attribute classifier at 64x64), CLIP score (difflab's shapes CLIP), FID@n against the training images,
sampling seconds per image at the system's own sampler settings and at one shared setting (dpmpp-2m, 20 steps,
for the latent/pixel speed ratio), parameters, training seconds of all stages, peak memory of training; and the
all-four accuracy of the same combinations in held-out words and templates (the test split of
difflab.data.shape_words, never in a training caption; issue 17), one image each. A PNG
grid of the same 8 prompts from each system goes to bench/figures/framings-grid.png. Results:
bench/results/framings-<date>.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflab import grids, io  # noqa: E402
from difflab.data.shape_words import prompts as worded  # noqa: E402
from difflab.evaluate.attributes import attribute_accuracy  # noqa: E402
from difflab.evaluate.fid import compute_fid  # noqa: E402
from difflab.tasks import sampling_run  # noqa: E402
from runs import run_process, run_summary  # noqa: E402
from t2i_words import WORDING_SEED  # noqa: E402
from text_to_image import BENCH_SEED, grammar_prompts  # noqa: E402

SYSTEMS: dict[str, tuple[str, list[str]]] = {  # name -> (config, overrides)
    "pixel": ("configs/shapes.yaml", ["data.resolution=64", "model.patch_size=4", "train.max_minutes=25.0"]),
    "latent": ("configs/shapes64_latent.yaml", []),
    "cascade": ("configs/shapes64_cascade.yaml", []),
    "unclip": ("configs/shapes64_unclip.yaml", []),
}
GRID_PROMPTS = 8  # prompts of the comparison grid (one row each)
GRID_PER_PROMPT = 4
SPEED = {"sampler": "dpmpp-2m", "steps": 20}  # the shared setting of the sampling-speed comparison
SPEED_IMAGES = 32


def train_system(out: Path, config: str, overrides: list[str]) -> None:
    """``difflab train CONFIG --out OUT`` (all stages, the config's own budgets), in a process of its own so its
    peak memory is its own; resumed when interrupted, reused when finished."""
    if io.is_finished(out):
        return
    cmd = [sys.executable, "-m", "difflab.cli", "train", str(ROOT / config), "--out", str(out), "--no-progress",
           *(["--resume"] if out.exists() else []), *(["--set", *overrides] if overrides else [])]
    run_process(cmd)


def stage_folders(run: Path) -> list[Path]:
    """The run folder and every stage folder inside it (each has its own config.yaml)."""
    return [run, *sorted(p for p in run.iterdir() if (p / io.CONFIG_FILE).is_file())]


def parameters(run) -> int:
    """Parameters of every network a loaded run samples with (its stages' too)."""
    nets = [m for m in vars(run).values() if isinstance(m, torch.nn.Module)]
    nets += [m for v in vars(run).values() if hasattr(v, "__dict__") and not isinstance(v, torch.nn.Module)
             for m in vars(v).values() if isinstance(m, torch.nn.Module)]
    seen, total = set(), 0
    for net in nets:
        for p in net.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def seconds_per_image(run, prompts: list[str], **options) -> float:
    t0 = time.perf_counter()
    run.sample(len(prompts), cond=prompts, seed=BENCH_SEED, progress=False, **options)
    return (time.perf_counter() - t0) / len(prompts)


def score(name: str, folder: Path, prompts: list[str], attrs: np.ndarray) -> dict:
    """Accuracy (grammar prompts, and the same combinations ``attrs`` in held-out words), CLIP score, FID, speed
    and size of one trained system."""
    run = sampling_run(folder)
    t0 = time.perf_counter()
    samples = run.sample(len(prompts), cond=prompts, seed=BENCH_SEED, progress=False)
    own_seconds = (time.perf_counter() - t0) / len(prompts)
    metrics = {k: v for k, v in run.prompt_metrics(samples, progress=False).items() if k != "clip_run"}
    held = run.sample(len(attrs), cond=worded(attrs, "test", WORDING_SEED), seed=BENCH_SEED, progress=False).data
    metrics |= {f"held_out_{k}": v for k, v in attribute_accuracy(held, attrs).items()}
    summaries = [run_summary(f) for f in stage_folders(folder)]
    return {"system": name, **metrics,
            "fid": compute_fid(samples.data, data="shapes", resolution=run.config.data.resolution, progress=False),
            "sec_per_image": round(own_seconds, 4),
            "sec_per_image_shared": round(seconds_per_image(run, prompts[:SPEED_IMAGES], **SPEED), 4),
            "parameters": parameters(run),
            "train_seconds": round(sum(s["train_seconds"] for s in summaries), 1),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in summaries),
            "stages": {str(f.relative_to(folder)) or ".": s for f, s in zip(stage_folders(folder), summaries)}}


def comparison_grid(folders: dict[str, Path], out: Path) -> Path:
    """The same GRID_PROMPTS prompts from every system, one block of rows per system, captioned."""
    prompts, _ = grammar_prompts(GRID_PROMPTS, BENCH_SEED + 1)
    blocks, captions = [], []
    for name, folder in folders.items():
        run = sampling_run(folder)
        cond = [p for p in prompts for _ in range(GRID_PER_PROMPT)]
        blocks.append(run.sample(len(cond), cond=cond, seed=BENCH_SEED, progress=False).data)
        captions += [f"{name}: {p}" for p in prompts]
    grid = grids.captioned_grid(np.concatenate(blocks), captions, GRID_PER_PROMPT)
    out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image
    Image.fromarray(grid).save(out)
    return out


def table(rows: list[dict]) -> str:
    head = ("| system | all four | size | color | shape | position | held-out words, all four | CLIP score | FID | "
            "s/img (own) | s/img (dpmpp-2m, 20) | parameters | train s | peak MB |\n" + "|---" * 14 + "|")
    lines = [f"| {r['system']} | {100 * r['attr_all']:.1f}% | {100 * r['attr_size']:.1f}% | {100 * r['attr_color']:.1f}% "
             f"| {100 * r['attr_shape']:.1f}% | {100 * r['attr_position']:.1f}% | {100 * r['held_out_all']:.1f}% | "
             f"{r['clip_score']:.2f} | "
             f"{r['fid']:.2f} | {r['sec_per_image']:.3f} | {r['sec_per_image_shared']:.3f} | "
             f"{r['parameters'] / 1e6:.2f}M | {r['train_seconds']:.0f} | {r['peak_rss_mb']:.0f} |" for r in rows]
    return "\n".join([head, *lines])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    p.add_argument("--n", type=int, default=500, help="grammar prompts (one image each) per system")
    p.add_argument("--score-only", action="store_true", help="score runs already trained, train nothing")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--grid", type=Path, default=ROOT / "bench" / "figures" / "framings-grid.png",
                   help="the comparison grid of the systems scored")
    p.add_argument("--name", default="framings", help="results file: OUT/NAME-<date>.json")
    args = p.parse_args()
    date = datetime.date.today().isoformat()
    work = args.out / "framings"
    folders = {name: work / name for name in args.systems}
    for name, folder in folders.items():
        if not args.score_only:
            train_system(folder, *SYSTEMS[name])
    prompts, attrs = grammar_prompts(args.n, BENCH_SEED)
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "n": args.n, "configs": {k: SYSTEMS[k] for k in args.systems}, "rows": []}
    for name, folder in folders.items():
        res["rows"].append(score(name, folder, prompts, attrs))
        print(table(res["rows"][-1:]), flush=True)
    rows = {r["system"]: r for r in res["rows"]}
    if "latent" in rows and "pixel" in rows:
        res["latent_speedup"] = rows["pixel"]["sec_per_image_shared"] / rows["latent"]["sec_per_image_shared"]
    results = args.out / f"{args.name}-{date}.json"
    results.write_text(json.dumps(res, indent=1))  # the scores first: nothing after them can lose them
    grid = comparison_grid(folders, args.grid.resolve())
    res["grid"] = str(grid.relative_to(ROOT) if grid.is_relative_to(ROOT) else grid)
    results.write_text(json.dumps(res, indent=1))
    print(table(res["rows"]))
    if "latent_speedup" in res:
        print(f"latent diffusion samples a 64x64 image {res['latent_speedup']:.2f}x faster than the pixel model "
              f"({SPEED['sampler']}, {SPEED['steps']} steps, same run)")
    print(f"grid: {res['grid']}")


if __name__ == "__main__":
    main()
