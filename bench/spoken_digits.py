"""Spoken digits from nothing: configs/spoken_digits.yaml (diffusion on a word's log-mel) voiced by the vocoder
of bench/vocoder.py, recognised by pocketsphinx restricted to the ten digit words:

    python bench/spoken_digits.py --vocoder bench/results/vocoder        # train (the config's budget), then score
    python bench/spoken_digits.py --score-only --run bench/results/spoken_digits

N generated words (N / 10 of each digit, seeded): the accuracy of the intended digit (chance 0.1) beside the same
recogniser on the real held-out words (voices training never heard), per digit, and the diversity within each
digit (mean pairwise L1 of time-averaged log-mel profiles) beside the real words'. Results
bench/results/NAME-<date>.json, bench/figures/NAME.png (one spectrogram per digit) and bench/figures/NAME-<word>.wav.
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

import torch  # noqa: E402

from difflab import grids  # noqa: E402
from difflab.data.audio import write_wav  # noqa: E402
from difflab.tasks import load_run  # noqa: E402
from framings import train_system  # noqa: E402
from runs import run_summary  # noqa: E402

CONFIG = "configs/spoken_digits.yaml"
SEED = 20261202
WAVS = ("zero", "seven", "nine")  # words written out as WAVs for the README


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="generated words (a multiple of the vocabulary's size)")
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--run", type=Path, default=ROOT / "bench" / "results" / "spoken_digits")
    p.add_argument("--vocoder", type=Path, default=ROOT / "bench" / "results" / "vocoder")
    p.add_argument("--name", default="spoken-digits", help="results NAME-<date>.json and bench/figures/NAME.*")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the config")
    args = p.parse_args()
    if not args.score_only:
        train_system(args.run, CONFIG, [f"words.vocoder={args.vocoder}", *args.set])
    run = load_run(args.run)
    words = run.config.words.vocabulary
    per = max(1, args.n // len(words))
    t0 = time.perf_counter()
    samples = run.sample(per * len(words), cond=[k for k in range(len(words)) for _ in range(per)], seed=SEED)
    seconds = time.perf_counter() - t0
    metrics = run.metrics(samples)
    figures = ROOT / "bench" / "figures"
    firsts = [k * per for k in range(len(words))]
    fig = figures / f"{args.name}.png"
    grids.save_png(fig, grids.spectrograms([samples.conditions["mels"][i] for i in firsts],
                                           [f"{words[k]} (heard: {metrics['heard'][i] or '-'})"
                                            for k, i in enumerate(firsts)]))
    wavs = [str(write_wav(figures / f"{args.name}-{w}.wav", samples.data[firsts[words.index(w)]],
                          run.config.audio.sample_rate).relative_to(ROOT)) for w in WAVS if w in words]
    date = datetime.date.today().isoformat()
    res = {"date": date, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "config": CONFIG, "overrides": args.set,
           "run": str(args.run), "vocoder": run.config.words.vocoder, "training": run_summary(args.run),
           "vocoder_training": run_summary(Path(run.config.words.vocoder)), "n": per * len(words), "seed": SEED,
           "sampler": run.config.sample.sampler, "steps": run.config.sample.steps,
           "guidance": run.config.sample.guidance, "seconds_to_generate_and_voice": round(seconds, 1),
           **metrics, "figure": str(fig.relative_to(ROOT)), "wavs": wavs}
    out_json = ROOT / "bench" / "results" / f"{args.name}-{date}.json"
    out_json.write_text(json.dumps(res, indent=1))
    print(f"digit accuracy {metrics['word_accuracy']:.3f} (real held-out words {metrics['word_accuracy_real']:.3f}, "
          f"chance {metrics['chance']:.2f}); diversity {metrics['diversity']:.3f} (real {metrics['diversity_real']:.3f})")
    print("per digit: " + ", ".join(f"{w} {a:.2f}" for w, a in metrics["per_word"].items()))
    print(f"{per * len(words)} words in {seconds:.0f} s; results {out_json.relative_to(ROOT)}; figure {res['figure']}")


if __name__ == "__main__":
    main()
