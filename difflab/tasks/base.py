"""The two contracts every kind of run goes through: :class:`Task` (what :func:`difflab.train.train`
trains) and :class:`Run` (a trained run folder, loaded: what ``difflab sample | eval | fid | report |
demo | distill`` use). Only :mod:`difflab.tasks` knows kinds; everything else calls these.

=====================  ===========================================================================
protocol               who calls it
=====================  ===========================================================================
:class:`Task`          the one training loop (:mod:`difflab.train`)
:class:`Run`           the CLI, ``difflab eval``/``fid``, the report, the demo
:class:`GaussianRun`   ``difflab distill`` (a run of Gaussian diffusion: denoiser, schedule)
:class:`GaussianTask`  ``difflab distill`` (batches of data and conditions to distill on)
=====================  ===========================================================================

This module imports no task: it is the light leaf that ``train``, ``cli`` and ``report`` depend on.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from difflab import files, io
from difflab.config import Config
from difflab.errors import UserError

if TYPE_CHECKING:  # only for annotations: schedules and denoisers import no task either
    from difflab.denoisers import Cond, Denoiser
    from difflab.schedules import Schedule


@runtime_checkable
class Task(Protocol):
    """What the one training loop trains (a task module's ``*Task`` class, built by
    :func:`difflab.tasks.build_task`)."""

    config: Config  # resolved: the exact config saved as RUN/config.yaml

    def build_model(self) -> nn.Module:
        """The network to train (it never computes its own loss)."""
        ...

    def to(self, device: torch.device) -> None:
        """Move whatever the task keeps (a small dataset) to the training device."""
        ...

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """The scalar loss of one random batch drawn with ``generator`` (reproducible per step)."""
        ...

    def run_files(self) -> dict[str, str]:
        """name -> text of files that belong beside the config (e.g. a tokenizer's vocabulary); {} if none."""
        ...

    def preview(self, model: nn.Module) -> np.ndarray | None:
        """A small uint8 picture (H, W, C) of what ``model`` makes now, for training logs; None if none."""
        ...


@runtime_checkable
class GaussianTask(Task, Protocol):
    """A task of Gaussian diffusion whose batches can be distilled on."""

    schedule: Schedule

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Cond]:
        """x0 (B, ...) and the network's condition (``drop`` True where it is the null condition)."""
        ...


@dataclass(frozen=True)
class Samples:
    """What :meth:`Run.sample` returns, in the run's natural form.

    Attributes:
        data: images uint8 (N, H, W, C); 2-D points float32 (N, D); later waveforms, tokens.
        conditions: per-sample arrays (N,) of what each was drawn for: ``labels`` (class id, -1 =
            unconditional), ``prompts`` (str).
        ncol: samples per row when shown as a grid (one row per class or prompt); None = square.
    """

    data: np.ndarray
    conditions: dict[str, np.ndarray] = field(default_factory=dict)
    ncol: int | None = None

    def __len__(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class GridRow:
    """One row of a sample grid in a report: its label, the condition of its samples, its prompt."""

    label: str
    cond: Any = None  # what :meth:`Run.sample` takes as ``cond`` for the row's samples
    prompt: str | None = None  # printed under the row


def rows_condition(rows: Sequence[GridRow], per_row: int) -> list[Any] | None:
    """The ``cond`` of :meth:`Run.sample` for ``per_row`` samples of each row, row-major; None when every
    row is unconditional."""
    if all(r.cond is None for r in rows):
        return None
    return [r.cond for r in rows for _ in range(per_row)]


@dataclass(frozen=True)
class SampleRequest:
    """What the sampling flags of a command ask for: ``n`` samples for ``cond`` (None = the run's default), and
    the kind's own sampling options its flags set (keyword arguments of :meth:`Run.sample`, e.g. a cascade's
    ``aug_level``)."""

    n: int
    cond: Any = None
    ncol: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


Section = Callable[[Any], tuple[str, str]]  # a report section: ReportContext -> (title, html body)


class Run(Protocol):
    """A trained run folder, loaded (a task module's ``*Run`` class, loaded by :func:`difflab.tasks.load_run`)."""

    task: ClassVar[str]  # the registry name of its kind
    can_sample: ClassVar[bool]  # False for runs that only measure or encode (CLIP)
    flags_of: ClassVar[tuple[type, ...]]  # other kinds whose condition flags (add_flags) it takes too
    folder: Path
    config: Config
    checkpoint: Path  # the checkpoint folder whose weights are loaded
    checkpoint_step: int  # its training step

    @classmethod
    def load(cls, folder: Path, config: Config, device: torch.device | str = "cpu", *, ema: bool = True,
             checkpoint: Path | None = None) -> Run:
        """Rebuild the network of ``folder`` from ``config`` and load the (EMA) weights of ``checkpoint``
        (None = the newest)."""
        ...

    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, **options: Any) -> Samples:
        """``n`` samples for ``cond`` (None = the run's default conditions, drawn with ``seed``); unset
        sampler options come from ``config.sample``."""
        ...

    def save(self, samples: Samples, out: Path) -> Path:
        """Write ``samples`` in the run's natural format, chosen by ``out``'s suffix; returns the path."""
        ...

    def check_output(self, out: Path) -> Path:
        """``out``, once it is known to be a format :meth:`save` writes and a place that can be written
        (called before any sampling, so a wrong ``--out`` costs nothing)."""
        ...

    def default_output(self, sampler: str, steps: int) -> Path:
        """Where ``difflab sample`` writes when no ``--out`` is given."""
        ...

    def metrics(self, samples: Samples, *, data: str | None = None, data_path: str | None = None,
                features: str | Path | None = None, clip_run: str | Path | None = None,
                progress: bool = True) -> dict[str, Any]:
        """The run's measures of ``samples`` (images: FID, KID, PRDC; text-to-image: + CLIP score, attributes)."""
        ...

    def check_fid(self, *, data: str | None = None, data_path: str | None = None,
                  features: str | Path | None = None) -> None:
        """Fail, before any sampling, where :meth:`fid` would (no FID for this kind, a bad reference)."""
        ...

    def fid(self, samples: Samples, *, data: str | None = None, data_path: str | None = None,
            features: str | Path | None = None) -> tuple[float, str]:
        """The Frechet distance of ``samples`` to the run's data (or ``data``) and the reference's name."""
        ...

    def check_metrics(self, *, data: str | None = None, data_path: str | None = None,
                      features: str | Path | None = None) -> None:
        """Fail on a bad reference (or train and cache what :meth:`metrics` needs) before any sampling."""
        ...

    @classmethod
    def evaluates(cls) -> bool:
        """Whether ``difflab eval`` measures this kind (checked before any checkpoint is read)."""
        ...

    def evaluate(self, n: int, *, seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 batch_size: int | None = None, data: str | None = None, data_path: str | None = None,
                 features: str | Path | None = None, clip_run: str | Path | None = None, progress: bool = True,
                 **options: Any) -> dict[str, Any]:
        """The measures of ``difflab eval`` on ``n`` outputs: "data" (the reference), "outputs" (what was
        measured, e.g. "samples"), what made them ("sampler", "steps") and the figures."""
        ...

    def nll(self, n: int, *, variance: str | None = None, strata: int | None = None, seed: int = 0,
            progress: bool = True) -> dict[str, Any]:
        """The variational bound on ``n`` held-out examples (images: bits/dim)."""
        ...

    def report_sections(self) -> Sequence[Section]:
        """The sections of ``difflab report`` for this run, in page order."""
        ...

    def text_encoders(self) -> list[nn.Module]:
        """The run's text encoders (``difflab.models.text_encoders.TextEncoder``; none for a kind without prompts)."""
        ...

    def set_text_max_length(self, max_length: int) -> None:
        """Let every text encoder read up to ``max_length`` tokens per prompt (``--text-max-length``), or one
        line when one cannot (its positions are learned weights) or the run has none."""
        ...

    def grid_rows(self, rows: int, seed: int) -> list[GridRow]:
        """The rows of a report's sample grid: one per class, prompt or seed."""
        ...

    @staticmethod
    def add_flags(parser: argparse.ArgumentParser) -> None:
        """Add the condition flags this kind of run samples with (``--class``, ``--prompt``, ...)."""
        ...

    def request(self, args: argparse.Namespace, n: int | None, default_n: int) -> SampleRequest:
        """The samples asked for by this kind's flags in ``args`` (``n`` = ``--n``, None when not given)."""
        ...


SAMPLE_FOLDER_FILES = re.compile(r"\d{6}\.(png|wav)|metadata\.jsonl")  # what a folder of samples holds


def check_sample_folder(out: Path) -> None:
    """Refuse to write samples into a folder that holds anything but an earlier folder of samples."""
    if out.is_dir():
        foreign = next((p for p in out.iterdir() if not SAMPLE_FOLDER_FILES.fullmatch(p.name)), None)
        if foreign is not None:
            raise UserError(f"output folder {out} already holds other files (e.g. {foreign.name}), which samples "
                            "would replace: name a new folder")


def a_run(task: str) -> str:
    """``"an image run"``, ``"a clip run"``: a kind of run with its article, for messages."""
    return f"{'an' if task[:1] in 'aeiou' else 'a'} {task} run"


class RunBase:
    """What every kind's ``Run`` shares: the folder, config and checkpoint, and a one-line refusal (naming
    the kind) for each capability a kind does not have. A kind overrides what it can do."""

    task: ClassVar[str] = "?"
    can_sample: ClassVar[bool] = False

    def __init__(self, folder: Path, config: Config, checkpoint: Path) -> None:
        self.folder, self.config, self.checkpoint = Path(folder), config, Path(checkpoint)

    @property
    def checkpoint_step(self) -> int:
        """Training step of the loaded checkpoint (from its folder name ``step-NNNNNNNN``)."""
        return int(self.checkpoint.name.removeprefix(io.CHECKPOINT_PREFIX))

    def _cannot(self, what: str) -> UserError:
        return UserError(f"{self.folder} is {a_run(self.task)}, which has no {what}: pass a run that has one")

    def sample(self, n: int, **_: Any) -> Samples:
        raise self._cannot("samples")

    def save(self, samples: Samples, out: Path) -> Path:
        raise self._cannot("samples to save")

    # what save() writes, by suffix of --out: ".png", ".npz", "" (a folder); the message's words for each
    outputs: ClassVar[dict[str, str]] = {}

    def check_output(self, out: Path) -> Path:
        out = Path(out)
        if not self.outputs:
            raise self._cannot("samples to save")
        if out.suffix.lower() not in self.outputs:
            raise UserError(f"cannot write the samples of {a_run(self.task)} to {out}: "
                            f"use {' or '.join(self.outputs.values())}")
        if out.suffix == "":
            check_sample_folder(out)
        return files.check_output(out, "output", folder=out.suffix == "")

    def default_output(self, sampler: str, steps: int) -> Path:
        raise self._cannot("samples to save")

    def check_metrics(self, **_: Any) -> None:
        return None

    def metrics(self, samples: Samples, **_: Any) -> dict[str, Any]:
        raise self._cannot("sample metrics")

    @classmethod
    def evaluates(cls) -> bool:
        """The kinds that sample; a kind measured otherwise (an autoencoder's reconstructions) says True."""
        return cls.can_sample

    def evaluate(self, n: int, *, seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 batch_size: int | None = None, data: str | None = None, data_path: str | None = None,
                 features: str | Path | None = None, clip_run: str | Path | None = None, progress: bool = True,
                 **options: Any) -> dict[str, Any]:
        """``n`` samples (:meth:`sample`, ``options`` its sampler options) measured by :meth:`metrics`; the
        reference is checked first (:meth:`check_metrics`), so a bad one costs no sampling."""
        self.check_metrics(data=data, data_path=data_path, features=features)
        samples = self.sample(n, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, progress=progress,
                              **options)
        metrics = self.metrics(samples, data=data, data_path=data_path, features=features, clip_run=clip_run,
                               progress=progress)
        return {"data": metrics.pop("data"), "outputs": "samples", **self.made_with(sampler, steps), **metrics}

    def made_with(self, sampler: str | None, steps: int | None) -> dict[str, Any]:
        """How :meth:`sample` made its outputs, for the record of :meth:`evaluate`: the sampler and its steps
        (None = ``config.sample``'s)."""
        s = self.config.sample
        return {"sampler": sampler or s.sampler, "steps": steps or s.steps}

    def check_fid(self, **_: Any) -> None:
        raise self._cannot("FID (it measures images)")

    def fid(self, samples: Samples, **_: Any) -> tuple[float, str]:
        raise self._cannot("FID (it measures images)")

    def nll(self, n: int, **_: Any) -> dict[str, Any]:
        raise self._cannot("likelihood bound on held-out images (`difflab eval --nll`)")

    def text_encoders(self) -> list[nn.Module]:
        from difflab.models.text_encoders import TextEncoder

        model = getattr(self, "model", None)
        return [m for m in model.modules() if isinstance(m, TextEncoder)] if isinstance(model, nn.Module) else []

    def set_text_max_length(self, max_length: int) -> None:
        encoders = self.text_encoders()
        if not encoders:
            raise self._cannot("text encoder, so --text-max-length does not apply")
        for encoder in encoders:
            encoder.set_max_length(max_length)

    def grid_rows(self, rows: int, seed: int) -> list[GridRow]:
        return []

    @staticmethod
    def add_flags(parser: argparse.ArgumentParser) -> None:
        return None

    # kinds whose condition flags this kind takes too, besides its own add_flags' (a cascade takes --prompt)
    flags_of: ClassVar[tuple[type, ...]] = ()

    def request(self, args: argparse.Namespace, n: int | None, default_n: int) -> SampleRequest:
        return SampleRequest(n or default_n)


@runtime_checkable
class GaussianRun(Protocol):
    """What ``difflab distill`` needs from a trained run of Gaussian diffusion."""

    config: Config
    model: nn.Module  # the loaded (EMA) network
    schedule: Schedule
    conditional: bool  # whether the denoiser reads a condition (classes, prompts): guidance applies

    def denoiser(self, guidance: float | None = None, dynamic_threshold: float | None = None) -> Denoiser:
        """The network in the denoiser contract, with classifier-free guidance (None = ``sample.guidance``) and
        dynamic thresholding at that percentile (None = ``sample.dynamic_threshold``, 0 = off)."""
        ...


__all__ = ["GaussianRun", "GaussianTask", "GridRow", "Run", "RunBase", "SampleRequest", "a_run", "rows_condition", "Samples", "Section", "Task"]
