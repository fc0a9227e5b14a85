"""Text-to-image in words its captions never used (issue 17): the held-out vocabulary, lever by lever.

    python bench/t2i_words.py --minutes 10 --n 500                       # every trial of TRIALS, then scored
    python bench/t2i_words.py --trials grammar paraphrase --score-only   # score trained runs again
    python bench/t2i_words.py --table bench/results/t2i-words-2026-12-03.json   # the table of stored results

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

from difflab.data.shape_words import SLOTS, prompts as worded, vocabulary  # noqa: E402
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
PLACED = "placed"  # --wordings placed: test words the encoder itself places (placed_wording)


def baseline(name: str) -> str | None:
    """The trial a lever is measured against: the one whose overrides are this trial's less its last (the captions
    trials against the shipped ``grammar``); None for the shipped config itself."""
    overrides = TRIALS[name]
    if len(overrides) == 1:
        return None if name == "grammar" else "grammar"
    return next(n for n, o in TRIALS.items() if o == overrides[:-1])


def verdict(row: dict, rows: dict[str, dict]) -> str:
    """RULE applied to one scored trial against its :func:`baseline` (when that was scored in the same run)."""
    base = baseline(row["trial"])
    if base is None or base not in rows:
        return "baseline" if base is None else "-"
    gain = row["validation"]["attr_all"] - rows[base]["validation"]["attr_all"]
    pays = gain > RULE_MARGIN and row["grammar"]["attr_all"] >= RULE_GRAMMAR
    return f"{'pays' if pays else 'no'} ({100 * gain:+.1f} vs {base})"


def wordings(n: int) -> tuple[np.ndarray, dict[str, list[str]]]:
    """``n`` attribute combinations (N, 4) and their prompts in each of WORDINGS (the same combinations)."""
    attrs = random_attributes(n, BENCH_SEED)
    return attrs, {"grammar": [caption(a) for a in attrs], "validation": worded(attrs, "validation", WORDING_SEED),
                   "test": worded(attrs, "test", WORDING_SEED)}


def score(run: Path, attrs: np.ndarray, prompts: list[str], guidance: float | None = None,
          text_max_length: int | None = None) -> dict:
    """Attribute accuracy of one image per prompt (seed BENCH_SEED), the prompts read up to ``text_max_length``
    tokens (None: the run's ``model.text_max_length``)."""
    loaded = sampling_run(run)
    if text_max_length is not None:
        loaded.set_text_max_length(text_max_length)
    t0 = time.perf_counter()
    images = loaded.sample(len(prompts), cond=prompts, guidance=guidance, seed=BENCH_SEED, progress=False).data
    acc = attribute_accuracy(images, attrs)
    return {**{f"attr_{k}": v for k, v in acc.items()}, "sample_seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict]) -> str:
    """Markdown: one line per trial, all-four accuracy per wording scored (a dash where a row lacks one), the test
    words' per-attribute accuracy and RULE's verdict."""
    scored = {r["trial"]: r for r in rows}
    cols = [w for w in (*WORDINGS, PLACED) if any(w in r for r in rows)]
    names = {"grammar": "grammar prompts", "validation": "validation words", "test": "**test words**",
             PLACED: "test words MiniLM places"}

    def cell(r: dict, w: str) -> str:
        text = f"{100 * r[w]['attr_all']:.1f}%" if w in r else "-"
        return f"**{text}**" if w == "test" and w in r else text

    def per_attribute(r: dict) -> str:
        if "test" not in r:
            return "-"
        return " / ".join(f"{100 * r['test'][f'attr_{k}']:.0f}%" for k in SLOTS)

    def rule(r: dict) -> str:
        return verdict(r, scored) if all(w in r for w in ("grammar", "validation")) else "-"

    head = (f"| trial | steps | {' | '.join(names[w] for w in cols)} | test: size / color / shape / position | "
            f"by the rule (validation words) |\n|{'---|' * (len(cols) + 4)}")
    lines = [f"| {r['trial']} | {r['steps']} | {' | '.join(cell(r, w) for w in cols)} | {per_attribute(r)} | "
             f"{rule(r)} |" for r in rows]
    return "\n".join([head, *lines])


def placed_wording(n: int) -> tuple[np.ndarray, list[str], dict[str, list[list[str]]]]:
    """``n`` combinations (N, 4) of the values that have a test phrase frozen MiniLM places nearest its own value
    (the nearest-word probe of bench/t2i_probe.py, on the layer the shipped config reads), their prompts made only
    of those phrases and the test templates, and the phrases (slot -> value -> phrases): how well the conditioning
    generalises where the encoder knows the word."""
    from difflab.config import load_config
    from difflab.models.text_encoders import MiniLMEncoder
    from t2i_probe import nearest_words  # t2i_probe imports this module

    encoder = MiniLMEncoder(max_length=16)
    layer = load_config(CONFIG).model.text_layer
    vector = f"layer {encoder.model.config.num_hidden_layers if layer < 0 else layer}"
    only = {r["slot"]: r["test"]["placed"] for r in nearest_words(encoder, progress=False) if r["vector"] == vector}
    rng = np.random.default_rng(BENCH_SEED)
    attrs = np.stack([rng.choice([i for i, words in enumerate(only[slot]) if words], n) for slot in SLOTS], 1)
    return attrs, worded(attrs, "test", WORDING_SEED, only=only), only


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each trial")
    p.add_argument("--n", type=int, default=500, help="combinations (one image per wording each)")
    p.add_argument("--trials", nargs="*", default=list(TRIALS), choices=list(TRIALS))
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--wordings", nargs="*", default=list(WORDINGS), choices=[*WORDINGS, PLACED],
                   help=f"which prompts to score ({PLACED}: only test words MiniLM places nearest their value)")
    p.add_argument("--folder", type=Path, default=ROOT / "bench" / "results" / "t2i-words")
    p.add_argument("--name", default="t2i-words", help="results bench/results/<name>-<date>.json")
    p.add_argument("--text-max-length", type=int, metavar="L",
                   help="score with prompts read up to L tokens (a frozen MiniLM's runs; default: each run's own)")
    p.add_argument("--table", type=Path, nargs="+", metavar="RESULTS",
                   help="only print the table of stored results files (rows of the same trial merged)")
    args = p.parse_args()
    if args.table:
        merged: dict[str, dict] = {}
        for path in args.table:
            for row in json.loads(path.read_text())["rows"]:
                merged.setdefault(row["trial"], {}).update(row)
        print(table(list(merged.values())))
        return
    vocab = vocabulary()
    print("the held-out vocabulary (training captions use only the train side):")
    print(json.dumps(vocab, indent=1), flush=True)
    attrs, prompts = wordings(args.n)
    sets = {w: (attrs, prompts[w]) for w in WORDINGS if w in args.wordings}
    if PLACED in args.wordings:
        placed_attrs, placed_prompts, vocab["placed_test_words"] = placed_wording(args.n)
        sets[PLACED] = placed_attrs, placed_prompts
    for w, (_, texts) in sets.items():
        print(f"  e.g. {w}: {texts[0]!r}")
    rows = []
    for name in args.trials:
        out = args.folder / name.replace(", ", "-").replace(" ", "-")
        summary = run_summary(out) if args.score_only else train_process(out, CONFIG, args.minutes, TRIALS[name])
        row = {"trial": name, "overrides": TRIALS[name], **summary}
        for w, (a, texts) in sets.items():
            row[w] = score(out, a, texts, text_max_length=args.text_max_length)
        rows.append(row)
        print(table(rows[-1:]), flush=True)
    date = datetime.date.today().isoformat()
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "n": args.n, "minutes": args.minutes, "config": str(CONFIG.relative_to(ROOT)),
           "text_max_length": args.text_max_length,
           "seeds": {"combinations": BENCH_SEED, "wording": WORDING_SEED},
           "rule": {"margin": RULE_MARGIN, "grammar_at_least": RULE_GRAMMAR}, "vocabulary": vocab,
           "examples": {w: texts[:8] for w, (_, texts) in sets.items()}, "rows": rows}
    out = ROOT / "bench" / "results" / f"{args.name}-{date}.json"
    out.write_text(json.dumps(res, indent=1))
    print(table(rows))
    print(f"results {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
