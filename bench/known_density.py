"""The known-density check: the ELBO of a model trained on a 2-D Gaussian mixture against its entropy.

    python bench/known_density.py --n 16384 --floor-n 262144

Trains ``configs/mixture2d.yaml`` (or ``--config``, with ``--set`` overrides) into ``--out``
(reused when it holds a finished run), then measures the bound E[-ELBO] (nats per sample) of
every checkpoint against the true entropy H (:func:`difflab.evaluate.known_density.bound_vs_entropy`):
bound - H = floor + excess, where the floor is the bound of the exact denoiser E[x_0 | x_t]
(the best any network can do with this schedule, T and reverse variance) and the excess is
what the network's errors add. Prints a markdown table; ``--json`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from difflab import io  # noqa: E402
from difflab.config import load_config  # noqa: E402
from difflab.data.mixture import load_mixture  # noqa: E402
from difflab.evaluate.known_density import ElboOptions, bound_vs_entropy, exact_floor  # noqa: E402
from difflab.schedules import schedule_from_config  # noqa: E402
from difflab.tasks.toy2d import Toy2DTask, load_toy_denoiser  # noqa: E402
from difflab.train import train  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "mixture2d.yaml"))
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(ROOT / "runs" / "known_density"), help="run folder")
    p.add_argument("--n", type=int, default=16384, help="samples x ~ p per checkpoint (the excess)")
    p.add_argument("--floor-n", type=int, default=262144, help="samples of the exact denoiser's bound (the floor)")
    p.add_argument("--timesteps", type=int, default=ElboOptions.timesteps,
                   help="stratified step terms per sample after the exact head (0: all T-1 exactly)")
    p.add_argument("--exact-steps", type=int, default=ElboOptions.exact_steps, help="head of step terms summed exactly")
    p.add_argument("--variance", default=ElboOptions.variance, help="reverse variance: beta | beta_tilde")
    p.add_argument("--json", help="also write the rows here")
    return p.parse_args()


def ensure_trained(cfg, out: Path) -> float | None:
    """Train unless ``out`` holds a finished run; the training seconds, or None when reused."""
    last = io.latest_checkpoint(out)
    if last is not None and io.load_state(last).get("finished"):
        return None
    t0 = time.perf_counter()
    train(Toy2DTask(cfg), out, resume=last is not None, progress=False)
    return time.perf_counter() - t0


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out)
    torch.set_num_threads(1)
    train_s = ensure_trained(cfg, out)
    mixture = load_mixture(cfg.data.name)
    schedule = schedule_from_config(cfg.diffusion)
    options = ElboOptions(variance=args.variance, timesteps=args.timesteps or None, exact_steps=args.exact_steps)
    t0 = time.perf_counter()
    floor = exact_floor(mixture, schedule, n=args.floor_n, options=options)
    print(f"floor {floor} ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = []
    for ckpt in io.list_checkpoints(out):
        _, denoiser = load_toy_denoiser(out, ckpt)
        state = io.load_state(ckpt)
        check = bound_vs_entropy(denoiser, mixture, schedule, n=args.n, options=options, floor=floor)
        rows.append({"step": int(state["step"]), "train_s": float(state["elapsed_s"]), **asdict(check)})
        print(json.dumps(rows[-1]), flush=True)
    print_table(rows, cfg, args, train_s)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def print_table(rows: list[dict], cfg, args: argparse.Namespace, train_s: float | None) -> None:
    d, m, t = cfg.diffusion, cfg.model, cfg.train
    floor = rows[0]["floor"]
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
          f"1 thread; {d.schedule} schedule, T={d.timesteps}, {d.prediction}-prediction, MLP {m.mlp_width}x"
          f"{m.mlp_blocks} blocks, batch {t.batch_size}; reverse variance {args.variance}; "
          + (f"training took {train_s:.0f} s" if train_s is not None else "run reused"))
    print(f"n = {rows[0]['excess']['n']} samples per checkpoint, {args.exact_steps} exact + "
          f"{args.timesteps or 'all'} stratified step terms per sample")
    print(f"true entropy H = {rows[0]['entropy']:.4f} nats; floor (exact denoiser) = "
          f"{floor['mean']:+.4f} +- {floor['se']:.4f} nats from {floor['n']} samples\n")
    print("| step | train s | bound (nats) | bound - H | SE | excess over exact | SE | direct bound - H | SE |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e, direct = r["excess"], r["direct"]
        print(f"| {r['step']} | {r['train_s']:.0f} | {r['bound']:.4f} | {r['gap']:+.4f} | {r['gap_se']:.4f} | "
              f"{e['mean']:+.4f} | {e['se']:.4f} | {direct['mean']:+.4f} | {direct['se']:.4f} |")


if __name__ == "__main__":
    main()
