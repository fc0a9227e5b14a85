"""The kinds of run, by name: the one place that maps ``task`` to the code that trains and loads it.

Every kind is a module here defining ``TASK`` (its :class:`~difflab.tasks.base.Task`, what the training
loop trains) and ``RUN`` (its :class:`~difflab.tasks.base.Run`, a trained run folder loaded for
sampling, metrics and reports). A new kind is a new module and one line in :data:`TASKS`. A kind built
from several trained networks (latent diffusion's autoencoder, a cascade's base model) also defines
``stages(cfg)``: the runs ``difflab train`` trains first, into ``RUN/<stage name>`` (:func:`stages`).

Configs and run folders written before ``task`` named the kind say ``task: diffusion`` (or nothing):
:func:`task_name` maps them once, here, to the kind the code then inferred from ``data.name`` and
``model.text_encoder``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import torch

from difflab import io
from difflab.config import Config
from difflab.data.mixture import MIXTURES
from difflab.errors import UserError
from difflab.tasks.base import GaussianRun, GaussianTask, Run, Task, a_run
from difflab.tasks.gaussian import GaussianRunBase

TASKS: dict[str, str] = {  # name -> module defining TASK and RUN
    "image": "difflab.tasks.image",
    "text-to-image": "difflab.tasks.text_to_image",
    "toy2d": "difflab.tasks.toy2d",
    "clip": "difflab.tasks.clip",
    "prior": "difflab.tasks.prior",
    "unclip": "difflab.tasks.unclip",
    "super-resolution": "difflab.tasks.super_resolution",
    "cascade": "difflab.tasks.cascade",
    "autoencoder": "difflab.tasks.autoencoder",
    "vae": "difflab.tasks.vae",
    "latent-text-to-image": "difflab.tasks.latent_text_to_image",
    "vocoder": "difflab.tasks.vocoder",
    "spoken-words": "difflab.tasks.spoken_words",
    "text": "difflab.tasks.text",
}
LEGACY_TASK = "diffusion"  # what every Gaussian run's config said before kinds had names
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")


def task_name(cfg: Config) -> str:
    """The registry name of a config's kind; a missing or legacy ``task`` is mapped here, once."""
    if cfg.task is None or cfg.task == LEGACY_TASK:
        if cfg.data.name in MIXTURES:
            return "toy2d"
        return "text-to-image" if cfg.model.text_encoder != "none" else "image"
    if cfg.task not in TASKS:
        raise UserError(f"unknown task {cfg.task!r}: set task to one of {', '.join(TASKS)}")
    return cfg.task


def resolve(cfg: Config) -> Config:
    """``cfg`` with its ``task`` named explicitly (:func:`task_name`)."""
    return replace(cfg, task=task_name(cfg))


def _module(name: str) -> ModuleType:
    return importlib.import_module(TASKS[name])


def build_task(cfg: Config, run: str | Path | None = None) -> Task:
    """The training task of a config (its ``task``, resolved by :func:`task_name`).

    Args:
        cfg: the config.
        run: the folder it will train into (None: not known). A kind whose config names other runs relative to
            that folder (its stages, ``RUN/<name>``, read while training: :func:`stage_folder`) defines
            ``task_for_run(cfg, run) -> Task`` in its module, used instead of ``TASK(cfg)``; others ignore ``run``.
    """
    from difflab.samplers import check_sample_config

    cfg = resolve(cfg)
    module = _module(cfg.task)
    for_run = getattr(module, "task_for_run", None)
    task = for_run(cfg, None if run is None else Path(run)) if for_run is not None else module.TASK(cfg)
    if isinstance(task, GaussianTask):  # its sampling defaults fail now, not after training
        check_sample_config(task.config.sample, task.schedule)
    return task


@dataclass(frozen=True)
class Stage:
    """A run a kind trains before its own, inside its folder: ``RUN/<name>`` with its own config (e.g. latent
    diffusion's autoencoder, a cascade's base model)."""

    name: str
    config: Config


def stages(cfg: Config) -> tuple[list[Stage], Config]:
    """The stages of a config's kind, in training order, and the main run's config (which refers to them by
    ``RUN/<name>``). A kind's module that trains stages defines ``stages(cfg) -> (list[Stage], cfg)``; others
    have none.
    """
    cfg = resolve(cfg)
    own = getattr(_module(cfg.task), "stages", None)
    return own(cfg) if own is not None else ([], cfg)


def is_stage_name(ref: str) -> bool:
    """Whether a config's reference to a run is a stage's bare name (trained into RUN/<name>) rather than the path
    of a trained run."""
    path = Path(ref)
    return not path.is_absolute() and len(path.parts) == 1 and ref not in (".", "..")


def stage_folder(run: str | Path, ref: str | Path) -> Path:
    """A stage (or other run) a config names: a path relative to the run folder ``run`` (a stage, ``RUN/<name>``;
    ``..`` steps out of ``run`` even before it exists, e.g. ``../clip`` of a stage names a stage beside it),
    else as given (absolute, or relative to the working directory)."""
    ref = Path(ref)
    inside = Path(os.path.normpath(Path(run) / ref))
    return inside if not ref.is_absolute() and inside.is_dir() else ref


def run_classes() -> list[type]:
    """The ``Run`` class of every registered kind, in registry order."""
    return [_module(name).RUN for name in TASKS]


def run_class(folder: str | Path) -> tuple[Config, type]:
    """The resolved config of a run folder and its kind's ``Run`` class, before anything is loaded.

    Raises:
        UserError: not a run folder (a weights file, a missing folder), or an unknown kind.
    """
    folder = Path(folder)
    if folder.is_file() and folder.suffix in WEIGHTS_SUFFIXES:
        raise UserError(f"{folder} is a weights file (such as a feature extractor of `difflab features train`), "
                        f"not a run folder, so it cannot be sampled or evaluated: pass the --out folder of "
                        f"`difflab train`")
    cfg = resolve(io.read_run_config(folder))
    return cfg, _module(cfg.task).RUN


def load_run(folder: str | Path, device: torch.device | str = "cpu", *, ema: bool = True,
             checkpoint: str | Path | None = None) -> Run:
    """Load a trained run folder as its kind's :class:`~difflab.tasks.base.Run`.

    Args:
        folder: written by ``difflab train`` (or ``clip train``, ``distill``).
        device: where its network lives.
        ema: the EMA weights (else the raw model's).
        checkpoint: a checkpoint folder of the run (None = the newest).

    Raises:
        UserError: not a run folder (a weights file, a missing folder), unknown kind, no checkpoint.
    """
    cfg, cls = run_class(folder)
    ckpt = Path(checkpoint) if checkpoint is not None else io.require_checkpoint(folder)
    return cls.load(Path(folder), cfg, device, ema=ema, checkpoint=ckpt)


def sampling_run(folder: str | Path, device: torch.device | str = "cpu", *, verb: str = "sample",
                 **options: object) -> Run:
    """:func:`load_run`, with a one-line error naming the run's kind when that kind cannot sample (checked on
    the kind, before its checkpoint is read)."""
    cfg, cls = run_class(folder)
    if not cls.can_sample:
        samplers = ", ".join(name for name in TASKS if _module(name).RUN.can_sample)
        raise UserError(f"{folder} is {a_run(cfg.task)}, which cannot sample, so `difflab {verb}` cannot use it: "
                        f"pass a run of a generative kind ({samplers})")
    return load_run(folder, device, **options)


def evaluation_run(folder: str | Path, device: torch.device | str = "cpu") -> Run:
    """:func:`load_run` of a kind that ``difflab eval`` measures (its ``Run.evaluates()``), else one line naming the
    kind (checked on the kind, before its checkpoint is read)."""
    cfg, cls = run_class(folder)
    if not cls.evaluates():
        kinds = ", ".join(name for name in TASKS if _module(name).RUN.evaluates())
        raise UserError(f"{folder} is {a_run(cfg.task)}, which `difflab eval` does not measure: pass a run of a "
                        f"kind it measures ({kinds})")
    return load_run(folder, device)


def gaussian_run(folder: str | Path, device: torch.device | str = "cpu", *, verb: str = "distill") -> GaussianRun:
    """:func:`load_run` of a run of Gaussian diffusion (:class:`~difflab.tasks.base.GaussianRun`), else one line
    (checked on the kind, before its checkpoint is read)."""
    cfg, cls = run_class(folder)
    if not issubclass(cls, GaussianRunBase):
        raise UserError(f"{folder} is {a_run(cfg.task)}, not a run of Gaussian diffusion, so `difflab {verb}` "
                        f"cannot use it: pass the --out folder of `difflab train` on images")
    run = load_run(folder, device)
    assert isinstance(run, GaussianRun)  # GaussianRunBase implements it
    return run


def gaussian_task(cfg: Config) -> GaussianTask:
    """:func:`build_task` of a task of Gaussian diffusion with batches to distill on, else one line."""
    task = build_task(cfg)
    if not isinstance(task, GaussianTask):
        raise UserError(f"a {task.config.task} run cannot be distilled: distill a run of Gaussian diffusion on images")
    return task


__all__ = ["LEGACY_TASK", "TASKS", "Stage", "build_task", "evaluation_run", "gaussian_run", "gaussian_task", "load_run",
           "resolve", "run_class", "run_classes", "sampling_run", "is_stage_name", "stage_folder", "stages", "task_name"]
