"""The lecture's "VAE vs diffusion" on Fashion-MNIST at the same CPU budget, measured the same way:

    python bench/vae_vs_diffusion.py --minutes 10 --n 2000      # needs `make data`

Both are trained from scratch, unconditionally, for ``--minutes`` of wall clock each, one after the other, each
in its own process:

* ``vae``       configs/fashion_vae.yaml (task vae): z ~ N(0, I) decoded in one pass;
* ``diffusion`` configs/fashion_mnist.yaml with data.class_conditional=false: 20 steps of DPM-Solver++(2M).

FID@n of each against the training images with difflab's Fashion-MNIST feature extractor (trained once and
cached), beside the FID of n real test images (the floor at this n); sampling seconds per image; a grid of 64
samples of each: bench/figures/vae-vs-diffusion.png. Results: bench/results/vae-vs-diffusion-<date>.json and a
markdown table on stdout.
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
from difflab.data import load_dataset  # noqa: E402
from difflab.evaluate.fid import compute_fid, fixed_subset  # noqa: E402
from difflab.tasks import sampling_run  # noqa: E402
from runs import train_process  # noqa: E402

SYSTEMS = {  # name -> (config, overrides)
    "vae": ("configs/fashion_vae.yaml", []),
    "diffusion": ("configs/fashion_mnist.yaml", ["data.class_conditional=false"]),
}
SEED = 20261202
GRID = 64  # samples per system in the figure
ZOOM = 3  # nearest-neighbour enlargement of the figure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each system")
    p.add_argument("--n", type=int, default=2000, help="samples per system for FID")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    work = args.out / "vae_vs_diffusion"
    rows, grid_blocks = [], []
    for name, (config, overrides) in SYSTEMS.items():
        summary = train_process(work / name, ROOT / config, args.minutes, overrides)
        run = sampling_run(work / name)
        t0 = time.perf_counter()
        samples = run.sample(args.n, seed=SEED, progress=False).data
        seconds = (time.perf_counter() - t0) / args.n
        rows.append({"system": name, "config": config, "overrides": overrides,
                     "fid": compute_fid(samples, data="fashion-mnist", progress=False),
                     "sec_per_image": round(seconds, 5), **summary})
        grid_blocks.append(samples[:GRID])
        print(rows[-1], flush=True)
    real = load_dataset("fashion-mnist", split="test").images.permute(0, 2, 3, 1).numpy()  # (N, 28, 28, 1)
    real_fid = compute_fid(fixed_subset(real, args.n), data="fashion-mnist", progress=False)
    side = int(np.sqrt(GRID))
    panels = [grids.image_grid(b, side).repeat(ZOOM, 0).repeat(ZOOM, 1) for b in grid_blocks]  # 28 px is small
    gap = np.full((panels[0].shape[0], 8, panels[0].shape[2]), 255, np.uint8)
    fig = ROOT / "bench" / "figures" / "vae-vs-diffusion.png"
    grids.save_png(fig, np.concatenate([panels[0], gap, panels[1]], axis=1))
    date = datetime.date.today().isoformat()
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "minutes": args.minutes, "n": args.n, "rows": rows,
           "real_test_fid": real_fid, "figure": str(fig.relative_to(ROOT)) + " (left: vae, right: diffusion)"}
    (args.out / f"vae-vs-diffusion-{date}.json").write_text(json.dumps(res, indent=1))
    print("| system | FID@%d | s / image | steps | train s |\n|---|---|---|---|---|" % args.n)
    for r in rows:
        print(f"| {r['system']} | {r['fid']:.2f} | {r['sec_per_image']:.4f} | {r['steps']} | {r['train_seconds']:.0f} |")
    print(f"| real test images | {real_fid:.2f} | | | |")
    print(f"figure: {res['figure']}")


if __name__ == "__main__":
    main()
