"""The variational bound (bits/dim) of a run's checkpoints against training time.

    python bench/nll_vs_time.py RUN [--n 500] [--strata 50]

Every complete checkpoint of RUN (train with ``--set train.checkpoint_every=K
train.keep_checkpoints=1000`` to keep them all) is scored on the same fixed subset of the
dataset's test split with :func:`difflab.evaluate.likelihood.image_nll` (EMA weights,
stratified estimate of the sum over t); prints a markdown table, and JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from difflab import io  # noqa: E402
from difflab.measure import NLL_IMAGES, NLL_STRATA, evaluate_run_nll  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--n", type=int, default=NLL_IMAGES, help="test images")
    p.add_argument("--strata", type=int, default=NLL_STRATA, help="0 = the exact sum over t")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    print("| step | training minutes | bound (bits/dim) | std. error | prior | decoder |\n|---|---|---|---|---|---|")
    for ckpt in io.list_checkpoints(args.run):
        state = io.load_state(ckpt)
        b = evaluate_run_nll(args.run, n=args.n, strata=args.strata or None, checkpoint=ckpt, write=False,
                             progress=False)
        rows.append({"step": state["step"], "minutes": state["elapsed_s"] / 60, **b})
        print(f"| {state['step']} | {state['elapsed_s'] / 60:.1f} | {b['bpd']:.3f} | {b['bpd_stderr']:.3f} "
              f"| {b['prior_bpd']:.4f} | {b['decoder_bpd']:.3f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "n": args.n, "strata": args.strata, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
