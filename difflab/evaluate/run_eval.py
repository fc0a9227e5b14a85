"""``difflab eval``: FID, KID, precision, recall, density and coverage of a run, into RUN/metrics.json.

All six numbers are measured in one feature space, that of difflab's per-dataset extractor
(:mod:`difflab.evaluate.features`) or of a user's weights file:

    FID          generated features against the whole train split's Gaussian fit, exactly as
                 ``difflab fid`` computes it (same cache, same value at the same n and seed)
    KID, PRDC    generated features against a fixed random subset (:data:`fid.SUBSET_SEED`) of
                 ``n`` train images (``real_n``; all of them when the split is smaller)

``RUN/metrics.json`` keeps the newest evaluation. It is updated, not replaced: keys that other
commands wrote there (``nll``) survive, and every write is atomic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab import io
from difflab.config import Config
from difflab.data import load_dataset
from difflab.errors import UserError
from difflab.evaluate.features import EVAL_BATCH, FeatureNet, extract_features
from difflab.evaluate.fid import (extractor_for, fid_from_features, fit_gaussian, fixed_subset, frechet_distance,
                                  real_statistics, to_nchw)
from difflab.evaluate.kid import DEFAULT_SUBSET_SIZE, DEFAULT_SUBSETS, kid_from_features, kid_standard_error
from difflab.evaluate.prdc import DEFAULT_K, prdc_from_features
from difflab.tasks.image import generate, image_channels, load_image_model
from difflab.tasks.text_to_image import default_prompts, is_text_to_image

EVAL_FILE = "metrics.json"
KID_SEED = 0  # the KID subsets are fixed, so that only the samples change with --seed
MIN_SAMPLES = DEFAULT_K + 1  # precision and recall need more images than the k of their k-NN balls

# (label, key, format) of the printed table
_TABLE = (("FID", "fid", ".3f"), ("KID", "kid", ".5f"), ("precision", "precision", ".4f"),
          ("recall", "recall", ".4f"), ("density", "density", ".4f"), ("coverage", "coverage", ".4f"),
          ("CLIP score", "clip_score", ".2f"), ("CLIP real", "clip_score_real", ".2f"),
          ("CLIP mism.", "clip_score_mismatched", ".2f"), ("retrieval", "clip_retrieval", ".4f"),
          ("attrs all", "attr_all", ".4f"), ("size", "attr_size", ".4f"), ("color", "attr_color", ".4f"),
          ("shape", "attr_shape", ".4f"), ("position", "attr_position", ".4f"))


def metrics_from_features(real: np.ndarray, fake: np.ndarray, *,
                          real_stats: tuple[np.ndarray, np.ndarray] | None = None, k: int = DEFAULT_K,
                          kid_subsets: int = DEFAULT_SUBSETS, kid_subset_size: int = DEFAULT_SUBSET_SIZE,
                          progress: bool = False) -> dict[str, float]:
    """FID, KID (with its std and standard error over subsets), precision, recall, density, coverage.

    Args:
        real, fake: features (N, D) and (M, D) from the same extractor.
        real_stats: (mu, sigma) of the real images for FID; None = the Gaussian fit of ``real``.
        k: nearest neighbours of the PRDC balls.
        kid_subsets, kid_subset_size: see :func:`difflab.evaluate.kid.kid_from_features`.
        progress: show tqdm bars.

    Returns:
        {"fid", "kid", "kid_std", "kid_se", "precision", "recall", "density", "coverage"}.
    """
    fid = frechet_distance(*real_stats, *fit_gaussian(fake)) if real_stats else fid_from_features(real, fake)
    kid, kid_std = kid_from_features(real, fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=KID_SEED,
                                     progress=progress)
    return {"fid": fid, "kid": kid, "kid_std": kid_std, "kid_se": kid_standard_error(kid_std, kid_subsets),
            **prdc_from_features(real, fake, k=k, progress=progress)}


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
    real_stats = real_statistics(net, data, data_path=data_path, resolution=resolution, channels=C, split=split,
                                 batch_size=batch_size, progress=progress)
    ds = load_dataset(data, path=data_path, resolution=resolution, channels=C, split=split)
    real = fixed_subset(np.asarray(ds.images), num_real or len(fake))  # (N_real, C, H, W)
    if len(real) < MIN_SAMPLES:
        raise UserError(f"dataset {data} has only {len(real)} {split} images, fewer than the {MIN_SAMPLES} that "
                        f"k-NN balls with k={DEFAULT_K} need: evaluate against a larger dataset")
    real_f = extract_features(net, real, batch_size=batch_size, progress=progress)
    fake_f = extract_features(net, fake, batch_size=batch_size, progress=progress)
    metrics = metrics_from_features(real_f, fake_f, real_stats=real_stats, progress=progress)
    return {**metrics, "real_n": len(real), "fid_real_n": len(ds)}


def text_metrics(cfg: Config, images: np.ndarray, prompts: Sequence[str], *, clip_run: str | Path | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """How well images follow their prompts, by difflab's own models.

    Args:
        cfg: the (text-to-image) run's config: its dataset gives the CLIP and the real pairs.
        images: uint8 (N, H, W, C) generated for ``prompts`` (N of them).
        clip_run: a run of ``difflab clip train``; None = the dataset's default CLIP (trained once, cached).

    Returns:
        "clip_score" of the images with their prompts, "clip_retrieval" (each image picks its prompt
        among the distinct prompts), and for reference "clip_score_real" / "clip_score_mismatched":
        real test images with their own / another caption. On shapes also "attr_size", "attr_color",
        "attr_shape", "attr_position", "attr_all" (difflab's attribute classifier, prompts that parse).
    """
    from difflab.evaluate.clip_score import clip_eval, get_default_clip
    from difflab.models.clip import load_clip
    from difflab.tasks.clip import captioned_pairs

    d = cfg.data
    run = clip_run or get_default_clip(d.name, data_path=d.path, resolution=d.resolution, channels=d.channels,
                                       progress=progress)
    _, clip, tokenizer = load_clip(run)
    fake = clip_eval(clip, tokenizer, images, list(prompts))
    real_images, real_texts, _ = captioned_pairs(replace(cfg, data=replace(d, holdout=())), split="test")
    pick = fixed_subset(np.arange(len(real_texts)), len(prompts))
    real = clip_eval(clip, tokenizer, real_images[pick], [real_texts[i] for i in pick])
    out = {"clip_score": fake["clip_score"], "clip_retrieval": fake["retrieval"], "clip_score_real": real["clip_score"],
           "clip_score_mismatched": real["clip_score_mismatched"], "clip_run": str(run)}
    if d.name == "shapes":
        out.update(shapes_accuracy(images, prompts))
    return out


def shapes_accuracy(images: np.ndarray, prompts: Sequence[str]) -> dict[str, float]:
    """Attribute accuracy ("attr_*") of images drawn for shapes-grammar prompts (others are skipped)."""
    from difflab.data.shapes import parse_caption
    from difflab.evaluate.attributes import attribute_accuracy

    parsed = [parse_caption(p) for p in prompts]
    keep = [i for i, a in enumerate(parsed) if a is not None]
    if not keep:
        return {}
    acc = attribute_accuracy(np.asarray(images)[keep], np.array([parsed[i] for i in keep]))
    return {f"attr_{k}": v for k, v in acc.items()} | {"attr_n": len(keep)}


def update_eval_file(run: str | Path, values: dict[str, Any]) -> dict[str, Any]:
    """Merge ``values`` into RUN/metrics.json (created when missing), atomically; returns the whole file.

    Keys not in ``values`` are kept, so commands that add their own (``nll``) do not clobber each other.
    """
    path = Path(run) / EVAL_FILE
    old: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}): fix or delete it") from e
        if not isinstance(old, dict):
            raise UserError(f"{path} holds a JSON {type(old).__name__}, not an object: fix or delete it")
    merged = {**old, **values}
    io.write_text_atomic(path, json.dumps(merged, indent=2) + "\n")
    return merged


def evaluate_run(run: str | Path, *, data: str | None = None, data_path: str | None = None, n: int = 2000,
                 seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 weights: str | Path | None = None, device: torch.device | str = "cpu",
                 batch_size: int | None = None, write: bool = True, progress: bool = True,
                 clip_run: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Sample ``n`` images from a run's newest checkpoint (EMA) and measure them against a dataset.

    Args:
        run: a run folder written by ``difflab train``.
        data: the reference dataset (None = the run's ``data.name``); ``data_path`` its folder
            (None = the run's ``data.path`` when ``data`` is the run's dataset).
        n: images to generate (at least :data:`MIN_SAMPLES`; compare FID only at equal n).
        seed: the sampling seed.
        sampler, steps: None = the run's ``sample.sampler`` / ``sample.steps``.
        weights: a feature-extractor ``.safetensors`` file instead of the dataset's cached one.
        device: where to sample.
        batch_size: images per sampler batch (None = the run's ``sample.batch_size``).
        write: merge the result into RUN/metrics.json (see :func:`update_eval_file`).
        clip_run: text-to-image runs: the CLIP of the CLIP score (None = the dataset's default);
            their prompts are drawn from the dataset's test captions with ``seed``, and the result
            gains :func:`text_metrics`.
        progress: show progress bars.
        options: further sampler options (eta, variance, grid, guidance); None values are ignored.

    Returns:
        {"checkpoint_step", "data", "n", "seed", "sampler", "steps", "fid", "kid", "kid_std", "kid_se",
        "precision", "recall", "density", "coverage", "real_n", "fid_real_n", "seconds"}, plus
        "sampler_options" when options were given.
    """
    if n < MIN_SAMPLES:
        raise UserError(f"evaluation needs at least {MIN_SAMPLES} samples (k-NN balls with k={DEFAULT_K}), "
                        f"got {n}: pass --n {MIN_SAMPLES} or more")
    cfg = io.read_run_config(run)
    step = int(io.require_checkpoint(run).name.removeprefix(io.CHECKPOINT_PREFIX))
    data = data or cfg.data.name
    data_path = data_path or (cfg.data.path if data == cfg.data.name else None)
    resolution = cfg.data.resolution
    _, model = load_image_model(run, device)
    C = image_channels(cfg)
    load_dataset(data, path=data_path, resolution=resolution, channels=C)  # bad data fails here, before sampling
    net = extractor_for(C, data=data, data_path=data_path, resolution=resolution, weights=weights)
    options = {k: v for k, v in options.items() if v is not None}
    start = time.perf_counter()
    prompts = default_prompts(cfg, n, seed) if is_text_to_image(cfg) else None
    images, _ = generate(cfg, model, n, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size,
                         prompts=prompts, progress=progress, **options)
    metrics = evaluate_images(images, data=data, data_path=data_path, resolution=resolution, extractor=net,
                              progress=progress)
    if prompts is not None:
        metrics.update(text_metrics(cfg, images, prompts, clip_run=clip_run, progress=progress))
    result = {"checkpoint_step": step, "data": data, "n": n, "seed": seed, "sampler": sampler or cfg.sample.sampler,
              "steps": steps or cfg.sample.steps, **metrics, "seconds": time.perf_counter() - start}
    if options:
        result["sampler_options"] = options
    if write:
        update_eval_file(run, result)
    return result


def format_table(metrics: dict[str, Any]) -> str:
    """The metrics as a small aligned text table."""
    rows = [f"{'metric':<10} value"]
    for label, key, fmt in _TABLE:
        if key not in metrics:
            continue
        value = f"{metrics[key]:{fmt}}"
        if key == "kid" and metrics["kid_std"] == 0:
            value += " (every subset holds all the features: no spread to report)"
        elif key == "kid":
            value += f" +- {metrics['kid_std']:{fmt}} (std over subsets; standard error {metrics['kid_se']:{fmt}})"
        rows.append(f"{label:<10} {value}")
    return "\n".join(rows)


NLL_IMAGES = 500  # test images for the bound: its standard error is reported beside it
NLL_STRATA = 50  # stratified estimate of the sum over t (difflab.evaluate.likelihood.image_nll)


def evaluate_run_nll(run: str | Path, *, n: int = NLL_IMAGES, strata: int | None = NLL_STRATA,
                     variance: str | None = None, seed: int = 0, device: torch.device | str = "cpu",
                     checkpoint: str | Path | None = None, write: bool = True,
                     progress: bool = True) -> dict[str, Any]:
    """The variational bound of a run's newest checkpoint (EMA) on its dataset's test split, in bits/dim.

    Args:
        run: a run folder written by ``difflab train``.
        n: test images (a fixed random subset, the same for every run of this dataset).
        strata: k = the stratified estimate of the sum over t; None = the exact sum (T network
            evaluations per image).
        variance: the reverse-process variance, ``beta_tilde`` | ``beta``; None = the run's.
        seed: seeds the noise and the strata draws.
        checkpoint: a checkpoint folder of the run (None = the newest).
        write: merge the result into RUN/metrics.json under ``nll``.

    Returns:
        :func:`difflab.evaluate.likelihood.image_nll`'s dict plus ``checkpoint_step`` and ``data``.
    """
    from difflab.evaluate.likelihood import image_nll

    if n < 2:
        raise UserError(f"the bound needs at least 2 test images (for its standard error), got {n}: "
                        "pass --nll-n 2 or more")
    cfg = io.read_run_config(run)
    ckpt = Path(checkpoint) if checkpoint is not None else io.require_checkpoint(run)
    step = int(ckpt.name.removeprefix(io.CHECKPOINT_PREFIX))
    d = cfg.data
    test = load_dataset(d.name, path=d.path, resolution=d.resolution, channels=d.channels, split="test",
                        size=d.size, holdout=d.holdout)
    _, model = load_image_model(run, device, checkpoint=ckpt)
    images = fixed_subset(test.images, n)  # uint8 (n, C, H, W)
    result = {"checkpoint_step": step, "data": f"{d.name} (test split)",
              **image_nll(cfg, model, images, variance=variance, strata=strata, seed=seed, progress=progress)}
    if write:
        update_eval_file(run, {"nll": result})
    return result
