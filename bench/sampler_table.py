"""FID of one trained image run against sampler, step count and step grid.

    python bench/sampler_table.py RUN --data fashion-mnist --n 500 --table grids

Every row samples ``--n`` images with seed 0 from the run's EMA weights and scores them with
difflab's feature extractor for ``--data``. Rows print as JSON lines as they finish; the whole
table goes to ``--json`` when given. Used by ``bench/fashion_vs_diffusers.py`` too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from difflab.evaluate.fid import compute_fid  # noqa: E402
from difflab.tasks import sampling_run  # noqa: E402

Row = tuple[str, int, dict]  # (sampler, steps, options: eta, variance, grid)

# the lecture's question of why sampling adds noise is ddim eta 0 vs 1
TABLES: dict[str, list[Row]] = {
    "short": [("dpmpp-2m", 10, {}), ("dpmpp-2m", 20, {}), ("ddim", 20, {"eta": 0.0}), ("ddim", 20, {"eta": 1.0}),
              ("ddpm", 1000, {})],
    "full": [("ddpm", 1000, {}),
             ("ddim", 10, {"eta": 0.0}), ("ddim", 10, {"eta": 1.0}), ("ddim", 20, {"eta": 0.0}),
             ("ddim", 20, {"eta": 1.0}), ("ddim", 50, {"eta": 0.0}), ("ddim", 50, {"eta": 1.0}),
             ("dpmpp-2m", 5, {}), ("dpmpp-2m", 10, {}), ("dpmpp-2m", 20, {}),
             ("euler", 20, {}), ("heun", 10, {}), ("heun", 20, {})],
    # which step grid suits few-step DPM-Solver++ (issue 5: chosen by measurement)
    "grids": [("dpmpp-2m", 10, {"grid": g}) for g in ("trailing", "linspace", "uniform", "logsnr", "karras")]
    + [("dpmpp-2m", 20, {"grid": g}) for g in ("trailing", "logsnr", "karras")],
    # does the ODE converge, and to what (issue 5: what a distilled student can imitate)
    "ode": [("dpmpp-2m", n, {"grid": "edm"}) for n in (8, 10, 12)]
    + [("dpmpp-2m", 50, {"grid": g}) for g in ("karras", "logsnr")] + [("ddim", 100, {"eta": 0.0})],
    "reference": [("ddpm", 1000, {})],
    "none": [],
}


def score_row(run: Path, data: str, n: int, sampler: str, steps: int, **options) -> dict:
    """Sample n images (seed 0) and return {sampler, steps, options..., fid, seconds}."""
    loaded = sampling_run(run)
    t0 = time.perf_counter()
    images = loaded.sample(n, sampler=sampler, steps=steps, seed=0, progress=False, **options).data  # (n, H, W, C)
    seconds = time.perf_counter() - t0
    return {"sampler": sampler, "steps": steps, **options, "n": n,
            "fid": compute_fid(images, data=data, progress=False), "seconds": seconds}


def sampler_table(run: Path, data: str, n: int, rows: list[Row]) -> list[dict]:
    """Score every row; print each as a JSON line as it finishes."""
    out = []
    for sampler, steps, options in rows:
        out.append(score_row(run, data, n, sampler, steps, **options))
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--table", choices=sorted(TABLES), nargs="+", default=["grids"])
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = [row for name in args.table for row in TABLES[name]]
    table = sampler_table(args.run, args.data, args.n, rows)
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "data": args.data, "table": table}, indent=1))


if __name__ == "__main__":
    main()
