"""A cascade (``task: cascade``), Imagen's framing of text-to-image (Saharia et al. 2022; Ho et al. 2021): a base
text-to-image model makes a small image (``super_res.low_resolution``, e.g. 16x16), and a text-conditioned
super-resolution diffusion model (:mod:`difflab.tasks.super_resolution`) upsamples it to ``data.resolution``.

One config trains both. The cascade run *is* the super-resolution model (its ``model``, ``train`` and ``sample``
sections); its base is the run ``cascade.base_run``:

- a bare name (default ``base``) is a stage: ``difflab train`` trains it first into ``RUN/base``, with the config
  :func:`base_config` derives: this one with ``task: text-to-image``, ``data.resolution =
  super_res.low_resolution``, then ``cascade.base_overrides`` applied (``--set`` syntax: a smaller model, its own
  budget and sampler settings);
- a path names a trained text-to-image run at that resolution instead (then no stage is trained).

``difflab sample RUN --prompt ...`` runs base -> upsample -> super-resolution, each stage with its own sampler
settings (``sample:`` of each run); flags given on the command line (``--sampler``, ``--steps``, ``--guidance``,
...) apply to both stages, ``--sr-steps`` to the super-resolution stage alone. ``difflab eval`` measures the final
images like a text-to-image run's; ``difflab upscale RUN in.png`` uses the super-resolution stage alone.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from difflab.config import CascadeConfig, Config, SuperResConfig, apply_stage_overrides
from difflab.errors import UserError
from difflab.tasks import Stage, is_stage_name, load_run, stage_folder
from difflab.tasks.base import GridRow, SampleRequest, Samples, a_run
from difflab.tasks.super_resolution import LowResolution, SuperResolutionRun, SuperResolutionTask, check_super_res
from difflab.tasks.text_to_image import TextToImageRun, sample_prompts

BASE_TASK = "text-to-image"


def check_cascade(cfg: Config) -> None:
    """One line for a cascade that cannot be built: no text encoder, a bad super-resolution setting."""
    if cfg.model.text_encoder == "none":
        raise UserError("a cascade is text-to-image, but model.text_encoder is none: set it to scratch, minilm or "
                        "clip (or use task=super-resolution for an unconditional upscaler)")
    check_super_res(cfg)


def base_config(cfg: Config) -> Config:
    """The base stage's config: ``cfg`` as a text-to-image run at ``super_res.low_resolution``, then
    ``cascade.base_overrides`` (the syntax of ``--set``)."""
    base = replace(cfg, task=BASE_TASK, data=replace(cfg.data, resolution=cfg.super_res.low_resolution),
                   super_res=SuperResConfig(), cascade=CascadeConfig())
    return apply_stage_overrides(base, cfg.cascade.base_overrides, "cascade.base_overrides")


def stages(cfg: Config) -> tuple[list[Stage], Config]:
    """The base text-to-image stage (unless ``cascade.base_run`` names a trained run), then the cascade's own
    super-resolution model; every check runs now, before the base trains."""
    check_cascade(cfg)
    ref = cfg.cascade.base_run
    if is_stage_name(ref):
        return [Stage(ref, base_config(cfg))], cfg
    if not Path(ref).is_dir():
        raise UserError(f"cascade.base_run {ref} is not a run folder: name a trained text-to-image run, or a bare "
                        "name (e.g. base) for a stage this config trains first")
    return [], cfg


class CascadeTask(SuperResolutionTask):
    """The cascade's own network: text-conditioned super-resolution (the base is a stage, :func:`stages`)."""

    name = "cascade"

    def __init__(self, cfg: Config) -> None:
        check_cascade(cfg)
        super().__init__(cfg)


# -- a trained run -------------------------------------------------------------------------------
def load_base(folder: Path, cfg: Config, device: torch.device | str) -> TextToImageRun:
    """The cascade's base run (``cascade.base_run``, a stage inside ``folder`` or a path), checked to make what
    the super-resolution stage upscales."""
    ref = cfg.cascade.base_run
    path = folder / ref if is_stage_name(ref) else stage_folder(folder, ref)
    if not path.is_dir():
        raise UserError(f"the base run {path} of cascade {folder} does not exist: train the cascade with "
                        f"`difflab train CONFIG --out {folder}` (it trains its stages first), or set "
                        "cascade.base_run to a trained text-to-image run")
    base = load_run(path, device)
    sr, d = cfg.super_res, base.config.data
    if not isinstance(base, TextToImageRun) or isinstance(base, SuperResolutionRun):
        raise UserError(f"the base run {path} of cascade {folder} is {a_run(base.task)}: name a text-to-image run "
                        "in cascade.base_run")
    if (d.resolution, d.channels) != (sr.low_resolution, cfg.data.channels):
        raise UserError(f"the base run {path} makes {d.resolution}x{d.resolution} images with {d.channels} channels, "
                        f"but cascade {folder} upscales {sr.low_resolution}x{sr.low_resolution} with "
                        f"{cfg.data.channels}: name a base run of super_res.low_resolution")
    return base


class CascadeRun(SuperResolutionRun):
    """A trained cascade: ``cond`` is the prompt of every image (n strings; None = test captions drawn with the
    seed); ``base`` is the base text-to-image run, the run itself the super-resolution stage."""

    task = "cascade"

    def __init__(self, folder: Path, config: Config, model: nn.Module, checkpoint: Path) -> None:
        super().__init__(folder, config, model, checkpoint)
        self.base: TextToImageRun | None = None  # set by load

    @classmethod
    def load(cls, folder: Path, config: Config, device: torch.device | str = "cpu", *, ema: bool = True,
             checkpoint: Path | None = None) -> CascadeRun:
        """The super-resolution network of ``folder`` and its base run (:func:`load_base`)."""
        base = load_base(Path(folder), config, device)
        run = super().load(folder, config, device, ema=ema, checkpoint=checkpoint)
        assert isinstance(run, CascadeRun)
        run.base = base
        return run

    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, aug_level: float | None = None, sr_steps: int | None = None,
               **options: Any) -> Samples:
        """``n`` images uint8 (n, H, H, C) with their ``prompts``: the base run's images for the prompts,
        upscaled (``sr_steps``, else ``steps``, else the cascade's ``sample.steps``)."""
        assert self.base is not None, "load the cascade with CascadeRun.load"
        self.sampler_options(sampler, steps, {})
        prompts = sample_prompts(self.config, n, cond, seed)
        common = {"sampler": sampler, "seed": seed, "guidance": guidance, "batch_size": batch_size,
                  "progress": progress, **options}
        low = self.base.sample(n, cond=prompts, steps=steps, **common)  # (n, h, h, C)
        return super().sample(n, cond=LowResolution(low.data, prompts), steps=sr_steps or steps,
                              aug_level=aug_level, **common)

    evaluate = TextToImageRun.evaluate  # the final images from prompts, measured as text-to-image's

    def grid_rows(self, rows: int, seed: int) -> list[GridRow]:
        return TextToImageRun.grid_rows(self, rows, seed)

    def text_encoders(self) -> list[nn.Module]:
        """The base run's text encoder, and the upsampler's when it reads the prompt too."""
        assert self.base is not None, "load the cascade with CascadeRun.load"
        return [*self.base.text_encoders(), *super().text_encoders()]

    def request(self, args: argparse.Namespace, n: int | None, default_n: int) -> SampleRequest:
        """As text-to-image's (``--prompt``, ``--prompts``), with ``--aug-level`` and ``--sr-steps``."""
        return replace(TextToImageRun.request(self, args, n, default_n), options=self.flag_options(args))


TASK = CascadeTask
RUN = CascadeRun
