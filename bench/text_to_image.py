"""Text-to-image on captioned shapes: does the picture follow the words? Three text encoders, three guidances.

    python bench/text_to_image.py --minutes 10 --n 500                 # the whole table + held-out run
    python bench/text_to_image.py --score RUN --guidance 1 3 7 --n 500  # score one trained run only

For each text encoder (scratch, trained jointly; minilm, frozen pretrained; clip, difflab's own
frozen CLIP text tower) it trains configs/shapes.yaml for the same wall-clock budget, one after
the other, then samples one image for each of ``n`` random grammar prompts (a seed no training
or test split uses) at each guidance scale and measures

* attribute accuracy (size, color, shape, position, all four) with difflab's attribute
  classifier, trained on its own renders (difflab.evaluate.attributes);
* CLIP score with difflab's default shapes CLIP, beside real pairs and mismatched pairs;
* FID@n against the shapes training images.

Held-out combinations: one more run of the default config with ``data.holdout`` = HOLDOUT,
scored on prompts drawn from exactly those combinations, and on the others.
Results go to bench/results/t2i-<date>.json and a markdown table on stdout.
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

from difflab import io  # noqa: E402
from difflab.config import load_config  # noqa: E402
from difflab.data.shapes import all_attributes, caption, matches_holdout, random_attributes  # noqa: E402
from difflab.evaluate.fid import compute_fid  # noqa: E402
from difflab.tasks import sampling_run  # noqa: E402
from difflab.tasks.clip import get_default_clip  # noqa: E402
from runs import train_for  # noqa: E402

BENCH_SEED = 2026  # the prompts' seed: not the dataset's (0 train, 1 test) nor the classifier's (1000 + s, 999)
ENCODERS = ("scratch", "minilm", "clip")
GUIDANCES = (1.0, 3.0, 7.0)
HOLDOUT = ("red triangle", "green cross", "large blue circle", "white square in the center")
CONFIG = ROOT / "configs" / "shapes.yaml"


def grammar_prompts(n: int, seed: int, holdout: tuple[str, ...] = (), held_out: bool = False) -> tuple[list[str], np.ndarray]:
    """``n`` prompts of the shapes grammar and their attributes (N, 4): uniform over all combinations,
    or with ``holdout`` uniform over the held-out combinations (``held_out``) or over the others."""
    if not holdout:
        attrs = random_attributes(n, seed)
    else:
        combos = all_attributes()  # (320, 4)
        pool = combos[matches_holdout(combos, holdout) == held_out]
        attrs = pool[np.random.default_rng(seed).integers(0, len(pool), size=n)]
    return [caption(a) for a in attrs], attrs


def train_run(out: Path, minutes: float, overrides: list[str]) -> dict:
    """Train configs/shapes.yaml with ``overrides`` for ``minutes`` (reused when finished)."""
    return train_for(out, CONFIG, minutes, overrides)


def score(run: Path, prompts: list[str], guidance: float, fid: bool = True) -> dict:
    """Sample one image per prompt at ``guidance`` and measure it."""
    loaded = sampling_run(run)
    cfg = loaded.config
    t0 = time.perf_counter()
    samples = loaded.sample(len(prompts), cond=prompts, guidance=guidance, seed=BENCH_SEED, progress=False)
    images = samples.data  # uint8 (n, H, W, C)
    row = {"guidance": guidance, "sample_seconds": round(time.perf_counter() - t0, 1)}
    row.update({k: v for k, v in loaded.prompt_metrics(samples, progress=False).items() if k != "clip_run"})
    if fid:
        row["fid"] = compute_fid(images, data="shapes", resolution=cfg.data.resolution, progress=False)
    return row


def table(rows: list[dict]) -> str:
    """Markdown table of scored rows."""
    head = ("| encoder | guidance | all four | size | color | shape | position | CLIP score | FID | steps | train s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['encoder']} | {r['guidance']:g} | {100 * r['attr_all']:.1f}% | {100 * r['attr_size']:.1f}% | "
             f"{100 * r['attr_color']:.1f}% | {100 * r['attr_shape']:.1f}% | {100 * r['attr_position']:.1f}% | "
             f"{r['clip_score']:.2f} | {r.get('fid', float('nan')):.2f} | {r.get('steps', '')} | "
             f"{r.get('train_seconds', '')} |" for r in rows]
    return "\n".join([head, *lines])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each run")
    p.add_argument("--n", type=int, default=500, help="prompts (one image each) per row")
    p.add_argument("--encoders", nargs="*", choices=ENCODERS, default=list(ENCODERS),
                   help="encoders of the table (none: only the held-out run)")
    p.add_argument("--guidance", type=float, nargs="+", default=list(GUIDANCES))
    p.add_argument("--score", type=Path, help="only score this trained run")
    p.add_argument("--skip-holdout", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--name", help="results name (default t2i-<date>): <out>/<name>.json and run folders in <out>/<name>/")
    args = p.parse_args()
    date = datetime.date.today().isoformat()
    prompts, _ = grammar_prompts(args.n, BENCH_SEED)
    if args.score:
        rows = [{"encoder": load_config(args.score / io.CONFIG_FILE).model.text_encoder, **score(args.score, prompts, g)}
                for g in args.guidance]
        print(json.dumps(rows, indent=1))
        print(table(rows))
        return
    name = args.name or f"t2i-{date}"
    work = args.out / name
    work.mkdir(parents=True, exist_ok=True)
    clip_run = get_default_clip("shapes", resolution=32, channels=3)  # trained once, outside every timed phase
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "n": args.n, "minutes": args.minutes, "config": str(CONFIG.relative_to(ROOT)),
           "clip_run": str(clip_run), "clip_train_seconds": io.load_state(io.latest_checkpoint(clip_run))["elapsed_s"],
           "rows": []}
    for encoder in args.encoders:
        extra = [f"model.clip_run={clip_run}"] if encoder == "clip" else []
        trained = train_run(work / encoder, args.minutes, [f"model.text_encoder={encoder}", *extra])
        for g in args.guidance:
            res["rows"].append({"encoder": encoder, **trained, **score(work / encoder, prompts, g)})
            print(table(res["rows"][-1:]), flush=True)
    if not args.skip_holdout:
        default = load_config(CONFIG)
        trained = train_run(work / "holdout", args.minutes, [f"data.holdout={json.dumps(list(HOLDOUT))}"])
        res["holdout"] = {"combinations": list(HOLDOUT), "encoder": default.model.text_encoder, **trained}
        for part, held in (("held_out", True), ("seen", False)):
            ps, _ = grammar_prompts(args.n, BENCH_SEED, HOLDOUT, held_out=held)
            res["holdout"][part] = score(work / "holdout", ps, default.sample.guidance, fid=False)
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=1))
    if res["rows"]:
        print(table(res["rows"]))
    if "holdout" in res:
        h = res["holdout"]
        print(f"held-out combinations {h['combinations']}: all four right {100 * h['held_out']['attr_all']:.1f}% "
              f"(seen combinations {100 * h['seen']['attr_all']:.1f}%)")


if __name__ == "__main__":
    main()
