"""Training images/s of configs/fashion_mnist.yaml under the throughput levers, without training to the end.

    python bench/throughput.py [--threads 2] [--batch 64] [--iters 20]

Each variant builds the model, runs two warm-up steps (compile time shows as ``warmup_s``), then
times ``--iters`` full training steps (loss, backward, AdamW) on random data. Levers: channels-last,
bf16 autocast, torch.compile. JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from difflab.config import load_config
from difflab.losses import diffusion_loss
from difflab.schedules import schedule_from_config
from difflab.tasks.image import build_unet

CONFIG = "configs/fashion_mnist.yaml"
VARIANTS = {"fp32": {}, "channels-last": {"channels_last": True}, "bf16 autocast": {"bf16": True},
            "torch.compile": {"compile": True}}


def images_per_second(batch: int, iters: int, channels_last: bool = False, bf16: bool = False,
                      compile: bool = False) -> dict:
    torch.manual_seed(0)
    cfg = load_config(CONFIG, ["data.channels=1"])
    model = build_unet(cfg, 1)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    net = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), cfg.train.lr)
    schedule = schedule_from_config(cfg.diffusion)
    x0 = torch.randn(batch, 1, 28, 28).contiguous(memory_format=memory_format)  # (B, C, H, W)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(net, x0, schedule, prediction=cfg.diffusion.prediction)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step(), step()
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return {"img_per_s": round(batch * iters / (time.perf_counter() - t0), 1), "warmup_s": round(warmup, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--only", nargs="+", choices=sorted(VARIANTS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only or list(VARIANTS):
        row = {"variant": name, "threads": args.threads, "batch": args.batch,
               **images_per_second(args.batch, args.iters, **VARIANTS[name])}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
