"""Prototype (issue 5, not part of difflab yet): trajectory distillation of a coarse sampler.

    B_TRAJ=8 LR=3e-4 OMP_NUM_THREADS=1 taskset -c 1 python bench/experiments/trajectory_distill.py RUN N MINUTES OUT.pt [--teacher-fid]

The teacher is RUN sampled with DPM-Solver++(2M) on the ``edm`` grid of 2N steps from pure noise (the
best few-step sampler of the Fashion-MNIST model: FID@1000 3.90 at 8 steps, while its accurate ODE sits
at 6-7); the N-step student (initialised from RUN, its EMA saved to OUT.pt) learns, for every pair of
consecutive student times (every other time of the teacher's grid), to take in one DDIM step what the
teacher's trajectory does in two, with the progressive-distillation target x_tilde. Inputs come from
the teacher's own trajectories, so they match what the student sees when sampling. 2N teacher calls
give N training pairs (``difflab distill``'s first round: 8 calls per pair).

Measured 2026-11-30 on the 10-minute model of bench/results/qpm-2026-11-30 (one thread, 8 minutes):
4-step student FID@1000 8.41 (B_TRAJ 8, 1786 iterations) and 8.50 (B_TRAJ 16, 994); in 10 minutes
(B_TRAJ 8, about 2330 iterations) 8.04 at LR 3e-4 and 7.80 at LR 1e-3 (1.51x), against 10.7-11.2 for
``difflab distill`` in 10 minutes and 5.17 for 1000-step DDPM (issue 5 asks for at most 1.5x). The next step is to build this into
``difflab distill`` (student on the ``edm`` grid of N steps, the teacher's grid a refinement of it),
choosing its settings on other models than the reported one.
"""
import copy
import math
import os
import sys
import time

import numpy as np
import torch

from difflab.tasks.image import load_image_model
from difflab.denoisers import NetworkDenoiser, eps_from_x0, prediction_target
from difflab.samplers import ddim
from difflab.samplers.ddim import ddim_update
from difflab.samplers.common import with_clean
from difflab.schedules import make_schedule, step_grid, _expand
from difflab.distill import distillation_target
from difflab.data.images import to_uint8
from difflab.evaluate.fid import compute_fid

run, N, minutes, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
cfg, teacher_net = load_image_model(run)
sched = make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
pred = cfg.diffusion.prediction
teacher = NetworkDenoiser(teacher_net, sched, pred, clip_x0=cfg.sample.clip_x0)
G = with_clean(step_grid(sched, 2 * N, "edm").double())  # (2N + 1,), last CLEAN_T
S = G[:-1][::2]  # (N,) student times
lam = sched.log_snr_at(G[:-1]) / 2  # lambda = log(alpha / sigma)


@torch.no_grad()
def trajectory(z):
    """DPM-Solver++(2M) along G from z; the states at every grid time: (2N + 1, B, ...)."""
    states, prev = [z], None
    for i in range(2 * N):
        t, s = G[i].expand(len(z)), G[i + 1].expand(len(z))
        x0 = teacher(z, t)
        if prev is not None and i < 2 * N - 1:  # 2nd order, 1st order at the final step to clean
            r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
        else:
            D = x0
        z, prev = ddim_update(z, D, t, s, sched), x0
        states.append(z)
    return torch.stack(states)


def fid_of(denoiser, sampler_times, n=1000):
    g = torch.Generator().manual_seed(0)
    imgs = []
    with torch.no_grad():
        for _ in range(n // 500):
            imgs.append(to_uint8(ddim(denoiser, torch.randn(500, 1, 28, 28, generator=g), sched, sampler_times)).permute(0, 2, 3, 1).numpy())
    return round(compute_fid(np.concatenate(imgs), data="fashion-mnist", progress=False), 2)


if "--teacher-fid" in sys.argv:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([trajectory(torch.randn(500, 1, 28, 28, generator=g))[-1] for _ in range(2)])
    print("teacher 2M on edm", 2 * N, "steps:", round(compute_fid(to_uint8(x).permute(0, 2, 3, 1).numpy(), data="fashion-mnist", progress=False), 2), flush=True)
    print("teacher net, ddim on the student's", N, "times:", fid_of(teacher, S), flush=True)

student = copy.deepcopy(teacher_net).train().requires_grad_(True)
ema = copy.deepcopy(teacher_net).eval()
LR = float(os.environ.get("LR", "3e-4"))
opt = torch.optim.Adam(student.parameters(), lr=LR)
g = torch.Generator().manual_seed(1)
B_traj = int(os.environ.get("B_TRAJ", "8"))
t0, it = time.perf_counter(), 0
while time.perf_counter() - t0 < 60 * minutes:
    frac = (time.perf_counter() - t0) / (60 * minutes)
    for group in opt.param_groups:
        group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * frac))
    states = trajectory(torch.randn(B_traj, 1, 28, 28, generator=g))  # (2N + 1, b, C, H, W)
    z_t = states[0:2 * N:2].flatten(0, 1)  # (N b, ...) at S
    z_s = states[2::2].flatten(0, 1)  # (N b, ...) at the next student time (last: clean)
    t = S.repeat_interleave(B_traj)
    s = G[2::2].repeat_interleave(B_traj)
    ab_t, ab_s = sched.alpha_bar_at(t), sched.alpha_bar_at(s)
    x_tilde = distillation_target(z_t, z_s, ab_t, ab_s)
    ab = _expand(ab_t, z_t)
    target = prediction_target(pred, x_tilde, eps_from_x0(z_t, x_tilde, ab), ab)
    loss = (student(z_t, t.float()).float() - target.float()).pow(2).mean()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0); opt.step()
    with torch.no_grad():
        for pe, ps in zip(ema.parameters(), student.parameters()):
            pe.lerp_(ps, 1 - 0.99)
    it += 1
    if it % 200 == 0:
        print(it, "iters", round(time.perf_counter() - t0), "s loss", float(loss), flush=True)
print("iterations", it, flush=True)
torch.save(ema.state_dict(), out)
print("student", N, "steps, FID@1000:", fid_of(NetworkDenoiser(ema, sched, pred, clip_x0=cfg.sample.clip_x0), S), flush=True)
