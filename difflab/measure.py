"""``difflab eval`` of a run folder, through the :class:`~difflab.tasks.base.Run` contract alone: its kind's
``Run.evaluate`` measures ``n`` outputs of its newest (EMA) checkpoint (by default ``n`` samples measured with
the run's own metrics: images FID, KID, precision, recall, density, coverage; text-to-image + CLIP score and
attribute accuracy; an autoencoder's reconstructions PSNR, SSIM, rFID), and the result is merged into
RUN/metrics.json (:func:`difflab.evaluate.run_eval.update_eval_file`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from difflab.errors import UserError
from difflab.evaluate.prdc import DEFAULT_K
from difflab.evaluate.run_eval import MIN_SAMPLES, read_eval_file, update_eval_file
from difflab.tasks import evaluation_run, load_run

NLL_IMAGES = 500  # test images for the bound: its standard error is reported beside it
NLL_STRATA = 50  # stratified estimate of the sum over t (difflab.evaluate.likelihood.image_nll)


def evaluate_run(run: str | Path, *, data: str | None = None, data_path: str | None = None, n: int = 2000,
                 seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 weights: str | Path | None = None, device: torch.device | str = "cpu",
                 batch_size: int | None = None, write: bool = True, progress: bool = True,
                 clip_run: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Measure a run's newest checkpoint (EMA) on ``n`` outputs, by its kind's ``Run.evaluate``: ``n`` samples
    measured by its metrics, or (an autoencoder) ``n`` reconstructions of test images.

    Args:
        run: a run folder written by ``difflab train``.
        data: the reference dataset (None = the run's ``data.name``); ``data_path`` its folder
            (None = the run's ``data.path`` when ``data`` is the run's dataset).
        n: samples to generate (at least :data:`MIN_SAMPLES`; compare FID only at equal n).
        seed: the sampling seed (it also draws the prompts of a text-to-image run from its test captions).
        sampler, steps: None = the run's ``sample.sampler`` / ``sample.steps``.
        weights: a feature-extractor ``.safetensors`` file instead of the dataset's cached one.
        device: where to sample.
        batch_size: samples per sampler batch (None = the run's ``sample.batch_size``).
        write: merge the result into RUN/metrics.json (see :func:`update_eval_file`).
        clip_run: text-to-image runs: the CLIP of the CLIP score (None = the dataset's default).
        progress: show progress bars.
        options: further sampler options (eta, variance, grid, guidance); None values are ignored.

    Returns:
        {"checkpoint_step", "data", "n", "seed", "outputs" (what was measured: "samples", "reconstructions"),
        what made them ("sampler", "steps"), the run's metrics, "seconds"}, plus "sampler_options" when
        options were given.
    """
    if n < MIN_SAMPLES:
        raise UserError(f"evaluation needs at least {MIN_SAMPLES} samples (k-NN balls with k={DEFAULT_K}), "
                        f"got {n}: pass --n {MIN_SAMPLES} or more")
    loaded = evaluation_run(run, device)
    if write:
        read_eval_file(run)  # a metrics.json that could not be updated fails before the work
    options = {k: v for k, v in options.items() if v is not None}
    start = time.perf_counter()
    metrics = loaded.evaluate(n, seed=seed, sampler=sampler, steps=steps, batch_size=batch_size, data=data,
                              data_path=data_path, features=weights, clip_run=clip_run, progress=progress,
                              **options)  # bad data fails before its sampling (Run.evaluate)
    result = {"checkpoint_step": loaded.checkpoint_step, "data": metrics.pop("data"), "n": n, "seed": seed,
              **metrics, "seconds": time.perf_counter() - start}
    if options:
        result["sampler_options"] = options
    if write:
        update_eval_file(run, result)
    return result


def evaluate_run_nll(run: str | Path, *, n: int = NLL_IMAGES, strata: int | None = NLL_STRATA,
                     variance: str | None = None, seed: int = 0, device: torch.device | str = "cpu",
                     checkpoint: str | Path | None = None, write: bool = True,
                     progress: bool = True) -> dict[str, Any]:
    """The variational bound of a run's newest checkpoint (EMA) on its dataset's test split, in bits/dim.

    Args:
        run: a run folder written by ``difflab train`` (a kind whose Run has ``nll``: images).
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
    if n < 2:
        raise UserError(f"the bound needs at least 2 test images (for its standard error), got {n}: "
                        "pass --nll-n 2 or more")
    loaded = load_run(run, device, checkpoint=checkpoint)
    if write:
        read_eval_file(run)  # a metrics.json that could not be updated fails before the work
    result = {"checkpoint_step": loaded.checkpoint_step,
              **loaded.nll(n, variance=variance, strata=strata, seed=seed, progress=progress)}
    if write:
        update_eval_file(run, {"nll": result})
    return result


__all__ = ["NLL_IMAGES", "NLL_STRATA", "evaluate_run", "evaluate_run_nll"]
