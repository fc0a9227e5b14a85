"""The peer a user would pick instead: diffusers' UNet2DModel + DDPMScheduler.

Follows diffusers' examples/unconditional_image_generation/train_unconditional.py recipe
(epsilon prediction, linear DDPM schedule with 1000 steps, AdamW lr 1e-4 with betas
(0.95, 0.999) and weight decay 1e-6, 500 warm-up steps, EMA with warm-up power 3/4, MSE
loss), scaled to Fashion-MNIST on a CPU: widths 32/48/64 with attention in the middle level
(1.33M parameters, about difflab's 1.1M default), batch 64, images padded 28 -> 32 with
black (UNet2DModel needs sizes divisible by 4 here) and cropped back for evaluation. Its
best sampler for few steps, DPMSolverMultistepScheduler, samples it.

Usage (one phase per process, so memory and time are measured cleanly):
    python bench/peer_diffusers.py train --minutes 30 --out DIR [--snapshots 2 5 10]
    python bench/peer_diffusers.py sample --out DIR --n 2000 --steps 20 [--minute 10]

``--snapshots`` also saves the EMA weights as they are after those minutes (DIR/min-M): the recipe
has no schedule that depends on the budget (constant lr after warm-up, EMA warm-up by step), so
a snapshot at M minutes is the model an M-minute run would end with.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from difflab.data import load_dataset  # noqa: E402
from difflab.data.images import to_model_range, to_uint8  # noqa: E402

PAD = 2  # 28 + 2 * 2 = 32


def build_peer() -> UNet2DModel:
    return UNet2DModel(sample_size=32, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(32, 48, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)


def save_peer(model: UNet2DModel, ema: EMAModel, scheduler: DDPMScheduler, folder: Path) -> None:
    """Save the EMA weights (and the noise schedule) as a diffusers model folder."""
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    model.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    ema.restore(model.parameters())


def train_peer(out: Path, minutes: float, batch_size: int = 64, seed: int = 0,
               snapshots: tuple[float, ...] = ()) -> dict:
    torch.manual_seed(seed)
    data = load_dataset("fashion-mnist").images  # uint8 (N, 1, 28, 28)
    model = build_peer()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_sched = get_scheduler("constant_with_warmup", optimizer=opt, num_warmup_steps=500)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75,
                   model_cls=UNet2DModel, model_config=model.config)
    g = torch.Generator().manual_seed(seed)
    step, t0, pending, marks = 0, time.perf_counter(), sorted(m for m in snapshots if m < minutes), {}
    bar = tqdm(desc="diffusers peer", unit="step")
    while time.perf_counter() - t0 < 60 * minutes:
        if pending and time.perf_counter() - t0 >= 60 * pending[0]:
            save_peer(model, ema, scheduler, out / f"min-{pending[0]:g}")
            marks[f"{pending[0]:g}"] = {"steps": step, "seconds": time.perf_counter() - t0}
            pending.pop(0)
        idx = torch.randint(0, len(data), (batch_size,), generator=g)
        x0 = F.pad(to_model_range(data[idx]), (PAD,) * 4, value=-1.0)  # (B, 1, 32, 32)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch_size,), generator=g)
        loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(model.parameters())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    seconds = time.perf_counter() - t0
    save_peer(model, ema, scheduler, out)
    stats = {"steps": step, "train_seconds": seconds, "img_per_s": step * batch_size / seconds, "snapshots": marks,
             "params": sum(p.numel() for p in model.parameters()),
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    (out / "train.json").write_text(json.dumps(stats, indent=1))
    return stats


@torch.no_grad()
def sample_peer(out: Path, n: int, steps: int, batch_size: int = 500, seed: int = 0) -> dict:
    """Sample n images into out/samples-<n>-<steps>.npz; out is a run or a snapshot folder."""
    model = UNet2DModel.from_pretrained(out / "unet").eval()
    scheduler = DPMSolverMultistepScheduler.from_pretrained(out / "scheduler")
    g = torch.Generator().manual_seed(seed)
    images, t0 = [], time.perf_counter()
    for start in tqdm(range(0, n, batch_size), desc="peer sampling"):
        b = min(batch_size, n - start)
        scheduler.set_timesteps(steps)
        x = torch.randn((b, 1, 32, 32), generator=g)
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t).sample, t, x).prev_sample
        images.append(to_uint8(x[:, :, PAD:-PAD, PAD:-PAD]).permute(0, 2, 3, 1).numpy())  # (B, 28, 28, 1)
    seconds = time.perf_counter() - t0
    np.savez(out / f"samples-{n}-{steps}.npz", images=np.concatenate(images))
    return {"sample_seconds": seconds, "n": n, "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["train", "sample"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--snapshots", type=float, nargs="*", default=[], help="train: also save the model after these minutes")
    p.add_argument("--minute", type=float, help="sample: the snapshot of this minute (default the end of training)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase == "train":
        stats = train_peer(args.out, args.minutes, snapshots=tuple(args.snapshots))
    else:
        stats = sample_peer(args.out / f"min-{args.minute:g}" if args.minute else args.out, args.n, args.steps)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
