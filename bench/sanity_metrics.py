"""Where FID, KID, precision, recall, density and coverage sit for a perfect and a useless generator.

    python bench/sanity_metrics.py --data fashion-mnist --n 2000

Three rows, each measured as ``difflab eval`` measures a run's samples (the same extractor; FID
against the Gaussian fit of the reference images, KID and PRDC against ``n`` of them):

    halves   the train split cut into two disjoint random halves A and B: n images of B against
             half A. A generator that draws fresh images from the data distribution scores this.
    noise    n images of uniform noise against the whole train split: far away.
    test     n images of the test split against the whole train split.

Prints a markdown table (the BENCHMARKS.md section "Sanity rows for the evaluation metrics").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from difflab.data import load_dataset  # noqa: E402
from difflab.evaluate.features import extract_features, get_feature_extractor  # noqa: E402
from difflab.evaluate.fid import fit_gaussian  # noqa: E402
from difflab.evaluate.run_eval import evaluate_images, metrics_from_features  # noqa: E402

SPLIT_SEED = 0  # the random cut into halves, and the noise images
COLUMNS = ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage")


def halves_row(data: str, n: int) -> dict:
    """n images of one random half of the train split against the other half."""
    net = get_feature_extractor(data)
    images = np.asarray(load_dataset(data, split="train").images)  # (N, C, H, W)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    half_a, half_b = images[perm[:len(perm) // 2]], images[perm[len(perm) // 2:]]  # random order
    features_a = extract_features(net, half_a)
    real = features_a[:n]  # half A is in random order: its first n are a random subset
    fake = extract_features(net, half_b[:n])
    metrics = metrics_from_features(real, fake, real_stats=fit_gaussian(features_a), progress=True)
    return {"row": f"train half B vs half A ({len(half_a)})", **metrics}


def noise_row(data: str, n: int) -> dict:
    """n uniform-noise images (the dataset's shape) against the train split."""
    shape = np.asarray(load_dataset(data, split="train").images).shape[1:]  # (C, H, W)
    noise = np.random.default_rng(SPLIT_SEED).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return {"row": "uniform noise vs train", **evaluate_images(noise, data=data, num_real=n)}


def held_out_row(data: str, n: int) -> dict:
    """n images of the test split (a fixed random subset) against the train split."""
    test = np.asarray(load_dataset(data, split="test").images)
    idx = np.sort(np.random.default_rng(SPLIT_SEED).choice(len(test), size=min(n, len(test)), replace=False))
    return {"row": "test split vs train", **evaluate_images(test[idx], data=data, num_real=n)}


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| images | FID | KID (std) | precision | recall | density | coverage |", "|---" * 7 + "|"]
    for r in rows:
        std = "no spread" if r["kid_std"] is None else f"{r['kid_std']:.5f}"  # one subset: see evaluate.kid
        lines.append(f"| {r['row']} | {r['fid']:.3f} | {r['kid']:.5f} ({std}) | {r['precision']:.4f} "
                     f"| {r['recall']:.4f} | {r['density']:.4f} | {r['coverage']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist", help="a labelled dataset (default fashion-mnist)")
    parser.add_argument("--n", type=int, default=2000, help="images per set (default 2000)")
    args = parser.parse_args()
    rows = []
    for make in (halves_row, noise_row, held_out_row):
        start = time.perf_counter()
        rows.append(make(args.data, args.n))
        print(f"{rows[-1]['row']}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(f"{args.data}, n = {args.n} images per set")
    print(markdown(rows))


if __name__ == "__main__":
    main()
