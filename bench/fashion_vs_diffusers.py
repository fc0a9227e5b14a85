"""difflab vs diffusers on Fashion-MNIST, same wall-clock budget, one run; plus FID vs sampler.

    python bench/fashion_vs_diffusers.py --minutes 10 --n 2000 [--table full|short|none]

1. trains difflab (configs/fashion_mnist.yaml, unconditional like the peer) and the diffusers
   peer (bench/peer_diffusers.py) for the same number of minutes, one after the other, each in
   its own process;
2. samples n images from each at 20 steps of DPM-Solver++(2M) and reports FID with difflab's
   Fashion-MNIST feature extractor (trained once, cached), sampling time and peak memory;
3. the FID of the difflab model against sampler and step count.
Results go to bench/results/fashion-<date>.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
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
from sampler_table import TABLES, sampler_table  # noqa: E402

def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if res.returncode:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd)}")
    return res.stdout


def fid_of(images) -> float:
    return compute_fid(images, data="fashion-mnist", progress=False)


def sample_difflab(out: Path, n: int, sampler: str, steps: int, **options) -> tuple[float, float]:
    loaded = sampling_run(out)
    t0 = time.perf_counter()
    images = loaded.sample(n, sampler=sampler, steps=steps, seed=0, progress=False, **options).data  # (n, H, W, C)
    seconds = time.perf_counter() - t0
    return fid_of(images), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--table", choices=sorted(TABLES), default="full")
    p.add_argument("--n-table", type=int, help="samples per row of the sampler table (default --n)")
    p.add_argument("--config", default="configs/fashion_mnist.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--skip-peer", action="store_true")
    args = p.parse_args()
    date = datetime.date.today().isoformat()
    work = args.out / f"fashion-{date}"
    work.mkdir(parents=True, exist_ok=True)
    get_feature_extractor("fashion-mnist")  # trained once and cached, outside every timed phase
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "n": args.n, "n_table": args.n_table or args.n, "minutes": args.minutes, "config": args.config}
    res["difflab_train"] = train_process(work / "difflab", args.config, args.minutes,
                                         ["data.class_conditional=false", "train.checkpoint_every=100",
                                          "train.keep_checkpoints=1000"])  # all kept: bench/nll_vs_time.py
    res["difflab_fid"], res["difflab_sample_s"] = sample_difflab(work / "difflab", args.n, "dpmpp-2m", 20)
    if not args.skip_peer:
        peer_dir = work / "diffusers"
        res["peer_train"] = json.loads(run([sys.executable, "bench/peer_diffusers.py", "train", "--out",
                                            str(peer_dir), "--minutes", str(args.minutes)]).strip().splitlines()[-1])
        peer = json.loads(run([sys.executable, "bench/peer_diffusers.py", "sample", "--out", str(peer_dir),
                               "--n", str(args.n), "--steps", "20"]).strip().splitlines()[-1])
        import numpy as np
        res["peer_fid"] = fid_of(np.load(peer_dir / f"samples-{args.n}-20.npz")["images"])
        res["peer_sample_s"] = peer["sample_seconds"]
    res["table"] = sampler_table(work / "difflab", "fashion-mnist", args.n_table or args.n, TABLES[args.table])
    (args.out / f"fashion-{date}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
