"""Super-resolution diffusion against bicubic interpolation on natural photos it never saw (16x16 -> 64x64):

    python bench/super_resolution.py                  # train configs/photos_sr.yaml (10 CPU-minutes), then score
    python bench/super_resolution.py --score-only     # score the run already in bench/results/super_resolution/

The run trains on patches of 15 of scikit-image's bundled photos; every figure here is on the patches of the 3
held-out photos (difflab.data.photos.TEST_PHOTOS: chelsea, camera, coins), each patch averaged down to 16x16 and
brought back to 64x64 by bicubic interpolation (the baseline, the very input the network sees) and by the
diffusion stage at a few sampler settings. One deterministic step from pure noise (ddim, 1 step) is the network's
posterior-mean estimate E[x0 | x_low], the PSNR-optimal answer; more steps draw a sample from p(x0 | x_low), with
detail PSNR penalises. PSNR and SSIM per patch, mean over patches (difflab.evaluate.reconstruction). The settings
were fixed before the held-out photos were scored. Results: bench/results/super-resolution-<date>.json, a table
on stdout and the figure bench/figures/super-resolution.png (original, bicubic, diffusion for 6 patches).
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

from difflab import grids  # noqa: E402
from difflab.evaluate.reconstruction import PSNR_CAP_DB, psnr  # noqa: E402
from difflab.tasks import sampling_run  # noqa: E402
from framings import train_system  # noqa: E402
from runs import run_summary  # noqa: E402

CONFIG = "configs/photos_sr.yaml"
SEED = 20261202  # draws of the held-out patches and of the samplers' noise
SETTINGS = {  # row name -> upscale options
    "diffusion, ddim 1 step (posterior mean)": {"sampler": "ddim", "steps": 1},
    "diffusion, dpmpp-2m 10 steps (sample)": {"sampler": "dpmpp-2m", "steps": 10},
    "diffusion, dpmpp-2m 25 steps (sample)": {"sampler": "dpmpp-2m", "steps": 25},
}
FIGURE_PATCHES = 6


def paired(truth: np.ndarray, up: np.ndarray, baseline: np.ndarray) -> dict:
    """Per-patch PSNR of ``up`` minus the baseline's on the same patches (uint8 (N, H, W, C) each): the mean gain,
    its standard error and the share of patches where ``up`` is closer to the original."""
    t = torch.from_numpy(truth).permute(0, 3, 1, 2)
    db = [np.minimum(psnr(t, torch.from_numpy(v).permute(0, 3, 1, 2)), PSNR_CAP_DB) for v in (up, baseline)]
    gain = db[0] - db[1]  # (N,) dB
    return {"gain_db_mean": float(gain.mean()), "gain_db_se": float(gain.std(ddof=1) / np.sqrt(len(gain))),
            "better_share": float((gain > 0).mean())}


def table(rows: list[dict]) -> str:
    head = ("| upscaler | PSNR (dB) | SSIM | paired gain over bicubic (dB, +- s.e.) | patches better | s / patch |\n"
            "|---|---|---|---|---|---|")
    return "\n".join([head, *(f"| {r['upscaler']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                              f"{r.get('gain_db_mean', 0):+.2f} +- {r.get('gain_db_se', 0):.2f} | "
                              f"{100 * r.get('better_share', 0):.1f}% | {r['sec_per_patch']:.4f} |" for r in rows)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="held-out patches (default: all of them, no repeats)")
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--name", default="super-resolution",
                   help="results NAME-<date>.json, figure bench/figures/NAME.png, run folder NAME (underscored)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the config (a variant)")
    args = p.parse_args()
    folder = args.out / args.name.replace("-", "_")
    if not args.score_only:
        train_system(folder, CONFIG, args.set)
    run = sampling_run(folder)
    from difflab.tasks.image import load_images
    n = args.n or len(load_images(run.config, split="test").images)
    low = run.held_out(n, SEED)
    interpolated = run.interpolate(low)
    base = run.fidelity(low, interpolated)
    rows = [{"upscaler": base["baseline"], "psnr": base["baseline_psnr"], "ssim": base["baseline_ssim"],
             "sec_per_patch": 0.0}]
    outputs = {base["baseline"]: interpolated}
    for name, options in SETTINGS.items():
        t0 = time.perf_counter()
        up = run.upscale(low, seed=SEED, progress=False, **options)
        seconds = (time.perf_counter() - t0) / n
        f = run.fidelity(low, up)
        rows.append({"upscaler": name, "psnr": f["psnr"], "ssim": f["ssim"], "sec_per_patch": round(seconds, 4),
                     **paired(low.originals, up, interpolated), **options})
        outputs[name] = up
        print(table(rows[-1:]), flush=True)
    best = max(rows[1:], key=lambda r: r["psnr"])
    pick = np.linspace(0, n - 1, FIGURE_PATCHES).astype(int)
    shown = {"original": low.originals, "bicubic": outputs[base["baseline"]],
             "ddim 1 step": outputs[next(iter(SETTINGS))], "dpmpp-2m 10": outputs[list(SETTINGS)[1]]}
    figure = grids.captioned_grid(np.concatenate([v[pick] for v in shown.values()]), list(shown), FIGURE_PATCHES)
    fig_path = ROOT / "bench" / "figures" / f"{args.name}.png"
    grids.save_png(fig_path, figure)
    date = datetime.date.today().isoformat()
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "config": CONFIG, "overrides": args.set, "n": n, "seed": SEED, "run": run_summary(folder),
           "rows": rows, "best": best["upscaler"], "gain_db": best["psnr"] - rows[0]["psnr"],
           "figure": str(fig_path.relative_to(ROOT))}
    (args.out / f"{args.name}-{date}.json").write_text(json.dumps(res, indent=1))
    print(table(rows))
    print(f"best diffusion setting: {best['upscaler']}, {res['gain_db']:+.2f} dB over {rows[0]['upscaler']} "
          f"on {n} held-out patches")
    print(f"figure: {res['figure']}")


if __name__ == "__main__":
    main()
