"""Text: the methods of task text on one corpus, at the same parameter count and the same CPU budget:

    python bench/text.py --corpus bible --minutes 20 --parallel 2      # train the five shipped configs, then score
    python bench/text.py --corpus bible --score-only

Each method is its shipped config (configs/text_<method>.yaml: the same transformer, characters, sequences of 256)
trained for --minutes, --parallel runs at a time on cores / parallel threads each. Scored on the corpus's test
documents (held out of every run's training and of every choice of settings, bench/text_levers.py):
- held-out bits/char: the ELBO of the diffusion methods, the exact NLL of the autoregressive baseline;
- samples at each number of steps, judged by the autoregressive run (generative perplexity and bits/char: lower is
  more like the corpus to the judge, which also judges its own samples, so its own row is flattered), their unigram
  entropy and distinct-n (a collapse into repetition lowers them), beside real held-out windows;
- seconds per sample of 256 characters: one sequence at a time (latency) and --batch at once (throughput), each
  diffusion method at 32 steps against the autoregressive model's 256 steps with its key-value cache, measured
  alternately --repeats times (medians);
- infilling: --infills held-out windows with their first and last quarter given, the middle filled at 32 steps;
  the judge's bits/char of the filled middle given the prefix (beside the real middle's), and whether the prefix and
  suffix come back exactly.
The masked run is also sampled in confidence order (its mask-predict sampler, MaskGIT/LLaDA's low-confidence
re-masking with the shipped noise) at the masked steps: the same network, another way to unmask.
--variants NAME=METHOD:KEY=V,... trains and scores a method's config with overrides beside them (its bound and its
samples at the method's most steps), e.g. the setting a lever replaced.
Results bench/results/text-<corpus>-<date>.json, figure bench/figures/text-<corpus>.png (or --name NAME).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from difflab.evaluate.text import bits_per_char, diversity  # noqa: E402
from difflab.tasks import load_run  # noqa: E402
from difflab.tasks.base import Samples  # noqa: E402
from difflab.tasks.text import TextCondition, judged as judge_texts  # noqa: E402
from difflab.tasks.text_methods import METHODS  # noqa: E402
from runs import run_summary, train_in_parallel  # noqa: E402

SEED = 20261202
STEPS = {"masked": (4, 8, 16, 32, 64, 128), "mask-predict": (8, 32, 128), "uniform": (8, 32, 128),
         "embedding": (8, 32, 128), "autoregressive": (None,),  # None: one step per token
         "block": (16, 32, 64, 128)}  # block: at least one step per block (16 blocks of 16 at length 256)
CONFIDENCE_SAMPLER, CONFIDENCE_STEPS = "mask-predict", STEPS["masked"]  # the masked run's confidence-order rows
TIMED_STEPS = 32  # the diffusion methods' steps in the timing and infilling rows


def config_of(method: str) -> Path:
    return ROOT / "configs" / f"text_{method.replace('-', '_')}.yaml"


def judged(judge, texts: list[str]) -> dict:
    """The judge's bits/char and perplexity of ``texts`` with their unigram entropy and distinct-n."""
    return {**judge_texts(judge, texts), **diversity(texts)}


def timing(runs: dict, batch: int, repeats: int) -> dict:
    """Median seconds per sample of each run at 1 and ``batch`` sequences, measured alternately."""
    times: dict[str, dict[str, list[float]]] = {m: {"1": [], str(batch): []} for m in runs}
    for r in range(repeats):
        for method, run in runs.items():
            steps = None if method == "autoregressive" else TIMED_STEPS
            for n in (1, batch):
                t0 = time.perf_counter()
                run.sample(n, steps=steps, seed=SEED + r, progress=False)
                times[method][str(n)].append((time.perf_counter() - t0) / n)
    return {m: {f"seconds_per_sample_batch_{n}": statistics.median(v) for n, v in t.items()} for m, t in times.items()}


def infilling(run, judge, windows: list[str], steps: int) -> dict:
    """Fill the middle half of each window given its first and last quarter."""
    exact, filled, real = 0, [], []
    for i, text in enumerate(windows):
        q = len(text) // 4
        prefix, middle, suffix = text[:q], text[q:len(text) - q], text[len(text) - q:]
        out = str(run.sample(1, cond=TextCondition(prefix, suffix), steps=steps, seed=SEED + i, progress=False).data[0])
        exact += out.startswith(prefix) and out.endswith(suffix)
        filled.append((prefix, out[len(prefix):len(out) - len(suffix)]))
        real.append((prefix, middle))

    def span_bits(pairs):
        nats = chars = 0
        for prefix, mid in pairs:
            nats += judge.score_texts([prefix + mid])[0] - judge.score_texts([prefix])[0]
            chars += len(mid)
        return bits_per_char(nats, chars)

    return {"infill_n": len(windows), "infill_exact": exact / len(windows), "infill_bits_per_char": span_bits(filled),
            "infill_real_bits_per_char": span_bits(real)}


def figure(res: dict, out: Path) -> Path:
    """Judge bits/char of samples against steps per method (the autoregressive model and real text as lines), and
    held-out bits/char per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    rows = res["rows"]
    for method in STEPS:
        for sampler in (None, CONFIDENCE_SAMPLER):
            mine = [r for r in rows if r["method"] == method and r.get("temperature", 1) == 1
                    and r.get("top_p", 1) == 1 and r.get("sampler") == sampler]
            if not mine:
                continue
            if method == "autoregressive":
                left.axhline(mine[0]["gen_bits_per_char"], color="k", ls="--", label="autoregressive (256 steps)")
            else:
                left.plot([r["steps"] for r in mine], [r["gen_bits_per_char"] for r in mine], marker="o",
                          ls="-" if sampler is None else "--",
                          label=method if sampler is None else f"{method}, confidence order ({sampler} sampler)")
    left.axhline(rows[0]["gen_bits_per_char"], color="grey", ls=":", label="held-out text")
    left.set(xscale="log", xlabel="sampling steps", ylabel="bits/char under the autoregressive judge",
             title=f"samples of 256 characters ({res['corpus']})")
    left.legend(fontsize=7)
    firsts = {r["method"]: r for r in rows if "bits_per_char" in r}
    names = list(firsts)
    right.bar(names, [firsts[m]["bits_per_char"] for m in names],
              yerr=[firsts[m]["bits_per_char_stderr"] or 0 for m in names], color="tab:blue")
    right.set(ylabel="held-out bits/char (bound; AR exact)",
              title=f"{res['minutes']:g} minutes each, {res['threads_per_run']} thread(s)")
    right.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="bible")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--nll-n", type=int, default=300, help="held-out windows of the bound")
    p.add_argument("--n", type=int, default=32, help="samples per row")
    p.add_argument("--batch", type=int, default=32, help="sequences at once in the throughput timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--infills", type=int, default=16)
    p.add_argument("--draws", nargs="*", default=[], metavar="T,P",
                   help="extra rows of masked (at its most steps) and autoregressive samples drawn at temperature T "
                        "and top-p P (chosen with bench/text_levers.py --sampling)")
    p.add_argument("--variants", nargs="*", default=[], metavar="NAME=METHOD:KEY=V,...",
                   help="extra runs of a method's config with overrides, trained beside the methods and scored by "
                        "their bound and samples at the method's most steps (e.g. a setting before a lever)")
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--name", help="results NAME-<date>.json and bench/figures/NAME.png (default text-CORPUS)")
    p.add_argument("--figure-only", type=Path, metavar="JSON", help="redraw the figure of a results file")
    args = p.parse_args()
    if args.figure_only:
        res = json.loads(args.figure_only.read_text())
        print(figure(res, ROOT / "bench" / "figures" / f"text-{res['corpus']}.png"))
        return
    folder = ROOT / "bench" / "results" / f"text-{args.corpus}"
    method_of, overrides = {m: m for m in args.methods}, {m: [] for m in args.methods}  # run name -> ...
    for v in args.variants:
        name, _, spec = v.partition("=")
        method, _, sets = spec.partition(":")
        if method not in METHODS:
            raise SystemExit(f"--variants {v!r}: write NAME=METHOD:KEY=V,... with METHOD one of {', '.join(METHODS)}")
        method_of[name], overrides[name] = method, [o for o in sets.split(",") if o]
    folders = {m: folder / m.replace(" ", "-") for m in method_of}
    if not args.score_only:
        train_in_parallel([(folders[m], config_of(method_of[m]), args.minutes,
                            [f"data.name={args.corpus}", *overrides[m]]) for m in method_of], args.parallel)
    if args.train_only:
        return
    runs = {m: load_run(folders[m]) for m in method_of}
    judge = runs["autoregressive"]
    held = judge.held_out()
    tokens, _ = held.windows(judge.config.text.length)
    pick = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(SEED))[:args.n + args.infills]
    real = [judge.tokenizer.decode(tokens[i].tolist()) for i in pick]
    rows = [{"method": "held-out text", **judged(judge, real[:args.n])}]
    print(f"held-out text: judge {rows[0]['gen_bits_per_char']:.3f} bits/char", flush=True)
    for method, run in runs.items():
        b = run.nll(args.nll_n, progress=False)
        summary = run_summary(folders[method])
        base = {"method": method, "overrides": overrides[method],
                "parameters": sum(q.numel() for q in run.model.parameters()),
                "train_steps": summary.pop("steps"), **summary, "bits_per_char": b["bits_per_char"],
                "bits_per_char_stderr": b["bits_per_char_stderr"], "exact": b["exact"]}
        print(f"{method}: {base['parameters'] / 1e6:.2f}M parameters, {base['train_steps']} steps, held-out "
              f"{b['bits_per_char']:.3f} bits/char", flush=True)
        draws = [(steps, 1.0, 1.0, None) for steps in STEPS[method_of[method]]]  # None: the run's sampler
        if method not in args.methods:  # a variant: its method's most steps only
            draws = draws[-1:]
        elif method in ("masked", "autoregressive"):
            draws += [(STEPS[method][-1], *map(float, d.split(",")), None) for d in args.draws]
        if method == "masked":
            draws += [(steps, 1.0, 1.0, CONFIDENCE_SAMPLER) for steps in CONFIDENCE_STEPS]
        last = None  # the method's row at its most steps and temperature 1: the infilling numbers go there
        for steps, temperature, top_p, sampler in draws:
            t0 = time.perf_counter()
            samples: Samples = run.sample(args.n, cond=TextCondition(temperature=temperature, top_p=top_p),
                                          sampler=sampler, steps=steps, seed=SEED, progress=False)
            row = {**base, "steps": steps or run.config.text.length, "temperature": temperature, "top_p": top_p,
                   "sampler": sampler, "sample_seconds": time.perf_counter() - t0,
                   **judged(judge, [str(t) for t in samples.data]), "example": str(samples.data[0])}
            rows.append(row)
            last = row if (temperature, top_p, sampler) == (1.0, 1.0, None) else last
            print(f"  {row['steps']:4d} steps, {sampler or 'its sampler'}, temperature {temperature:g}, "
                  f"top-p {top_p:g}: judge "
                  f"{row['gen_bits_per_char']:.3f} bits/char, entropy {row['unigram_entropy']:.2f}, distinct-2 "
                  f"{row['distinct_2']:.2f}", flush=True)
        if run.method.infills and method in args.methods:
            last |= infilling(run, judge, real[args.n:], TIMED_STEPS)
            print(f"  infilling: exact {last['infill_exact']:.2f}, judge {last['infill_bits_per_char']:.3f} "
                  f"bits/char (real {last['infill_real_bits_per_char']:.3f})", flush=True)
    times = timing({m: runs[m] for m in args.methods}, args.batch, args.repeats)
    print("seconds per sample:", json.dumps(times, indent=1), flush=True)
    date = datetime.date.today().isoformat()
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "corpus": args.corpus, "minutes": args.minutes, "parallel": args.parallel,
           "threads_per_run": max(1, (os.cpu_count() or 1) // args.parallel), "seed": SEED, "n": args.n,
           "nll_windows": args.nll_n, "rows": rows, "timing": times, "timed_steps": TIMED_STEPS}
    name = args.name or f"text-{args.corpus}"
    out = ROOT / "bench" / "results" / f"{name}-{date}.json"
    out.write_text(json.dumps(res, indent=1))
    fig = figure(res, ROOT / "bench" / "figures" / f"{name}.png")
    print(f"results {out.relative_to(ROOT)}, figure {fig.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
