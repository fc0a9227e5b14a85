"""Text-to-image in words its captions never used (issue 17): the held-out vocabulary, lever by lever.

    python bench/t2i_words.py --minutes 10 --n 500                       # every trial of TRIALS, then scored
    python bench/t2i_words.py --trials grammar paraphrase --score-only   # score trained runs again

Each trial is configs/shapes.yaml with overrides, trained for --minutes alone on the machine (one after the other),
then one image is drawn for each of --n attribute combinations (seed BENCH_SEED) in three wordings of the same
combination: the grammar's own ("a large red circle at the top left"), the validation words and templates, and
the test words and templates of :mod:`difflab.data.shape_words` (never in a training caption). Each image is
judged by difflab's attribute classifier. Settings are chosen on the validation words by RULE; the test words are
the reported figure. The vocabulary split is printed and stored with the results
(bench/results/t2i-words-<date>.json, or --name).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflab.data.shape_words import prompts as worded, vocabulary  # noqa: E402
from difflab.data.shapes import caption, random_attributes  # noqa: E402
from difflab.evaluate.attributes import attribute_accuracy  # noqa: E402
from difflab.tasks import sampling_run  # noqa: E402
from runs import run_summary, train_process  # noqa: E402

BENCH_SEED = 2026  # the combinations' seed (not the dataset's 0 / 1 nor the classifier's)
WORDING_SEED = 17  # which held-out word and template each prompt gets
CONFIG = ROOT / "configs" / "shapes.yaml"
TRIALS = {  # name -> overrides of configs/shapes.yaml
    "grammar": ["data.captions=grammar"],
    "paraphrase": ["data.captions=paraphrase"],
    "paraphrase, pooled context": ["data.captions=paraphrase", "model.text_context=pooled"],
    "paraphrase, text noise 0.3": ["data.captions=paraphrase", "model.text_noise=0.3"],
    "paraphrase, normalised": ["data.captions=paraphrase", "model.text_normalize=true"],
    "paraphrase, MiniLM layer 4": ["data.captions=paraphrase", "model.text_layer=4"],
    "grammar, pooled context": ["data.captions=grammar", "model.text_context=pooled"],
    "paraphrase, scratch encoder": ["data.captions=paraphrase", "model.text_encoder=scratch"],
}
# fixed before any trial was scored: a lever pays when its validation-word all-four accuracy beats its baseline's
# by more than RULE_MARGIN (about two binomial standard errors at n = 500) while grammar prompts stay >= RULE_GRAMMAR
RULE_MARGIN, RULE_GRAMMAR = 0.05, 0.97
WORDINGS = ("grammar", "validation", "test")


def wordings(n: int) -> tuple[np.ndarray, dict[str, list[str]]]:
    """``n`` attribute combinations (N, 4) and their prompts in each of WORDINGS (the same combinations)."""
    attrs = random_attributes(n, BENCH_SEED)
    return attrs, {"grammar": [caption(a) for a in attrs], "validation": worded(attrs, "validation", WORDING_SEED),
                   "test": worded(attrs, "test", WORDING_SEED)}


def score(run: Path, attrs: np.ndarray, prompts: list[str], guidance: float | None = None) -> dict:
    """Attribute accuracy of one image per prompt (seed BENCH_SEED)."""
    loaded = sampling_run(run)
    t0 = time.perf_counter()
    images = loaded.sample(len(prompts), cond=prompts, guidance=guidance, seed=BENCH_SEED, progress=False).data
    acc = attribute_accuracy(images, attrs)
    return {**{f"attr_{k}": v for k, v in acc.items()}, "sample_seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict]) -> str:
    """Markdown: one line per trial, all-four accuracy per wording and the test words' per-attribute accuracy."""
    head = ("| trial | steps | grammar prompts | validation words | **test words** | test: size / color / shape / "
            "position |\n|---|---|---|---|---|---|")
    lines = [f"| {r['trial']} | {r['steps']} | {100 * r['grammar']['attr_all']:.1f}% | "
             f"{100 * r['validation']['attr_all']:.1f}% | **{100 * r['test']['attr_all']:.1f}%** | "
             + " / ".join(f"{100 * r['test'][f'attr_{k}']:.0f}%" for k in ("size", "color", "shape", "position"))
             + " |" for r in rows]
    return "\n".join([head, *lines])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each trial")
    p.add_argument("--n", type=int, default=500, help="combinations (one image per wording each)")
    p.add_argument("--trials", nargs="*", default=list(TRIALS), choices=list(TRIALS))
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--folder", type=Path, default=ROOT / "bench" / "results" / "t2i-words")
    p.add_argument("--name", default="t2i-words", help="results bench/results/<name>-<date>.json")
    args = p.parse_args()
    vocab = vocabulary()
    print("the held-out vocabulary (training captions use only the train side):")
    print(json.dumps(vocab, indent=1), flush=True)
    attrs, prompts = wordings(args.n)
    for w in WORDINGS:
        print(f"  e.g. {w}: {prompts[w][0]!r}")
    rows = []
    for name in args.trials:
        out = args.folder / name.replace(", ", "-").replace(" ", "-")
        summary = run_summary(out) if args.score_only else train_process(out, CONFIG, args.minutes, TRIALS[name])
        row = {"trial": name, "overrides": TRIALS[name], **summary}
        for w in WORDINGS:
            row[w] = score(out, attrs, prompts[w])
        rows.append(row)
        print(table(rows[-1:]), flush=True)
    date = datetime.date.today().isoformat()
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "n": args.n, "minutes": args.minutes, "config": str(CONFIG.relative_to(ROOT)),
           "seeds": {"combinations": BENCH_SEED, "wording": WORDING_SEED},
           "rule": {"margin": RULE_MARGIN, "grammar_at_least": RULE_GRAMMAR}, "vocabulary": vocab,
           "examples": {w: prompts[w][:8] for w in WORDINGS}, "rows": rows}
    out = ROOT / "bench" / "results" / f"{args.name}-{date}.json"
    out.write_text(json.dumps(res, indent=1))
    print(table(rows))
    print(f"results {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
