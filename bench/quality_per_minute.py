"""Quality per CPU-minute on Fashion-MNIST, difflab against the diffusers peer, in one run (issue 5).

    python bench/quality_per_minute.py --budgets 2 5 10 30 --n 2000 --nfe-n 500 --distill-minutes 10

Phases (each result is saved as soon as it exists, so an interrupted run resumes where it
stopped; ``--phases`` runs a subset):

1. ``train``: configs/fashion_mnist.yaml (unconditional, like the peer) for each budget, one run per
   budget (its lr decay ends with the budget), each in its own process;
2. ``peer``: the diffusers peer (bench/peer_diffusers.py) once for the largest budget with
   snapshots at the others (its recipe has no budget-dependent schedule, so a snapshot at M
   minutes is what an M-minute run ends with);
3. ``fid``: n samples from every model at 20 NFE (difflab ``dpmpp-2m``, the peer its
   ``DPMSolverMultistepScheduler``), FID@n in difflab's Fashion-MNIST feature space, sampling
   seconds (the 10-minute pair is the sampling-time comparison);
4. ``distill``: ``difflab distill`` (trajectory distillation, its default) of the 10-minute model into
   students of 4, 2 and 1 NFE (``--students``), each in ``--distill-minutes``; the progressive students
   of earlier runs (``--teacher-solver dpmpp-2s``, one distillation of rounds 4, 2, 1 sharing
   ``--distill-minutes``) stay in the results as ``distill`` / ``student N``;
5. ``nfe``: FID@nfe-n of the 10-minute (``--reference``) model against NFE (1, 2, 4, 10, 20 for the ODE samplers,
   1000 for DDPM) and of the students;
6. ``plot``: FID against minutes for both, bench/figures/quality_per_minute.png.

Timed phases (train, peer, fid) must run alone on the machine, or as two processes, each one thread
pinned to its own core (what BENCHMARKS.md reports; ``--threads`` is recorded):

    OMP_NUM_THREADS=1 taskset -c 1 python bench/quality_per_minute.py --phases train fid --side difflab &
    OMP_NUM_THREADS=1 taskset -c 0 python bench/quality_per_minute.py --phases peer fid --side peer

Results: bench/results/<name>.json.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflab import io  # noqa: E402
from difflab.evaluate.features import get_feature_extractor  # noqa: E402
from difflab.evaluate.fid import compute_fid  # noqa: E402
from difflab.tasks import sampling_run  # noqa: E402
from runs import run_summary, train_process  # noqa: E402

CONFIG = "configs/fashion_mnist.yaml"
PHASES = ("train", "peer", "fid", "distill", "nfe", "plot")
SAMPLE_NFE = 20
# (label, sampler, steps, options): FID against NFE for the sampler family
NFE_ROWS = [(f"{s} {n}", s, n, {}) for s in ("ddim", "dpmpp-2m", "dpmpp-3m") for n in (1, 2, 4, 10, 20)] \
    + [("ddpm 1000", "ddpm", 1000, {})]
STUDENT_STEPS = (4, 2, 1)  # progressive students (rounds of one distillation, earlier runs)


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if res.returncode:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd)}")
    return res.stdout


def fid(images: np.ndarray) -> float:
    return round(compute_fid(images, data="fashion-mnist", progress=False), 2)


def merge(old: dict, new: dict) -> dict:
    """``old`` updated by ``new``, recursively: keys only ``old`` has are kept."""
    out = dict(old)
    for key, value in new.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def score(run_dir: Path, n: int, sampler: str | None = None, steps: int | None = None, **options) -> dict:
    """FID@n of a difflab run (its own sampler settings unless given) and the seconds sampling took."""
    loaded = sampling_run(run_dir)
    t0 = time.perf_counter()
    images = loaded.sample(n, sampler=sampler, steps=steps, seed=0, progress=False, **options).data  # (n, H, W, C)
    return {"fid": fid(images), "sample_seconds": round(time.perf_counter() - t0, 1), "n": n}


class Bench:
    """The results file and the run folders of one bench run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.work = args, args.out / args.name
        self.path = args.out / f"{args.name}.json"
        self.work.mkdir(parents=True, exist_ok=True)
        self.res = json.loads(self.path.read_text()) if self.path.is_file() else {
            "date": datetime.date.today().isoformat(), "torch": torch.__version__, "config": CONFIG,
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, {platform.processor()}",
            "n": args.n, "nfe_n": args.nfe_n, "difflab": {}, "peer": {}, "nfe": {}}

    def save(self) -> None:
        """Write the results, merged over what is on disk (the difflab and peer phases may run as two processes)."""
        on_disk = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.res = merge(on_disk, self.res)
        io.write_text_atomic(self.path, json.dumps(self.res, indent=1))

    def difflab_run(self, minutes: float) -> Path:
        return self.work / f"difflab-{minutes:g}m"

    def train(self) -> None:
        for m in self.args.budgets:
            summary = train_process(self.difflab_run(m), CONFIG, m, ["data.class_conditional=false"])
            self.res["difflab"].setdefault(f"{m:g}", {}).update(summary)
            self.save()

    def peer(self) -> None:
        top, rest = max(self.args.budgets), [m for m in self.args.budgets if m != max(self.args.budgets)]
        if "train" not in self.res["peer"]:
            out = run([sys.executable, "bench/peer_diffusers.py", "train", "--out", str(self.work / "diffusers"),
                       "--minutes", str(top), "--snapshots", *map(str, rest)])
            self.res["peer"]["train"] = json.loads(out.strip().splitlines()[-1])
            self.save()

    def fid(self) -> None:
        n, peer_dir, side = self.args.n, self.work / "diffusers", self.args.side
        for m in self.args.budgets:
            key, row = f"{m:g}", self.res["difflab"].setdefault(f"{m:g}", {})
            if "fid" not in row and side in ("both", "difflab"):
                row.update(score(self.difflab_run(m), n, "dpmpp-2m", SAMPLE_NFE))
                self.save()
            peer_row = self.res["peer"].setdefault(key, {})
            if "fid" not in peer_row and (peer_dir / "train.json").is_file() and side in ("both", "peer"):
                minute = [] if m == max(self.args.budgets) else ["--minute", key]
                out = run([sys.executable, "bench/peer_diffusers.py", "sample", "--out", str(peer_dir), "--n", str(n),
                           "--steps", str(SAMPLE_NFE), *minute])
                folder = peer_dir / (f"min-{key}" if minute else "")
                peer_row.update(sample_seconds=round(json.loads(out.strip().splitlines()[-1])["sample_seconds"], 1),
                                fid=fid(np.load(folder / f"samples-{n}-{SAMPLE_NFE}.npz")["images"]), n=n)
                self.save()

    def distill_dir(self) -> Path:
        return self.difflab_run(self.args.reference) / "distill"

    def student_dir(self, steps: int) -> Path:
        """The trajectory student of ``steps`` steps."""
        return self.distill_dir() / f"trajectory-{steps}" / f"steps-{steps}"

    def distill(self) -> None:
        for s in self.args.students:
            if not io.is_finished(self.student_dir(s)):
                run([sys.executable, "-m", "difflab.cli", "distill", str(self.difflab_run(self.args.reference)),
                     "--steps", str(s), "--minutes", str(self.args.distill_minutes), "--out",
                     str(self.student_dir(s).parent), "--no-progress", "--resume"])
            self.res.setdefault("distill_trajectory", {})[f"steps-{s}"] = {
                "minutes": self.args.distill_minutes, **run_summary(self.student_dir(s))}
            self.save()

    def nfe(self) -> None:
        teacher, n = self.difflab_run(self.args.reference), self.args.nfe_n
        self.res["nfe_n"] = n
        rows = [(label, teacher, sampler, steps, opts) for label, sampler, steps, opts in NFE_ROWS]
        rows += [(f"student {s}", self.distill_dir() / f"steps-{s}", None, None, {}) for s in STUDENT_STEPS]
        rows += [(f"trajectory student {s}", self.student_dir(s), None, None, {}) for s in self.args.students]
        only = self.args.nfe_rows
        for label, run_dir, sampler, steps, opts in rows:
            if only and not any(label.startswith(prefix) for prefix in only):
                continue
            if label not in self.res["nfe"] and io.latest_checkpoint(run_dir) is not None:
                self.res["nfe"][label] = score(run_dir, n, sampler, steps, **opts)
                print(label, self.res["nfe"][label], flush=True)
                self.save()

    def plot(self) -> None:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
        for who, label in (("difflab", "difflab (configs/fashion_mnist.yaml)"), ("peer", "diffusers UNet2DModel recipe")):
            points = sorted((float(k), v["fid"]) for k, v in self.res[who].items() if k != "train" and "fid" in v)
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        threads = sorted({side["threads"] for side in self.res.get("sides", {}).values()})
        per_side = "/".join(map(str, threads)) or "?"
        unit = "thread" if per_side == "1" else "threads"
        ax.set(xscale="log", yscale="log", xlabel=f"minutes of training ({per_side} {unit} each)",
               ylabel=f"FID@{self.res['n']} (difflab features), {SAMPLE_NFE} NFE",
               title=f"Fashion-MNIST, quality per CPU-minute ({self.res['date']})")
        ax.set_xticks(self.args.budgets, [f"{m:g}" for m in self.args.budgets])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        figure = ROOT / "bench" / "figures" / "quality_per_minute.png"
        figure.parent.mkdir(exist_ok=True)
        fig.savefig(figure)
        print("wrote", figure)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[2, 5, 10, 30], help="training minutes")
    p.add_argument("--n", type=int, default=2000, help="samples for the FID of each budget")
    p.add_argument("--nfe-n", type=int, default=500, help="samples per row of the FID-against-NFE table")
    p.add_argument("--reference", type=float, default=10.0,
                   help="the budget whose model is distilled and sampled at every NFE (one of --budgets)")
    p.add_argument("--distill-minutes", type=float, default=10.0, help="distill: minutes of each student")
    p.add_argument("--students", type=int, nargs="+", default=[4, 2, 1],
                   help="distill, nfe: the trajectory students' steps (to split them over processes)")
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--nfe-rows", nargs="+", metavar="PREFIX",
                   help="nfe: only the rows whose label starts so (e.g. 'ddpm' 'student'), to split them over processes")
    p.add_argument("--side", choices=["both", "difflab", "peer"], default="both",
                   help="fid: sample only this side's models (to run the two sides as two pinned processes)")
    p.add_argument("--name", default=f"qpm-{datetime.date.today().isoformat()}")
    args = p.parse_args()
    if args.reference not in args.budgets:
        sys.exit(f"--budgets must include the reference budget {args.reference:g}")
    get_feature_extractor("fashion-mnist")  # trained once and cached, outside every timed phase
    bench = Bench(args)
    if {"train", "peer", "fid"} & set(args.phases):  # the timed phases: record what they ran on
        bench.res.setdefault("sides", {})[args.side] = {
            "threads": torch.get_num_threads(), "cores": sorted(os.sched_getaffinity(0)), "phases": args.phases}
        bench.save()
    for phase in args.phases:
        getattr(bench, phase)()
    print(json.dumps(bench.res, indent=1))


if __name__ == "__main__":
    main()
