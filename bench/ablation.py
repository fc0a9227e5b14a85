"""Which training levers pay on a CPU: each variant of configs/fashion_mnist.yaml trained for the same
wall-clock budget, then FID@n at 20 steps of dpmpp-2m and training images/s.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/ablation.py --minutes 5 --n 1000 [--only NAME ...]

Each variant trains in a process of its own (peak memory is its own). Variants are the config with a few overrides (``VARIANTS``); every one is unconditional, like the
bench against diffusers. Rows print as JSON lines as they finish and gather in
bench/results/ablation-<date>.json (finished runs are reused, so an interrupted ablation resumes).
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

import torch  # noqa: E402

from difflab.evaluate.fid import compute_fid  # noqa: E402
from difflab.evaluate.features import get_feature_extractor  # noqa: E402
from difflab.tasks import sampling_run  # noqa: E402
from runs import train_process  # noqa: E402

CONFIG = "configs/fashion_mnist.yaml"
BASE = ["data.class_conditional=false"]
# name -> overrides of the shipped config; the first is the reference every other row changes one thing of
VARIANTS: dict[str, list[str]] = {
    "shipped": [],
    "eps, linear schedule": ["diffusion.prediction=eps", "diffusion.schedule=linear"],
    "min-snr-5 weighting": ["diffusion.weighting=min-snr"],
    "lr 2e-3": ["train.lr=2e-3"],
    "lr 5e-4": ["train.lr=5e-4"],
    "cosine lr decay to the budget": ["train.lr_decay=cosine"],
    "lr 2e-3 + cosine decay": ["train.lr=2e-3", "train.lr_decay=cosine"],
    "lr 4e-3 + cosine decay": ["train.lr=4e-3", "train.lr_decay=cosine"],
    "batch 64": ["train.batch_size=64"],
    "batch 32": ["train.batch_size=32"],
    "batch 64, lr 2e-3, cosine decay": ["train.batch_size=64", "train.lr=2e-3", "train.lr_decay=cosine"],
    "1 res block, batch 64, lr 2e-3, cosine decay": ["model.num_res_blocks=1", "train.batch_size=64", "train.lr=2e-3",
                                                     "train.lr_decay=cosine"],
    "1 res block, batch 32, lr 2e-3, cosine decay": ["model.num_res_blocks=1", "train.batch_size=32", "train.lr=2e-3",
                                                     "train.lr_decay=cosine"],
    "batch 256": ["train.batch_size=256"],
    "ema 0.999": ["train.ema_decay=0.999"],
    "ema 0.99": ["train.ema_decay=0.99"],
    "no patches (patch_size 1)": ["model.patch_size=1"],
    "1 res block per level": ["model.num_res_blocks=1"],
    "width 48": ["model.base_channels=48"],
    "3 levels (1, 2, 2)": ["model.channel_mult=[1,2,2]"],
    "no attention": ["model.attention_levels=[]"],
    "channels-last": ["train.channels_last=true"],
    "bf16 autocast": ["train.mixed_precision=bf16"],
    "torch.compile": ["train.compile=true"],
}


def score(run: Path, n: int, steps: int = 20) -> dict:
    loaded = sampling_run(run)
    t0 = time.perf_counter()
    images = loaded.sample(n, sampler="dpmpp-2m", steps=steps, seed=0, progress=False).data  # uint8 (n, H, W, C)
    return {"fid": round(compute_fid(images, data="fashion-mnist", progress=False), 2),
            "sample_seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="variants to run (default all)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--name", default=f"ablation-{datetime.date.today().isoformat()}")
    args = p.parse_args()
    work, path = args.out / args.name, args.out / f"{args.name}.json"
    work.mkdir(parents=True, exist_ok=True)
    get_feature_extractor("fashion-mnist")  # trained once and cached, outside every timed phase
    res = json.loads(path.read_text()) if path.is_file() else {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores", "torch": torch.__version__,
        "threads": torch.get_num_threads(), "minutes": args.minutes, "n": args.n, "config": CONFIG, "rows": {}}
    for name in args.only or list(VARIANTS):
        run = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        row = {"overrides": VARIANTS[name], "date": datetime.datetime.now().isoformat(timespec="minutes"),
               **train_process(run, CONFIG, args.minutes, BASE + VARIANTS[name])}
        row.update(score(run, args.n))
        res["rows"][name] = row
        path.write_text(json.dumps(res, indent=1))
        print(json.dumps({name: row}), flush=True)


if __name__ == "__main__":
    main()
