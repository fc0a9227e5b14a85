"""Text levers: which settings of the shipped text configs pay, chosen on validation documents (training documents
held out by text.validation_fraction; never the test split the benchmark reports on):

    python bench/text_levers.py --corpus bible --minutes 5 --parallel 2
    python bench/text_levers.py --score-only

Each trial is a shipped config (configs/text_<method>.yaml) with overrides, trained for --minutes, --parallel at a
time on an equal share of the cores; scored by validation bits/char (the ELBO of the diffusion methods, the exact
NLL of the autoregressive one) on --n windows. Results bench/results/text-levers-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from difflab.tasks import load_run  # noqa: E402
from runs import run_summary, train_in_parallel  # noqa: E402

TRIALS = {  # name -> (method, overrides of its shipped config)
    "masked": ("masked", []),
    "autoregressive": ("autoregressive", []),
    "masked lr 3e-3": ("masked", ["train.lr=3e-3"]),
    "autoregressive lr 3e-3": ("autoregressive", ["train.lr=3e-3"]),
    "masked width 192 depth 2": ("masked", ["text.width=192", "text.depth=2"]),
    "masked width 96 depth 6": ("masked", ["text.width=96", "text.depth=6"]),
    "masked batch 64": ("masked", ["train.batch_size=64"]),
    "masked time-conditioned": ("masked", ["text.time_conditioning=true"]),
}


def config_of(method: str) -> Path:
    return ROOT / "configs" / f"text_{method.replace('-', '_')}.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="bible", help="data.name of every trial")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget of each trial")
    p.add_argument("--parallel", type=int, default=2, help="trials trained at once (each on cores / parallel threads)")
    p.add_argument("--n", type=int, default=300, help="validation windows scored")
    p.add_argument("--trials", nargs="*", default=list(TRIALS), help="names of TRIALS to run")
    p.add_argument("--folder", type=Path, default=ROOT / "bench" / "results" / "text-levers")
    p.add_argument("--score-only", action="store_true")
    args = p.parse_args()
    common = [f"data.name={args.corpus}", "text.validation_fraction=0.05"]
    folders = {name: args.folder / name.replace(" ", "-") for name in args.trials}
    if not args.score_only:
        train_in_parallel([(folders[n], config_of(TRIALS[n][0]), args.minutes, [*common, *TRIALS[n][1]])
                           for n in args.trials], args.parallel)
    rows = []
    for name in args.trials:
        run = load_run(folders[name])
        b = run.nll(args.n, split="validation", progress=False)
        params = sum(q.numel() for q in run.model.parameters())
        rows.append({"trial": name, "method": TRIALS[name][0], "overrides": TRIALS[name][1], "parameters": params,
                     **run_summary(folders[name]), "validation_bits_per_char": b["bits_per_char"],
                     "stderr": b["bits_per_char_stderr"], "windows": b["n"]})
        print(f"{name:28s} {params / 1e6:5.2f}M params {rows[-1]['steps']:6d} steps  "
              f"{b['bits_per_char']:.3f} +- {b['bits_per_char_stderr']:.3f} bits/char", flush=True)
    date = datetime.date.today().isoformat()
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "corpus": args.corpus, "minutes": args.minutes, "parallel": args.parallel,
           "split": "validation (5% of the training documents)", "trials": rows}
    out = ROOT / "bench" / "results" / f"text-levers-{date}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"results {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
