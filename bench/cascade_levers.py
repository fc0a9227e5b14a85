"""The cascade's two Imagen levers, measured on the shipped cascade (configs/shapes64_cascade.yaml):

    python bench/cascade_levers.py          # needs bench/results/framings/cascade (python bench/framings.py
                                            # --systems cascade); trains the ablation's stage

1. **Noise-conditioning augmentation.** The super-resolution stage trained again without it
   (``super_res.noise_aug=false``, same base run, the same number of optimizer steps as the shipped stage, so
   the comparison does not depend on how busy the machine is), against the shipped stage at sampling levels
   0, 0.1 (shipped) and 0.3. Every row upscales *the same* base images (one base draw for ``--n`` grammar
   prompts), so the rows differ only in the stage: all-four-attribute accuracy, FID@n against the 64x64 training
   images, and PSNR of the stage to the ground truth on held-out 64x64 shapes (their low-resolution versions upscaled).
2. **Dynamic thresholding.** The base at guidance 1, 3 and 7, with static thresholding (x0 clipped to [-1, 1])
   and with Imagen's dynamic thresholding at the 99.5th percentile, then the shipped stage: accuracy, FID, and
   saturation: the share of pixel channels at 0 or 255 of the base images, beside that of real
   shapes (the reference), and the mean HSV saturation of the final images. A grid of both at each guidance:
   bench/figures/cascade-thresholding.png.

Results: bench/results/cascade-levers-<levers>-<date>.json and markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflab import grids  # noqa: E402
from difflab.data import load_dataset  # noqa: E402
from difflab.evaluate.fid import compute_fid  # noqa: E402
from difflab.tasks import sampling_run  # noqa: E402
from difflab.tasks.super_resolution import LowResolution, SuperResolutionRun  # noqa: E402
from framings import train_system  # noqa: E402
from runs import run_summary  # noqa: E402
from text_to_image import BENCH_SEED, grammar_prompts  # noqa: E402

CONFIG = "configs/shapes64_cascade.yaml"
LEVELS = (0.0, 0.1, 0.3)  # sampling augmentation levels of the shipped stage
GUIDANCE = (1.0, 3.0, 7.0)
PERCENTILE = 99.5  # Imagen's
FIDELITY_N = 200  # held-out 64x64 shapes for the PSNR of the stage
GRID_PROMPTS = 4
AUG_COLUMNS = [("PSNR (dB)", "psnr", "{:.2f}")]
THRESHOLD_COLUMNS = [("clipped (base)", "clipped_share_base", "{:.3f}"), ("HSV sat.", "hsv_saturation", "{:.3f}")]
GRID_PER_PROMPT = 4


def clipped_share(images: np.ndarray) -> float:
    """Share of uint8 pixel channels at 0 or 255 (what static thresholding piles up at guidance > 1)."""
    return float(((images == 0) | (images == 255)).mean())


def hsv_saturation(images: np.ndarray) -> float:
    """Mean HSV saturation (max - min) / max of uint8 RGB images (N, H, W, 3), black pixels counted as 0."""
    x = images.astype(np.float64)
    hi, lo = x.max(-1), x.min(-1)
    return float(np.where(hi > 0, (hi - lo) / np.maximum(hi, 1), 0).mean())


def upscale(stage: SuperResolutionRun, low: np.ndarray, prompts: list[str], level: float | None) -> np.ndarray:
    """The super-resolution stage alone on given low-resolution images (its own sampler settings)."""
    return SuperResolutionRun.sample(stage, len(low), cond=LowResolution(low, prompts), aug_level=level,
                                     seed=BENCH_SEED, progress=False).data


def measure(stage, images: np.ndarray, prompts: list[str]) -> dict:
    """All-four accuracy (and per attribute) and FID of final 64x64 images."""
    from difflab.tasks.base import Samples

    samples = Samples(images, {"prompts": np.asarray(prompts, dtype=str), "labels": np.full(len(images), -1)})
    m = stage.prompt_metrics(samples, progress=False)
    return {"attr_all": m["attr_all"], **{k: m[k] for k in m if k.startswith("attr_") and k != "attr_n"},
            "fid": compute_fid(images, data="shapes", resolution=stage.config.data.resolution, progress=False)}


def fidelity(stage: SuperResolutionRun, level: float | None) -> float:
    """PSNR of the stage on FIDELITY_N held-out shapes (ground truth known), at sampling level ``level``."""
    low = SuperResolutionRun.held_out(stage, FIDELITY_N, BENCH_SEED)
    up = SuperResolutionRun.upscale(stage, low, aug_level=level, seed=BENCH_SEED, progress=False)
    return stage.fidelity(low, up)["psnr"]


def table(rows: list[dict], first: str, extra: list[tuple[str, str, str]]) -> str:
    """Markdown rows of accuracy and FID, then the ``extra`` columns (header, key, format)."""
    head = f"| {first} | all four | size | color | shape | position | FID | " + " | ".join(h for h, _, _ in extra)
    lines = [f"| {r['row']} | {100 * r['attr_all']:.1f}% | {100 * r['attr_size']:.1f}% | {100 * r['attr_color']:.1f}% "
             f"| {100 * r['attr_shape']:.1f}% | {100 * r['attr_position']:.1f}% | {r['fid']:.2f} | "
             + " | ".join(fmt.format(r[k]) for _, k, fmt in extra) + " |" for r in rows]
    return "\n".join([head + " |", "|---" * (7 + len(extra)) + "|", *lines])


def noise_aug_lever(out: Path, shipped: Path, prompts: list[str]) -> list[dict]:
    """Rows of lever 1: the stage trained without augmentation, and the shipped one at LEVELS."""
    ablation = out / "cascade_levers" / "no_noise_aug"
    steps = run_summary(shipped)["steps"]  # the same optimizer steps as the shipped stage, however long they take
    train_system(ablation, CONFIG, ["super_res.noise_aug=false", f"cascade.base_run={shipped / 'base'}",
                                    f"train.max_steps={steps}", "train.max_minutes=1000",
                                    f"train.checkpoint_every={steps}"])
    with_aug, without = sampling_run(shipped), sampling_run(ablation)
    low = with_aug.base.sample(len(prompts), cond=prompts, seed=BENCH_SEED, progress=False).data  # base settings
    rows = []
    for stage, level, name in [(without, None, "no augmentation (trained clean, level 0)"),
                               *[(with_aug, s, f"augmentation, sampling level {s}") for s in LEVELS]]:
        rows.append({"row": name, **measure(stage, upscale(stage, low, prompts, level), prompts),
                     "psnr": fidelity(stage, level)})
        print(table(rows[-1:], "super-resolution stage", AUG_COLUMNS), flush=True)
    return rows


def thresholding_lever(shipped: Path, prompts: list[str], figure: Path) -> tuple[list[dict], float]:
    """Rows of lever 2 (guidance x static / dynamic thresholding of the base; each with the real test images'
    clipped share and saturation as the reference), the real clipped share, and the grid written to ``figure``."""
    with_aug = sampling_run(shipped)
    base = with_aug.base
    real_low = load_dataset("shapes", resolution=base.config.data.resolution, split="test").images
    real_share = clipped_share(real_low.permute(0, 2, 3, 1).numpy())
    real_final = load_dataset("shapes", resolution=with_aug.config.data.resolution, split="test").images
    real_sat = hsv_saturation(real_final.permute(0, 2, 3, 1).numpy())
    rows, grid_blocks, grid_captions = [], [], []
    grid_prompts = prompts[:GRID_PROMPTS]
    grid_cond = [q for q in grid_prompts for _ in range(GRID_PER_PROMPT)]
    for g in GUIDANCE:
        for percentile, name in [(0, "static (clip to [-1, 1])"), (PERCENTILE, f"dynamic, p{PERCENTILE}")]:
            small = base.sample(len(prompts), cond=prompts, seed=BENCH_SEED, guidance=g, dynamic_threshold=percentile,
                                progress=False).data
            final = upscale(with_aug, small, prompts, None)
            rows.append({"row": f"guidance {g:g}, {name}", "guidance": g, "dynamic_threshold": percentile or None,
                         **measure(with_aug, final, prompts), "clipped_share_base": clipped_share(small),
                         "clipped_share_real": real_share, "hsv_saturation": hsv_saturation(final),
                         "hsv_saturation_real": real_sat})
            print(table(rows[-1:], "base sampling", THRESHOLD_COLUMNS),
                  flush=True)
            demo = base.sample(len(grid_cond), cond=grid_cond, seed=BENCH_SEED + 1, guidance=g,
                               dynamic_threshold=percentile, progress=False).data
            grid_blocks.append(upscale(with_aug, demo, grid_cond, None))
            grid_captions += [f"guidance {g:g}, {name}: {q}" for q in grid_prompts]
    grids.save_png(figure, grids.captioned_grid(np.concatenate(grid_blocks), grid_captions, GRID_PER_PROMPT))
    return rows, real_share


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="grammar prompts (one image each) per row")
    p.add_argument("--levers", nargs="+", choices=("noise-aug", "thresholding"), default=["noise-aug", "thresholding"])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    shipped = args.out / "framings" / "cascade"
    if not (shipped / "base").is_dir():
        raise SystemExit(f"{shipped} is not trained: run python bench/framings.py --systems cascade first")
    prompts, _ = grammar_prompts(args.n, BENCH_SEED)
    date = datetime.date.today().isoformat()
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "n": args.n, "fidelity_n": FIDELITY_N, "config": CONFIG}
    if "noise-aug" in args.levers:
        res["noise_aug"] = noise_aug_lever(args.out, shipped, prompts)
        print(table(res["noise_aug"], "super-resolution stage", AUG_COLUMNS))
    if "thresholding" in args.levers:
        fig = ROOT / "bench" / "figures" / "cascade-thresholding.png"
        res["thresholding"], res["clipped_share_real"] = thresholding_lever(shipped, prompts, fig)
        res["figure"] = str(fig.relative_to(ROOT))
        print(table(res["thresholding"], "base sampling", THRESHOLD_COLUMNS))
        print(f"real shapes at the base's resolution: clipped share {res['clipped_share_real']:.3f}; "
              f"figure: {res['figure']}")
    (args.out / f"cascade-levers-{'-'.join(args.levers)}-{date}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
