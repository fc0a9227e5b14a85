"""Text levers: which settings of the shipped text configs pay, chosen on validation documents (training documents
held out by text.validation_fraction; never the test split the benchmark reports on):

    python bench/text_levers.py --corpus bible --minutes 5 --parallel 2
    python bench/text_levers.py --score-only
    python bench/text_levers.py --sampling "masked count" --judge RUN     # temperature / top-p of the samples
    python bench/text_levers.py --sampling masked --remask --judge RUN     # mask-predict's re-masking noise

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
    "mask-predict": ("mask-predict", []),
    "masked lr 3e-3": ("masked", ["train.lr=3e-3"]),
    "autoregressive lr 3e-3": ("autoregressive", ["train.lr=3e-3"]),
    "masked width 192 depth 2": ("masked", ["text.width=192", "text.depth=2"]),
    "masked width 96 depth 6": ("masked", ["text.width=96", "text.depth=6"]),
    "masked batch 64": ("masked", ["train.batch_size=64"]),
    "masked time-conditioned": ("masked", ["text.time_conditioning=true"]),
    "masked count": ("masked", ["text.estimator=count"]),
    "masked lr 6e-3": ("masked", ["train.lr=6e-3"]),
    "masked lr 1e-2": ("masked", ["train.lr=1e-2"]),
    "masked beta2 0.95": ("masked", ["train.adam_beta2=0.95"]),
    "masked warmup 50": ("masked", ["train.warmup_steps=50"]),
    "masked no clipping": ("masked", ["train.grad_clip=0"]),
    "masked count gamma 0.5": ("masked", ["text.count_gamma=0.5"]),
    "masked count gamma 1": ("masked", ["text.count_gamma=1"]),
    "masked count gamma 0.25": ("masked", ["text.count_gamma=0.25"]),
    "masked count gamma 0.75": ("masked", ["text.count_gamma=0.75"]),
    "masked width 192 depth 2 count": ("masked", ["text.width=192", "text.depth=2"]),
    "autoregressive width 192 depth 2": ("autoregressive", ["text.width=192", "text.depth=2"]),
}


def config_of(method: str) -> Path:
    return ROOT / "configs" / f"text_{method.replace('-', '_')}.yaml"


DRAWS = [(1.0, 1.0), (0.9, 1.0), (0.8, 1.0), (0.7, 1.0), (1.0, 0.95), (1.0, 0.9), (0.9, 0.95)]  # (temperature, top_p)
REMASK_NOISES = [0.0, 1.0, 2.0, 4.5, 8.0, 16.0, 32.0]  # --remask: tau of mask-predict's noise (MaskGIT's 4.5 among them)
# the rule that picks a draw, fixed before any was measured: the lowest judge bits/char among the draws whose samples
# keep the validation text's diversity (unigram entropy within ENTROPY_SLACK bits, distinct-2 within DISTINCT_SLACK)
ENTROPY_SLACK, DISTINCT_SLACK = 0.1, 0.05


def chosen_draw(rows: list[dict]) -> dict | None:
    """The draw of ``rows`` (rows[0]: the validation text) that the rule above picks; None when no draw keeps the
    text's diversity."""
    real = rows[0]
    keep = [r for r in rows[1:] if abs(r["unigram_entropy"] - real["unigram_entropy"]) <= ENTROPY_SLACK
            and r["distinct_2"] >= real["distinct_2"] - DISTINCT_SLACK]
    return min(keep, key=lambda r: r["gen_bits_per_char"]) if keep else None


def sampling_lever(folder: Path, judge_folder: Path, n: int, steps: int, seed: int = 0,
                   remask: bool = False, noises: list[float] | None = None) -> list[dict]:
    """The judge's bits/char, unigram entropy and distinct-n of ``n`` samples at each of DRAWS (``remask``: of the
    mask-predict sampler at each of REMASK_NOISES), and of held-out validation windows: how far a lower temperature
    or a nucleus lowers the score, and what it costs in entropy."""
    from difflab.tasks.text import TextCondition
    from text import judged  # bench/text.py's: the judge's score with the diversity measures

    run, judge = load_run(folder), load_run(judge_folder)
    tokens, _ = run.held_out("validation").windows(run.config.text.length)
    pick = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(seed))[:n]
    real = [run.tokenizer.decode(tokens[i].tolist()) for i in pick]
    rows = [{"draw": "validation text", **judged(judge, real)}]
    draws = ([(f"mask-predict remask noise {tau:g}", {"remask_noise": tau}, "mask-predict") for tau in noises or REMASK_NOISES]
             if remask else [(f"temperature {temperature:g} top-p {top_p:g}",
                              {"temperature": temperature, "top_p": top_p}, None) for temperature, top_p in DRAWS])
    for name, settings, sampler in draws:
        texts = [str(t) for t in run.sample(n, cond=TextCondition(**settings), sampler=sampler, steps=steps,
                                            seed=seed, progress=False).data]
        rows.append({"draw": name, **settings, "sampler": sampler, "steps": steps, **judged(judge, texts),
                     "example": texts[0]})
    for r in rows:
        print(f"{r['draw']:32s} judge {r['gen_bits_per_char']:.3f} bits/char  entropy {r['unigram_entropy']:.3f}  "
              f"distinct-2 {r['distinct_2']:.3f}", flush=True)
    chosen = chosen_draw(rows)
    print(f"chosen: {chosen['draw'] if chosen else 'none (no draw keeps the validation text diversity)'}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="bible", help="data.name of every trial")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget of each trial")
    p.add_argument("--parallel", type=int, default=2, help="trials trained at once (each on cores / parallel threads)")
    p.add_argument("--n", type=int, default=300, help="validation windows scored")
    p.add_argument("--trials", nargs="*", default=list(TRIALS), help="names of TRIALS to run")
    p.add_argument("--folder", type=Path, default=ROOT / "bench" / "results" / "text-levers")
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--name", default="text-levers", help="results bench/results/<name>-<date>.json")
    p.add_argument("--sampling", metavar="TRIAL", help="only the sampling lever (DRAWS) of this trained trial")
    p.add_argument("--judge", type=Path, help="--sampling: the autoregressive run that judges the samples")
    p.add_argument("--steps", type=int, default=128, help="--sampling: sampling steps")
    p.add_argument("--remask", action="store_true", help="--sampling: the mask-predict sampler's REMASK_NOISES")
    p.add_argument("--noises", type=float, nargs="*", help="--remask: these noises instead of REMASK_NOISES")
    args = p.parse_args()
    if args.sampling:
        rows = sampling_lever(args.folder / args.sampling.replace(" ", "-"), args.judge, args.n, args.steps,
                              remask=args.remask, noises=args.noises)
        date = datetime.date.today().isoformat()
        out = ROOT / "bench" / "results" / f"{args.name}-{date}.json"
        out.write_text(json.dumps({"date": date, "machine": f"{platform.node()} {platform.machine()} "
                                   f"{os.cpu_count()} cores", "torch": torch.__version__, "trial": args.sampling,
                                   "judge": str(args.judge), "n": args.n, "rule": {"entropy_slack": ENTROPY_SLACK,
                                   "distinct_slack": DISTINCT_SLACK}, "chosen": (chosen_draw(rows) or {}).get("draw"),
                                   "rows": rows}, indent=1))
        print(f"results {out.relative_to(ROOT)}")
        return
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
    out = ROOT / "bench" / "results" / f"{args.name}-{date}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"results {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
