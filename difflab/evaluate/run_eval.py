"""The numbers of ``difflab eval``: FID, KID, precision, recall, density and coverage of images (and how
well they follow their prompts), and RUN/metrics.json, where they are kept.

All six numbers are measured in one feature space, that of difflab's per-dataset extractor
(:mod:`difflab.evaluate.features`) or of a user's weights file:

    FID          generated features against the whole train split's Gaussian fit, exactly as
                 ``difflab fid`` computes it (same cache, same value at the same n and seed)
    KID, PRDC    generated features against a fixed random subset (:data:`fid.SUBSET_SEED`) of
                 ``n`` train images (``real_n``; all of them when the split is smaller)

A figure that cannot be computed honestly at the given size says so: ``notes`` maps "fid", "kid"
and "prdc" to a caveat (a singular covariance, no spread over KID subsets, k-NN balls too wide;
see :func:`~difflab.evaluate.fid.fid_note`, :func:`~difflab.evaluate.kid.kid_note`,
:func:`~difflab.evaluate.prdc.prdc_note`), printed beside the figure, and ``kid_std`` / ``kid_se``
are None (null) where the subsets cannot differ. Fewer than :data:`MIN_SAMPLES` images is a UserError.

``RUN/metrics.json`` keeps the newest evaluation. It is updated, not replaced: keys that other
commands wrote there (``nll``) survive, and every write is atomic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from difflab import files, io
from difflab.data import load_dataset
from difflab.errors import UserError
from difflab.evaluate.features import EVAL_BATCH, FeatureNet, extract_features
from difflab.evaluate.fid import (extractor_for, fid_from_features, fid_note, fit_gaussian, fixed_subset,
                                  frechet_distance, real_statistics, to_nchw)
from difflab.evaluate.kid import (DEFAULT_SUBSET_SIZE, DEFAULT_SUBSETS, capped_subset_size, kid_from_features,
                                  kid_note, kid_standard_error)
from difflab.evaluate.prdc import DEFAULT_K, prdc_from_features, prdc_note

EVAL_FILE = "metrics.json"
KID_SEED = 0  # the KID subsets are fixed, so that only the samples change with --seed
MIN_SAMPLES = DEFAULT_K + 1  # precision and recall need more images than the k of their k-NN balls

# (label, key, format) of the printed table
_TABLE = (("FID", "fid", ".3f"), ("KID", "kid", ".5f"), ("precision", "precision", ".4f"),
          ("recall", "recall", ".4f"), ("density", "density", ".4f"), ("coverage", "coverage", ".4f"),
          ("CLIP score", "clip_score", ".2f"), ("CLIP real", "clip_score_real", ".2f"),
          ("CLIP mism.", "clip_score_mismatched", ".2f"), ("retrieval", "clip_retrieval", ".4f"),
          ("attrs all", "attr_all", ".4f"), ("size", "attr_size", ".4f"), ("color", "attr_color", ".4f"),
          ("shape", "attr_shape", ".4f"), ("position", "attr_position", ".4f"),
          ("data NLL", "data_nll", ".4f"), ("entropy H", "entropy", ".4f"),
          ("PSNR (dB)", "psnr", ".2f"), ("SSIM", "ssim", ".4f"), ("rFID", "rfid", ".3f"),
          ("PSNR base", "baseline_psnr", ".2f"), ("SSIM base", "baseline_ssim", ".4f"),  # super-resolution's baseline
          ("z scale", "latent_scale", ".5f"),  # reconstructions (difflab.evaluate.reconstruction)
          ("MR-STFT", "mr_stft", ".4f"), ("log-mel L1", "log_mel_l1", ".4f"),  # vocoded speech (evaluate.audio)
          ("RTF", "real_time_factor", ".3f"), ("MR-STFT b.", "baseline_mr_stft", ".4f"),
          ("mel L1 b.", "baseline_log_mel_l1", ".4f"), ("ASR orig.", "asr_original", ".4f"),
          ("ASR", "asr", ".4f"), ("ASR base", "asr_baseline", ".4f"),
          ("word acc.", "word_accuracy", ".4f"), ("word acc. real", "word_accuracy_real", ".4f"),  # spoken words
          ("diversity", "diversity", ".4f"), ("divers. real", "diversity_real", ".4f"),
          ("judge bpc", "gen_bits_per_char", ".4f"), ("gen. ppl", "gen_perplexity", ".3f"),  # text samples
          ("unigram H", "unigram_entropy", ".4f"), ("distinct-1", "distinct_1", ".4f"),
          ("distinct-2", "distinct_2", ".4f"), ("distinct-3", "distinct_3", ".4f"),
          ("s/sample", "seconds_per_sample", ".4f"))
_NOTE_OF = {"precision": "prdc"}  # the note of a row, where its key is not the row's: PRDC's prints once


def metrics_from_features(real: np.ndarray, fake: np.ndarray, *,
                          real_stats: tuple[np.ndarray, np.ndarray] | None = None, real_stats_n: int | None = None,
                          k: int = DEFAULT_K, kid_subsets: int = DEFAULT_SUBSETS,
                          kid_subset_size: int = DEFAULT_SUBSET_SIZE, progress: bool = False) -> dict[str, Any]:
    """FID, KID (with its std and standard error over subsets), precision, recall, density, coverage.

    Args:
        real, fake: features (N, D) and (M, D) from the same extractor, N and M > k.
        real_stats: (mu, sigma) of the real images for FID; None = the Gaussian fit of ``real``.
        real_stats_n: the images behind ``real_stats``, for FID's note (None = not known: no note
            on the real side).
        k: nearest neighbours of the PRDC balls.
        kid_subsets, kid_subset_size: see :func:`difflab.evaluate.kid.kid_from_features`.
        progress: show tqdm bars.

    Returns:
        {"fid", "kid", "kid_std", "kid_se", "kid_subsets", "kid_subset_size" (features in each subset),
        "precision", "recall", "density", "coverage", "notes"}: "kid_std" and "kid_se" are None where
        the subsets cannot differ; "notes" maps "fid", "kid", "prdc" to the caveats of this size
        (see the module doc), empty when there are none.
    """
    fid = frechet_distance(*real_stats, *fit_gaussian(fake)) if real_stats else fid_from_features(real, fake)
    kid, kid_std = kid_from_features(real, fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=KID_SEED,
                                     progress=progress)
    n_real, n_fake, D = len(real), len(fake), fake.shape[1]
    notes = {"fid": fid_note(n_fake, real_stats_n if real_stats else n_real, D),
             "kid": kid_note(n_real, n_fake, subsets=kid_subsets, subset_size=kid_subset_size),
             "prdc": prdc_note(n_real, n_fake, k)}
    return {"fid": fid, "kid": kid, "kid_std": kid_std, "kid_se": kid_standard_error(kid_std, kid_subsets),
            "kid_subsets": kid_subsets, "kid_subset_size": capped_subset_size(n_real, n_fake, kid_subset_size),
            **prdc_from_features(real, fake, k=k, progress=progress),
            "notes": {key: note for key, note in notes.items() if note}}


def evaluate_images(fake_uint8: torch.Tensor | np.ndarray, *, data: str, data_path: str | None = None,
                    resolution: int | None = None, extractor: FeatureNet | None = None,
                    weights: str | Path | None = None, num_real: int | None = None, split: str = "train",
                    batch_size: int = EVAL_BATCH, progress: bool = True) -> dict[str, Any]:
    """All six metrics of generated (or any) images against a dataset (see the module doc).

    Args:
        fake_uint8: images uint8 (N, C, H, W) or (N, H, W, C), N >= :data:`MIN_SAMPLES`.
        data, data_path, resolution: the reference dataset, as for :func:`difflab.evaluate.fid.compute_fid`.
        extractor, weights: the feature extractor (None for both = the dataset's cached one).
        num_real: real images behind KID and PRDC (None = as many as ``fake_uint8`` has).
        split: the split the real images come from.
        batch_size: images per forward pass of the extractor.
        progress: show progress bars.

    Returns:
        :func:`metrics_from_features`'s keys plus "real_n" (real images behind KID and PRDC)
        and "fid_real_n" (behind FID's statistics).
    """
    fake = to_nchw(fake_uint8)  # (N, C, H, W)
    if len(fake) < MIN_SAMPLES:
        raise UserError(f"evaluation needs at least {MIN_SAMPLES} images (k-NN balls with k={DEFAULT_K}), "
                        f"got {len(fake)}: pass --n {MIN_SAMPLES} or more")
    C = fake.shape[1]
    net = extractor_for(C, data=data, data_path=data_path, resolution=resolution, extractor=extractor,
                        weights=weights)
    ds = load_dataset(data, path=data_path, resolution=resolution, channels=C, split=split)
    real = fixed_subset(np.asarray(ds.images), num_real or len(fake))  # (N_real, C, H, W)
    if len(real) < MIN_SAMPLES:
        raise UserError(f"dataset {data} has only {len(real)} {split} images, fewer than the {MIN_SAMPLES} that "
                        f"k-NN balls with k={DEFAULT_K} need: evaluate against a larger dataset")
    real_stats = real_statistics(net, data, data_path=data_path, resolution=resolution, channels=C, split=split,
                                 batch_size=batch_size, progress=progress)
    real_f = extract_features(net, real, batch_size=batch_size, progress=progress)
    fake_f = extract_features(net, fake, batch_size=batch_size, progress=progress)
    metrics = metrics_from_features(real_f, fake_f, real_stats=real_stats, real_stats_n=len(ds), progress=progress)
    return {**metrics, "real_n": len(real), "fid_real_n": len(ds)}


def text_metrics(images: np.ndarray, prompts: Sequence[str], clip: nn.Module, tokenizer: Any,
                 real_images: torch.Tensor | np.ndarray, real_texts: Sequence[str]) -> dict[str, Any]:
    """How well images follow their prompts, by difflab's own models.

    Args:
        images: uint8 (N, H, W, C) generated for ``prompts`` (N of them).
        clip, tokenizer: a CLIP (:func:`difflab.tasks.clip.load_clip`) of the images' dataset.
        real_images, real_texts: real test pairs of the dataset (N of them, for reference).

    Returns:
        "clip_score" of the images with their prompts, "clip_retrieval" (each image picks its prompt
        among the distinct prompts) with "clip_retrieval_chance" (1 / their number: few prompts make
        retrieval easy), and for reference "clip_score_real" / "clip_score_mismatched":
        real test images with their own / another caption. Where prompts describe shapes (grammar or held-out words)
        also "attr_size", "attr_color", "attr_shape", "attr_position", "attr_all" (difflab's
        attribute classifier, on the prompts that parse).
    """
    from difflab.evaluate.clip_score import clip_eval

    fake = clip_eval(clip, tokenizer, images, list(prompts))
    real = clip_eval(clip, tokenizer, real_images, list(real_texts))
    out = {"clip_score": fake["clip_score"], "clip_retrieval": fake["retrieval"],
           "clip_retrieval_chance": fake["chance"], "clip_score_real": real["clip_score"],
           "clip_score_mismatched": real["clip_score_mismatched"]}
    return out | shapes_accuracy(images, prompts)


def shapes_accuracy(images: np.ndarray, prompts: Sequence[str]) -> dict[str, float]:
    """Attribute accuracy ("attr_*") of images drawn for shapes prompts, in the grammar or in any words and templates
    of the held-out vocabulary (:func:`difflab.data.shape_words.parse_prompt`; other prompts are skipped)."""
    from difflab.data.shape_words import parse_prompt
    from difflab.evaluate.attributes import attribute_accuracy

    parsed = [parse_prompt(p) for p in prompts]
    keep = [i for i, a in enumerate(parsed) if a is not None]
    if not keep:
        return {}
    acc = attribute_accuracy(np.asarray(images)[keep], np.array([parsed[i] for i in keep]))
    return {f"attr_{k}": v for k, v in acc.items()} | {"attr_n": len(keep)}


def read_eval_file(run: str | Path) -> dict[str, Any]:
    """RUN/metrics.json ({} when missing); one line when it cannot be read (called before the work, too)."""
    path = Path(run) / EVAL_FILE
    if not path.exists():
        return {}
    old = files.read_json(path, "evaluation file", "fix or delete it")
    if not isinstance(old, dict):
        raise UserError(f"evaluation file {path} holds a JSON {type(old).__name__}, not an object: fix or delete it")
    return old


def update_eval_file(run: str | Path, values: dict[str, Any]) -> dict[str, Any]:
    """Merge ``values`` into RUN/metrics.json (created when missing), atomically; returns the whole file.

    Keys not in ``values`` are kept, so commands that add their own (``nll``) do not clobber each other.
    """
    path = Path(run) / EVAL_FILE
    merged = {**read_eval_file(run), **values}
    io.write_text_atomic(path, json.dumps(merged, indent=2) + "\n")
    return merged


def format_table(metrics: dict[str, Any]) -> str:
    """The metrics as a small aligned text table, each with its caveat from "notes" (see the module doc)."""
    notes = metrics.get("notes") or {}
    rows = [f"{'metric':<10} value"]
    for label, key, fmt in _TABLE:
        if metrics.get(key) is None:
            continue
        value, extra = f"{metrics[key]:{fmt}}", []
        if key == "kid" and metrics.get("kid_std") is not None:
            value += f" +- {metrics['kid_std']:{fmt}}"
            extra.append(f"std over subsets; standard error {metrics['kid_se']:{fmt}}")
        elif key == "kid" and "kid" not in notes:
            extra.append("no spread over subsets")
        if key == "clip_retrieval" and metrics.get("clip_retrieval_chance") is not None:
            extra.append(f"chance {metrics['clip_retrieval_chance']:{fmt}}")
        if key.startswith("baseline_") and metrics.get("baseline"):
            of = "interpolation" if key.endswith(("psnr", "ssim")) else "on the same spectrograms"
            extra.append(f"{metrics['baseline']} {of}" + (" of the same inputs" if of == "interpolation" else ""))
        if note := notes.get(_NOTE_OF.get(key, key)):
            extra.append(note)
        rows.append(f"{label:<10} {value}" + (f" ({'; '.join(extra)})" if extra else ""))
    return "\n".join(rows)
