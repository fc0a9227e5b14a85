"""What a frozen text encoder knows of words the captions never used, in a minute: linear probes on its vectors.

    python bench/t2i_probe.py                       # MiniLM: pooled vector and mean token state of every layer
    python bench/t2i_probe.py --words               # each held-out word alone, nearest training word's value

For every attribute a logistic regression is fitted on the encoder's vectors of training captions (the grammar's,
or --captions paraphrase: data.caption_variants rewordings per combination from the train side of
difflab.data.shape_words) and asked for the attribute of prompts in validation and test words (the combinations and
wordings of bench/t2i_words.py). A probe that cannot read "crimson" as red from the vector will not make a UNet
conditioned on that vector draw red: the probe bounds what the conditioning can carry, without training a
diffusion model. Results bench/results/t2i-probe-<date>.json.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflab.data.shape_words import SLOTS, WORDS, paraphrases  # noqa: E402
from difflab.data.shapes import all_attributes  # noqa: E402
from difflab.models.text_encoders import MiniLMEncoder, masked_mean, masked_mean_normalized  # noqa: E402
from t2i_words import wordings  # noqa: E402


def features(encoder: MiniLMEncoder, texts: list[str], layers: list[int]) -> dict[str, np.ndarray]:
    """{"pooled": (N, D), "layer k": (N, D) mean token state of layer k} of ``texts``."""
    out: dict[str, list[np.ndarray]] = {}
    for a in range(0, len(texts), 256):
        batch = encoder.hf_tokenizer(texts[a:a + 256], padding="max_length", truncation=True,
                                     max_length=encoder.max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder.model(**batch, output_hidden_states=True).hidden_states  # layers + 1 of (B, L, D)
        mask = batch["attention_mask"].bool()  # (B, L)
        out.setdefault("pooled", []).append(masked_mean_normalized(hidden[-1], mask).numpy())
        for k in layers:
            out.setdefault(f"layer {k}", []).append(masked_mean(hidden[k], mask).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def nearest_words(encoder: MiniLMEncoder, progress: bool = True) -> list[dict]:
    """Each held-out phrase embedded alone, given the value whose training phrases' mean vector is nearest (cosine):
    what the encoder knows of a word with no sentence around it, per vector (pooled, every layer's mean state).
    Per row (slot, vector) and held-out split: right / of, the misplaced phrases, and ``placed``: per value the
    phrases placed right."""
    layers = list(range(encoder.model.config.num_hidden_layers + 1))
    rows = []
    for slot in SLOTS:
        values = WORDS[slot]
        train = [features(encoder, list(v["train"]), layers) for v in values]
        held = {split: [features(encoder, list(v[split]), layers) for v in values] for split in ("validation", "test")}
        for name in train[0]:
            prototypes = np.stack([t[name].mean(0) for t in train])  # (values, D)
            prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
            row: dict = {"slot": slot, "vector": name}
            for split, per_value in held.items():
                wrong, placed = [], []
                for i, f in enumerate(per_value):
                    placed.append([])
                    for word, j in zip(values[i][split], (f[name] @ prototypes.T).argmax(1), strict=True):
                        if j != i:
                            wrong.append(f"{word} -> {values[j]['train'][0]}")
                        else:
                            placed[i].append(word)
                n = sum(len(v[split]) for v in values)
                row[split] = {"right": n - len(wrong), "of": n, "wrong": wrong, "placed": placed}
            rows.append(row)
            if progress:
                print(f"{slot:8s} {name:8s} " + "  ".join(f"{s} {row[s]['right']}/{row[s]['of']}" for s in held)
                      + f"  test wrong: {', '.join(row['test']['wrong'])}", flush=True)
    return rows


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--captions", choices=("grammar", "paraphrase"), default="paraphrase")
    p.add_argument("--variants", type=int, default=16)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--words", action="store_true", help="only the nearest-word probe of each held-out word alone")
    args = p.parse_args()
    date = datetime.date.today().isoformat()
    machine = f"{platform.node()} {platform.machine()} {os.cpu_count()} cores"
    if args.words:
        rows = nearest_words(MiniLMEncoder(max_length=16))
        out = ROOT / "bench" / "results" / f"t2i-probe-words-{date}.json"
        out.write_text(json.dumps({"date": date, "machine": machine, "probe": "nearest training value, word alone",
                                   "rows": rows}, indent=1))
        print(f"results {out.relative_to(ROOT)}")
        return
    combos = all_attributes()  # (320, 4)
    table = paraphrases(args.variants if args.captions == "paraphrase" else 1)
    train_texts = [c for row in table for c in row]
    train_attrs = np.repeat(combos, len(table[0]), axis=0)  # (320 K, 4)
    attrs, prompts = wordings(args.n)
    encoder = MiniLMEncoder(max_length=16)
    layers = list(range(encoder.model.config.num_hidden_layers + 1))
    train = features(encoder, train_texts, layers)
    held = {w: features(encoder, prompts[w], layers) for w in ("grammar", "validation", "test")}
    rows = []
    for name in train:
        row: dict = {"vector": name}
        for w, f in held.items():
            right = np.stack([LogisticRegression(max_iter=2000, C=1.0).fit(train[name], train_attrs[:, k])
                              .predict(f[name]) == attrs[:, k] for k in range(len(SLOTS))], 1)  # (n, 4)
            row[w] = {**{s: float(right[:, k].mean()) for k, s in enumerate(SLOTS)}, "all": float(right.all(1).mean())}
        rows.append(row)
        print(f"{name:8s} " + "  ".join(f"{w} {100 * row[w]['all']:5.1f}% (" + "/".join(
            f"{100 * row[w][s]:.0f}" for s in SLOTS) + ")" for w in held), flush=True)
    out = ROOT / "bench" / "results" / f"t2i-probe-{args.captions}-{date}.json"
    out.write_text(json.dumps({"date": date, "machine": machine, "captions": args.captions, "variants": args.variants, "n": args.n,
                               "rows": rows}, indent=1))
    print(f"results {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
