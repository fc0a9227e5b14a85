"""Command line: ``difflab train | distill | sample | upscale | vocode | fid | eval | features | demo | report | clip | variations | data``.

Bad input ends with one line ``error: <problem>: <fix>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from difflab.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message}: see `{self.prog} --help`")


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


def _percentile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be a percentile in [0, 100] (0 = off), got {text}")
    return value


# -- train -------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model into a run folder",
                       description="Train a diffusion model. CONFIG is a YAML file (see configs/); "
                                   "without it the built-in default (class-conditional digits) is used.")
    p.add_argument("config", nargs="?", help="YAML config; optional with --resume (the run's config.yaml is used)")
    p.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    _add_training_flags(p, "train.lr=1e-3 model.base_channels=32")
    p.set_defaults(func=cmd_train)


def _add_training_flags(p: argparse.ArgumentParser, example: str) -> None:
    """--set, --max-steps, --max-minutes, --resume, --no-progress: shared by `train` and `clip train`."""
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"override config values, e.g. --set {example}")
    p.add_argument("--max-steps", type=_non_negative_int, help="stop after this many optimizer steps in total")
    p.add_argument("--max-minutes", type=_positive(float), help="stop the training loop after this many minutes")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_config(args: argparse.Namespace, fresh=None):
    """The run's own config with --resume, else ``fresh(overrides)`` (default: the CONFIG file); then the budget flags."""
    from difflab import io
    from difflab.config import apply_overrides, load_config

    run_config = Path(args.out) / io.CONFIG_FILE
    if args.resume and run_config.is_file():
        cfg = apply_overrides(io.read_run_config(args.out), args.overrides)
    else:
        cfg = fresh(args.overrides) if fresh else load_config(args.config, args.overrides)
    budget = [f"train.max_steps={args.max_steps}"] if args.max_steps is not None else []
    if args.max_minutes is not None:
        budget.append(f"train.max_minutes={args.max_minutes}")
    return apply_overrides(cfg, budget)


def cmd_train(args: argparse.Namespace) -> None:
    from difflab import io
    from difflab.files import check_output
    from difflab.tasks import build_task, stages
    from difflab.train import check_fresh, check_train_config, train

    cfg = _train_config(args)
    check_train_config(cfg.train)
    check_output(args.out, "run folder", folder=True)
    before, cfg = stages(cfg)
    if before:  # before its stages train
        check_fresh(Path(args.out), args.resume)
    with io.provisional_run(Path(args.out)):  # a fresh folder that fails before any checkpoint is removed again
        if before and _is_main_process() and not (Path(args.out) / io.CONFIG_FILE).is_file():
            io.write_config(Path(args.out), cfg)  # so that `--resume` after a kill in a stage knows the run's kind
        for stage in before:  # e.g. latent diffusion's autoencoder: RUN/autoencoder, skipped once finished
            folder = Path(args.out) / stage.name
            if io.is_finished(folder):
                continue
            if _is_main_process():
                print(f"stage {stage.name}: training {folder}")
            train(build_task(stage.config, folder), folder, resume=io.latest_checkpoint(folder) is not None,
                  progress=not args.no_progress)
        ckpt = train(build_task(cfg, args.out), args.out, resume=args.resume, progress=not args.no_progress)
    if _is_main_process():
        print(f"trained {args.out}: checkpoint {ckpt}")


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


# -- distill -----------------------------------------------------------------------------------
def _add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distill a run into a student that samples in a few steps",
                       description="Trajectory distillation (the default, --teacher-solver dpmpp-2m): a student "
                                   "of --steps DDIM steps (initialised from RUN) learns, in one round, RUN's own "
                                   "few-step DPM-Solver++(2M) trajectories from noise on the edm grid. Progressive "
                                   "distillation (Salimans & Ho 2022; --teacher-solver ddim or dpmpp-2s): the first "
                                   "student learns to take in one DDIM step what RUN takes in --teacher-substeps "
                                   "steps; each later round halves the steps until --steps. Round N is a run folder "
                                   "OUT/steps-N that `difflab sample` and `difflab eval` use as it is (DDIM, N "
                                   "steps). Conditional runs are distilled with their sample.guidance built in.")
    p.add_argument("run", help="run folder written by `difflab train` (an image run)")
    p.add_argument("--steps", type=_positive(int), required=True,
                   help="sampling steps of the final student: the first student's halved, e.g. 4")
    p.add_argument("--out", help="folder of the rounds (default RUN/distill)")
    p.add_argument("--teacher-solver",
                   help="solver of RUN as the first teacher: dpmpp-2m (trajectory distillation, one round; "
                        "default), dpmpp-2s (DPM-Solver++(2S)) or ddim (the paper's Algorithm 2)")
    p.add_argument("--teacher-substeps", type=_positive(int),
                   help="RUN's steps per step of the first student (default: dpmpp-2m about 8 teacher steps in "
                        "all, dpmpp-2s 4, ddim 2)")
    p.add_argument("--teacher-steps", type=_positive(int),
                   help="RUN's steps as the first teacher (dpmpp-2m: K * --steps + 1; progressive: a multiple of "
                        "--teacher-substeps, default a first student of 4 steps, or --steps if more)")
    p.add_argument("--minutes", type=_positive(float), default=10.0,
                   help="wall-clock budget of all rounds, half to the first, the rest evenly (default 10)")
    p.add_argument("--round-minutes", type=_positive(float), help="budget of each round instead of --minutes")
    p.add_argument("--max-steps", type=_non_negative_int, help="stop each round after this many optimizer steps")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override the students' config, e.g. --set train.lr=1e-4 distill.guidance=2")
    p.add_argument("--resume", action="store_true", help="continue an interrupted distillation in --out "
                                                         "(finished rounds are skipped)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill)


def cmd_distill(args: argparse.Namespace) -> None:
    from difflab.distill import distill

    student = distill(args.run, args.steps, out=args.out, teacher_steps=args.teacher_steps,
                      teacher_solver=args.teacher_solver, teacher_substeps=args.teacher_substeps, minutes=args.minutes,
                      round_minutes=args.round_minutes, max_steps=args.max_steps, overrides=args.overrides,
                      resume=args.resume, progress=not args.no_progress)
    print(f"distilled {args.run} into {student}: sample it with `difflab sample {student}`")


# -- sample ------------------------------------------------------------------------------------
def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", help="ddpm | ddim | dpmpp-2m | dpmpp-3m | euler | heun (default: the run's sample.sampler)")
    p.add_argument("--steps", type=_positive(int), help="number of sampling steps")
    p.add_argument("--grid", help="step grid: trailing | trailing-fractional | leading | linspace | karras | edm | "
                                  "edm-open | uniform | logsnr (default: the run's sample.grid, else the sampler's own)")
    p.add_argument("--eta", type=float, help="ddim: 0 = deterministic, 1 = DDPM-like noise")
    p.add_argument("--variance", help="ddpm: beta_tilde | beta")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--dynamic-threshold", type=_percentile, metavar="P",
                   help="Imagen's dynamic thresholding of x0_hat at the P-th percentile, e.g. 99.5 (0 = off; "
                        "default: the run's sample.dynamic_threshold)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--batch-size", type=_positive(int), help="samples per sampler batch")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")


def _add_prompt_length_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-max-length", type=_positive(int), metavar="L",
                   help="tokens per prompt the text encoder reads (default: the run's model.text_max_length); "
                        "a frozen MiniLM encoder reads longer prompts than it was trained with, up to 512")


def _add_condition_flags(p: argparse.ArgumentParser) -> None:
    """The condition flags of every kind of run (each kind's ``Run.add_flags``), remembering whose is whose."""
    from difflab.tasks import run_classes

    owners: dict[str, tuple[str, type]] = {}
    added = set()
    for cls in run_classes():
        if cls.add_flags in added:  # a kind that inherits another's flags adds none of its own
            continue
        added.add(cls.add_flags)
        before = len(p._actions)
        cls.add_flags(p)
        for action in p._actions[before:]:
            owners[action.dest] = (action.option_strings[0], cls.add_flags)
    p.set_defaults(condition_flags=owners)


def _check_condition_flags(args: argparse.Namespace, run) -> None:
    """One line when a flag given belongs to another kind of run than ``run``'s."""
    from difflab.tasks.base import a_run

    owners = getattr(args, "condition_flags", {})
    takes = {type(run).add_flags, *(kind.add_flags for kind in type(run).flags_of)}
    own = [flag for flag, add in owners.values() if add in takes]
    for dest, (flag, add) in owners.items():
        if add not in takes and getattr(args, dest, None) not in (None, [], False):
            accepts = f"its condition flags are {', '.join(own)}" if own else "it takes no condition flags"
            raise UserError(f"{args.run} is {a_run(run.task)}, so {flag} cannot be used: {accepts}")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate samples from a trained run",
                       description="Generate samples. For images, --out ending .npz saves images (uint8 N,H,W,C), "
                                   "labels and prompts; .png a grid (one row per class or prompt, the prompt "
                                   "printed under it); anything else a folder with one PNG per image (and "
                                   "metadata.jsonl with the prompts). 2-D runs: .npz points or a .png scatter plot.")
    p.add_argument("run", help="run folder written by `difflab train`")
    p.add_argument("--n", type=_positive(int),
                   help=f"number of samples (default {DEFAULT_SAMPLES}); with --prompt/--prompts, images per prompt "
                        "(default 8)")
    _add_condition_flags(p)
    _add_prompt_length_flag(p)
    p.add_argument("--out", help="output path (default RUN/samples/<sampler>-<steps>.png)")
    _add_sampling_flags(p)
    p.set_defaults(func=cmd_sample)


def _device(name: str | None):
    import torch
    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("CUDA is not available on this machine: pass --device cpu")
        try:
            device = torch.device(name)
            torch.empty(0, device=device)  # a device type this build of PyTorch cannot use fails here
        except RuntimeError:
            raise UserError(f"device {name!r} cannot be used here: pass --device cpu or --device cuda") from None
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DEFAULT_SAMPLES = 64  # difflab sample --n without prompts


def _generate(args: argparse.Namespace, n: int | None, verb: str = "sample", check=None):
    """Load the run of ``args.run`` and sample what the command's flags ask for (``n`` = --n or None);
    ``check(run)`` runs before sampling.

    Returns (run, samples).
    """
    from dataclasses import replace

    from difflab.tasks import sampling_run

    run = sampling_run(args.run, _device(args.device), verb=verb)
    _check_condition_flags(args, run)
    if getattr(args, "text_max_length", None) is not None:  # only `difflab sample` has the flag
        run.set_text_max_length(args.text_max_length)
    if check is not None:
        check(run)
    req = run.request(args, n, DEFAULT_SAMPLES)
    samples = run.sample(req.n, cond=req.cond, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                         seed=args.seed, batch_size=args.batch_size, eta=args.eta, variance=args.variance,
                         grid=args.grid, dynamic_threshold=args.dynamic_threshold, **req.options)
    return run, replace(samples, ncol=req.ncol)


def cmd_sample(args: argparse.Namespace) -> None:
    def output(run) -> Path:
        s = run.config.sample
        return run.check_output(Path(args.out) if args.out else
                                run.default_output(args.sampler or s.sampler, args.steps or s.steps))

    run, samples = _generate(args, args.n, check=output)  # the output is checked before any sampling
    print(f"wrote {run.save(samples, output(run))}")


# -- upscale -----------------------------------------------------------------------------------
def _add_upscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upscale", help="super-resolve an image with a super-resolution or cascade run",
                       description="Upscale IMAGE by the run's factor (data.resolution / super_res.low_resolution, "
                                   "e.g. 4x) with its super-resolution diffusion model. The image is cut into tiles "
                                   "of super_res.low_resolution pixels (the last row and column padded by repeating "
                                   "the edge), each tile is upscaled, and the tiles are stitched; tiles are drawn "
                                   "independently, so seams can show. Writes a PNG (atomically).")
    p.add_argument("run", help="run folder of a super-resolution or cascade run (`difflab train`)")
    p.add_argument("image", help="PNG, JPEG or WebP image to upscale")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--prompt", help="caption of the image (text-conditioned runs; default: none, unconditional)")
    p.add_argument("--aug-level", type=float, metavar="S",
                   help="noise-conditioning augmentation level of the input in [0, 1] (default: the run's "
                        "super_res.aug_level)")
    _add_sampling_flags(p)
    p.set_defaults(func=cmd_upscale)


def cmd_upscale(args: argparse.Namespace) -> None:
    from difflab.tasks.super_resolution import upscale_file

    out = upscale_file(args.run, args.image, args.out, prompt=args.prompt, device=_device(args.device),
                       aug_level=args.aug_level, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                       seed=args.seed, batch_size=args.batch_size, eta=args.eta, variance=args.variance,
                       grid=args.grid, dynamic_threshold=args.dynamic_threshold)
    print(f"wrote {out}")


# -- vocode ------------------------------------------------------------------------------------
def _add_vocode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vocode", help="turn a spectrogram (or a recording's) into a waveform with a vocoder run",
                       description="Vocode INPUT with a vocoder run: an audio file (WAV/FLAC/OGG, any rate: its log-mel "
                                   "is taken with the run's front end) or a log-mel .npy of shape (n_mels, frames). "
                                   "Long inputs are vocoded in overlapping chunks, cross-faded. Writes a 16-bit WAV "
                                   "(atomically).")
    p.add_argument("run", help="run folder of a vocoder run (`difflab train configs/speech_vocoder.yaml`)")
    p.add_argument("input", help="audio file or log-mel .npy")
    p.add_argument("--out", required=True, help="WAV file to write")
    p.add_argument("--refine", type=float, metavar="S",
                   help="start from the Griffin-Lim waveform noised to strength S in (0, 1] instead of noise "
                        "(SDEdit; 0 = from noise; default: the run's vocoder.refine)")
    _add_sampling_flags(p)
    p.set_defaults(func=cmd_vocode)


def cmd_vocode(args: argparse.Namespace) -> None:
    from difflab.tasks.vocoder import vocode_file

    out = vocode_file(args.run, args.input, args.out, device=_device(args.device), sampler=args.sampler,
                      steps=args.steps, seed=args.seed, batch_size=args.batch_size, eta=args.eta,
                      variance=args.variance, grid=args.grid, refine=args.refine)
    print(f"wrote {out}")


# -- fid / features ----------------------------------------------------------------------------
def _add_fid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fid", help="Frechet distance of samples to a dataset",
                       description="FID of a run (samples are generated) or of a .npz of samples, in the "
                                   "feature space of difflab's own per-dataset classifier.")
    p.add_argument("run", metavar="source", help="run folder or .npz written by `difflab sample`")
    p.add_argument("--data", help="reference dataset (default: the run's data.name)")
    p.add_argument("--data-path", help="folder of the reference dataset")
    p.add_argument("--n", type=_positive(int), default=2000, help="samples to generate from a run")
    p.add_argument("--features", help="feature-extractor weights (.safetensors with its .json) instead of the built-in")
    _add_sampling_flags(p)
    p.set_defaults(func=cmd_fid)


def cmd_fid(args: argparse.Namespace) -> None:
    source = Path(args.run)  # a run folder or a .npz
    if source.suffix == ".npz":
        fid, data, n = _npz_fid(source, args)
    else:
        reference = {"data": args.data, "data_path": args.data_path, "features": args.features}
        run, samples = _generate(args, args.n, verb="fid", check=lambda run: run.check_fid(**reference))
        (fid, data), n = run.fid(samples, **reference), len(samples)
    print(f"FID {fid:.3f} ({n} samples vs {data})")


def _npz_fid(source: Path, args: argparse.Namespace) -> tuple[float, str, int]:
    """FID of the ``images`` of a .npz written by ``difflab sample``."""
    from difflab.evaluate.fid import compute_fid
    from difflab.files import read_npz
    from difflab.grids import check_images

    if args.data is None:
        raise UserError("a .npz has no dataset name: pass --data NAME")
    fix = "pass a .npz written by `difflab sample RUN --out FILE.npz`"
    images = check_images(read_npz(source, ["images"], "sample file", fix)["images"], f"{source}'s images", fix)
    fid = compute_fid(images, data=args.data, data_path=args.data_path, resolution=images.shape[1],
                      weights=args.features)
    return fid, args.data, len(images)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="FID, KID, precision, recall, density, coverage (CLIP score) of a run",
                       description="Sample --n images from a run's newest checkpoint and measure FID, KID, "
                                   "precision, recall, density and coverage against the dataset's train images, "
                                   "in the feature space of difflab's per-dataset classifier; text-to-image runs "
                                   "also get the CLIP score of their prompts (difflab's own CLIP) and, on shapes, "
                                   "attribute accuracy; autoencoder runs get PSNR, SSIM and rFID of --n reconstructed "
                                   "test images instead (vae runs both); super-resolution runs also PSNR and SSIM "
                                   "of upscaled test images against the originals, beside bicubic's; prints a table "
                                   "and updates RUN/metrics.json (other keys in it are kept).")
    p.add_argument("run", help="run folder written by `difflab train`")
    p.add_argument("--data", help="reference dataset (default: the run's data.name)")
    p.add_argument("--data-path", help="folder of the reference dataset")
    p.add_argument("--n", type=_positive(int), default=2000, help="samples to generate (compare FID only at equal n)")
    p.add_argument("--features", "--weights", dest="features",
                   help="feature-extractor weights (.safetensors with its .json) instead of the built-in")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--nll", action="store_true",
                   help="also the variational bound (ELBO) in bits/dim on test images, stored under 'nll'")
    p.add_argument("--nll-only", action="store_true", help="only the bound: no sampling, no FID")
    p.add_argument("--clip", metavar="RUN", help="text-to-image runs: the CLIP run behind the CLIP score "
                                                 "(default: the dataset's own, trained once and cached)")
    p.add_argument("--scorer", metavar="RUN", help="text runs: the autoregressive run of the same corpus that scores "
                                                   "the samples (generative perplexity)")
    p.add_argument("--temperature", type=float, metavar="T", help="text runs: sample at this temperature (default 1)")
    p.add_argument("--top-p", type=float, metavar="P", help="text runs: sample from this nucleus (default 1: all)")
    p.add_argument("--remask-noise", type=float, metavar="TAU",
                   help="text runs, --sampler mask-predict: MaskGIT's noise on the re-masking")
    p.add_argument("--nll-n", type=_positive(int), default=500,
                   help="test images (text: held-out windows) for the bound (default 500)")
    p.add_argument("--nll-strata", type=_non_negative_int, default=50,
                   help="strata of the unbiased estimate of the sum over t; 0 = the exact sum (T evaluations/image)")
    _add_sampling_flags(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> None:
    from difflab.evaluate.run_eval import EVAL_FILE, format_table
    from difflab.measure import evaluate_run, evaluate_run_nll
    from difflab.tasks import run_class
    from difflab.tasks.base import a_run

    text_only = {"--scorer": args.scorer, "--temperature": args.temperature, "--top-p": args.top_p,
                 "--remask-noise": args.remask_noise}
    given = [flag for flag, value in text_only.items() if value is not None]
    if given and (cfg := run_class(args.run)[0]).task != "text":
        raise UserError(f"{args.run} is {a_run(cfg.task)}, so {' and '.join(given)} cannot be used: "
                        f"{'they are' if len(given) > 1 else 'it is'} for the samples of text runs")
    if args.nll or args.nll_only:
        b = evaluate_run_nll(args.run, n=args.nll_n, strata=args.nll_strata or None, variance=args.variance,
                             seed=args.seed, device=_device(args.device), progress=not args.no_progress)
        if "bits_per_char" in b:  # a text run
            kind = "exact NLL" if b["exact"] else "NLL bound (ELBO)"
            print(f"{kind} {b['bits_per_char']:.4f} +- {b['bits_per_char_stderr'] or 0:.4f} bits/char "
                  f"({b['bits_per_token']:.4f} bits/token) on {b['n']} windows of {b['data']}")
        else:
            how = "exact sum over t" if b["strata"] is None else f"{b['strata']} strata over t"
            print(f"NLL bound {b['bpd']:.4f} +- {b['bpd_stderr']:.4f} bits/dim on {b['n']} {b['data']} images "
                  f"({how}, variance {b['variance']}; prior {b['prior_bpd']:.4f}, decoder {b['decoder_bpd']:.4f})")
        if args.nll_only:
            print(f"wrote {Path(args.run) / EVAL_FILE}")
            return
    m = evaluate_run(args.run, data=args.data, data_path=args.data_path, n=args.n, seed=args.seed,
                     sampler=args.sampler, steps=args.steps, weights=args.features, device=_device(args.device),
                     batch_size=args.batch_size, progress=not args.no_progress, grid=args.grid, eta=args.eta,
                     variance=args.variance, guidance=args.guidance, dynamic_threshold=args.dynamic_threshold,
                     clip_run=args.clip, scorer=args.scorer, temperature=args.temperature, top_p=args.top_p,
                     remask_noise=args.remask_noise)
    real = f" ({m['real_n']} real images; FID vs {m['fid_real_n']})" if "real_n" in m else ""
    made = ([str(m["sampler"])] if "sampler" in m else []) + ([f"{m['steps']} steps"] if "steps" in m else [])
    made += [f"seed {m['seed']}", f"checkpoint step {m['checkpoint_step']}"]  # what made the outputs
    print(f"{m['n']} {m.get('outputs', 'samples')} ({', '.join(made)}) vs {m['data']}{real}")
    print(format_table(m))
    print(f"wrote {Path(args.run) / EVAL_FILE}")


def _add_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="the feature extractors behind FID")
    fsub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    t = fsub.add_parser("train", help="train (or retrain) the feature extractor of a dataset")
    t.add_argument("--data", required=True, help="dataset name")
    t.add_argument("--data-path", help="dataset folder")
    t.add_argument("--resolution", type=_positive(int), help="image side (default native)")
    t.add_argument("--steps", type=_positive(int), help="training steps (default: sized for the dataset)")
    t.set_defaults(func=cmd_features_train)


def cmd_features_train(args: argparse.Namespace) -> None:
    from difflab.evaluate.features import train_feature_extractor

    kwargs = {"steps": args.steps} if args.steps else {}
    path = train_feature_extractor(args.data, data_path=args.data_path, resolution=args.resolution, **kwargs)
    print(f"wrote {path}")


# -- demo --------------------------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, sample and measure the built-in default",
                       description="Train a text-to-image model on captioned shapes for 6 minutes (or reuse it), "
                                   "write a grid with one row per prompt (printed under it), and print FID, CLIP "
                                   "score and attribute accuracy.")
    p.add_argument("--out", default="runs/demo", help="run folder (reused when it holds a finished run)")
    p.add_argument("--config", default=None, help="YAML config (default: configs/shapes.yaml with a 6-minute budget)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    from difflab.demo import run_demo

    run_demo(Path(args.out), args.config)


# -- report ------------------------------------------------------------------------------------
def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page about a run",
                       description="Write RUN/report.html: config, training curves, sample grids per sampler "
                                   "and step count, the numbers of `difflab eval` and the environment. "
                                   "Every image is embedded, so it opens offline.")
    p.add_argument("run", help="run folder written by `difflab train`")
    p.add_argument("--out", help="HTML file to write (default RUN/report.html)")
    p.add_argument("--samples", type=_positive(int), help="images per grid row, one row per class (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sample grids")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> None:
    from difflab.report import write_report

    options = {"samples": args.samples} if args.samples else {}
    out = write_report(args.run, args.out, seed=args.seed, device=_device(args.device),
                       progress=not args.no_progress, **options)
    print(f"wrote {out}")


# -- clip --------------------------------------------------------------------------------------
def _add_clip(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clip", help="difflab's own CLIP: train it, measure it",
                       description="A small CLIP (image CNN + text transformer, contrastive loss) trained on a "
                                   "captioned dataset; it gives the CLIP score of `difflab eval` and the frozen "
                                   "text encoder model.text_encoder=clip.")
    csub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    t = csub.add_parser("train", help="train a CLIP into a run folder",
                        description="Train a CLIP with the built-in default (spelled out in configs/clip_shapes.yaml).")
    t.add_argument("--data", required=True, help="captioned dataset: shapes, or image-folder with --data-path")
    t.add_argument("--data-path", help="dataset folder (image-folder: images plus metadata.jsonl captions)")
    t.add_argument("--out", help="run folder (default runs/clip-NAME)")
    _add_training_flags(t, "clip.embed_dim=64 train.lr=1e-3")
    t.set_defaults(func=cmd_clip_train)
    e = csub.add_parser("eval", help="retrieval accuracy and CLIP score on held-out images",
                        description="Image -> text retrieval accuracy among the distinct captions and the CLIP score "
                                    "of matched vs mismatched pairs on --n test images; updates RUN/metrics.json "
                                    "(under 'clip').")
    e.add_argument("run", help="run folder written by `difflab clip train`")
    e.add_argument("--n", type=_positive(int), default=1000, help="test images (default 1000)")
    e.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    e.set_defaults(func=cmd_clip_eval)


def cmd_clip_train(args: argparse.Namespace) -> None:
    from difflab.files import check_output
    from difflab.tasks.clip import ClipTask, clip_config
    from difflab.train import check_train_config, train

    args.out = args.out or f"runs/clip-{args.data}"
    cfg = _train_config(args, lambda overrides: clip_config(args.data, data_path=args.data_path, overrides=overrides))
    check_train_config(cfg.train)
    check_output(args.out, "run folder", folder=True)
    ckpt = train(ClipTask(cfg), args.out, resume=args.resume, progress=not args.no_progress)
    if _is_main_process():
        print(f"trained {args.out}: checkpoint {ckpt}; measure it with `difflab clip eval {args.out}`")


def cmd_clip_eval(args: argparse.Namespace) -> None:
    from difflab.evaluate.run_eval import EVAL_FILE
    from difflab.tasks.clip import evaluate_clip_run

    m = evaluate_clip_run(args.run, n=args.n, device=_device(args.device))
    print(f"{m['n']} {m['data']} images, {m['distinct_texts']} distinct captions, checkpoint step "
          f"{m['checkpoint_step']}")
    print(f"retrieval accuracy     {m['retrieval']:.4f} (image -> caption, top-1; chance {m['chance']:.4f})")
    print(f"CLIP score matched     {m['clip_score']:.2f}")
    print(f"CLIP score mismatched  {m['clip_score_mismatched']:.2f} (gap {m['gap']:.2f})")
    print(f"wrote {Path(args.run) / EVAL_FILE}")


# -- variations --------------------------------------------------------------------------------
def _add_variations(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("variations", help="images like a given one, from an unclip run (DALL-E 2)",
                       description="DALL-E 2's variations: encode IMAGE (its centred square) with the CLIP image "
                                   "tower of an unclip run and decode --n images from that one embedding with the "
                                   "run's decoder. --out ending .png writes a grid, .npz the images, anything else "
                                   "a folder of PNGs; it is checked before any sampling.")
    p.add_argument("run", help="run folder of an unclip run (`difflab train configs/shapes64_unclip.yaml`)")
    p.add_argument("image", help="PNG, JPEG or WebP image")
    p.add_argument("--n", type=_positive(int), default=8, help="images to decode (default 8)")
    p.add_argument("--out", help="output path (default RUN/samples/variations-<image name>.png)")
    _add_sampling_flags(p)
    p.set_defaults(func=cmd_variations)


def cmd_variations(args: argparse.Namespace) -> None:
    from difflab.tasks.unclip import write_variations

    out = write_variations(args.run, args.image, n=args.n, out=args.out, device=_device(args.device),
                           sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=args.seed,
                           batch_size=args.batch_size, eta=args.eta, variance=args.variance, grid=args.grid,
                           dynamic_threshold=args.dynamic_threshold)
    print(f"wrote {out}")


# -- data --------------------------------------------------------------------------------------
def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write a generated dataset to disk")
    dsub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    s = dsub.add_parser("shapes", help="captioned shapes as an image folder (PNG files + metadata.jsonl)",
                        description="Render captioned shapes into a new folder that data.name=image-folder reads "
                                    "back with its captions (see README, Captioned shapes).")
    s.add_argument("--out", required=True, help="new folder to write")
    s.add_argument("--n", type=_positive(int), required=True, help="number of images")
    s.add_argument("--resolution", type=_positive(int), default=32, help="image side, at least 16 (default 32)")
    s.add_argument("--seed", type=int, default=0, help="random seed of attributes and rendering")
    s.add_argument("--holdout", nargs="+", default=[], metavar="COMBINATION",
                   help='attribute combinations to leave out, e.g. --holdout "red triangle" "large cyan"')
    s.set_defaults(func=cmd_data_shapes)
    sp = dsub.add_parser("speech", help="the built-in speech corpus (WAV files + metadata.jsonl)",
                         description="Synthesise a speech corpus offline with Piper (the joe voice at several speeds) "
                                     "and eSpeak NG (many voices, pitches and rates): sentences from the World "
                                     "English Bible (and Debian's fortunes where installed) and single words, into a "
                                     "new folder with metadata.jsonl (file_name, text, speaker, split). The test "
                                     "split holds three voices never used in training. data.name=speech with "
                                     "data.path=DIR (or audio-folder) reads it back.")
    sp.add_argument("--out", required=True, help="new folder to write")
    sp.add_argument("--sentences", type=_non_negative_int,
                    help="distinct sentences, each said by two voices (default 160)")
    sp.add_argument("--repeats", type=_non_negative_int, help="times each voice says each word (default 2)")
    sp.add_argument("--words", nargs="+", metavar="WORD", help="the single words (default: zero .. nine)")
    sp.add_argument("--seed", type=int, default=0, help="random seed of the sentences and each utterance's variety")
    sp.set_defaults(func=cmd_data_speech)


def cmd_data_speech(args: argparse.Namespace) -> None:
    from difflab.data.speech import DEFAULT_DIGIT_REPEATS, DEFAULT_SENTENCES, DIGITS, make_speech_corpus

    words = tuple(w.lower() for w in args.words) if args.words else DIGITS
    sentences = DEFAULT_SENTENCES if args.sentences is None else args.sentences
    repeats = DEFAULT_DIGIT_REPEATS if args.repeats is None else args.repeats
    out = make_speech_corpus(args.out, sentences=sentences, digit_repeats=repeats, seed=args.seed, words=words,
                             progress=sys.stderr.isatty())
    print(f"wrote the speech corpus to {out}")


def cmd_data_shapes(args: argparse.Namespace) -> None:
    from difflab.data.shapes import write_shapes_folder

    out = write_shapes_folder(args.out, args.n, resolution=args.resolution, seed=args.seed, holdout=args.holdout)
    print(f"wrote {args.n} images and their captions to {out}")


# -- entry point -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="difflab", description="Train, sample and evaluate diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_train, _add_distill, _add_sample, _add_upscale, _add_vocode, _add_fid, _add_eval, _add_features,
                _add_demo, _add_report, _add_clip, _add_variations, _add_data):
        add(sub)
    return parser


DEBUG_ENV = "DIFFLAB_DEBUG"  # DIFFLAB_DEBUG=1: unexpected errors show their traceback in the terminal too
ERROR_LOG = "error.log"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status: 0, 2 for bad input (one line), 1 for anything else.

    Nothing ends in a traceback: an exception that is not a :class:`UserError` becomes one line naming
    a log file (``RUN/error.log``, else the cache folder's) that holds the full traceback for a bug report.
    """
    import warnings

    warnings.formatwarning = _one_line_warning
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted" + (f": continue with `difflab train --out {args.out} --resume`"
                               if getattr(args, "func", None) is cmd_train else ""), file=sys.stderr)
        return 130
    except Exception as e:  # the last line of defence
        return _unexpected(e, args, argv)
    return 0


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as ``warning: <message>`` on one line (no source line under them)."""
    return f"warning: {message}\n"


def _unexpected(e: Exception, args: argparse.Namespace | None, argv: list[str] | None) -> int:
    """One line for an exception difflab did not foresee; the traceback goes to a log file."""
    import traceback

    from difflab.files import os_error

    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exc()
    if isinstance(e, OSError) and e.errno is not None:  # disk full, permissions: the user's to fix
        message, code = str(os_error(e)), 2
    elif isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        message, code = ("out of memory: use smaller batches (--batch-size N, or --set train.batch_size=N) "
                         "or a smaller model"), 2
    else:
        first = (str(e).splitlines() or [""])[0][:200]
        message, code = f"unexpected {type(e).__name__}{': ' + first if first else ''}", 1
    log = _write_error_log(args, argv)
    where = f"the full traceback is in {log}" if log else "DIFFLAB_DEBUG=1 shows the traceback"
    tail = "" if code == 2 else "; this is a bug in difflab: please report it with that file"
    print(f"error: {message} ({where}{tail})", file=sys.stderr)
    return code


def _write_error_log(args: argparse.Namespace | None, argv: list[str] | None) -> Path | None:
    """Write the current traceback to RUN/error.log (the run folder the command names), else the cache's."""
    import platform
    import traceback

    from difflab.paths import atomic_write_bytes, cache_dir

    text = (f"difflab {' '.join(argv if argv is not None else sys.argv[1:])}\n"
            f"python {platform.python_version()} on {platform.platform()}\n\n{traceback.format_exc()}")
    candidates = [getattr(args, name, None) for name in ("out", "run")]
    folders = [Path(c) for c in candidates if c and Path(c).is_dir()]
    for folder in folders + [None]:
        try:
            return atomic_write_bytes((folder or cache_dir()) / ERROR_LOG, text.encode())
        except Exception:  # noqa: BLE001 - a log that cannot be written must not hide the error
            continue
    return None


if __name__ == "__main__":
    sys.exit(main())
