"""Latent diffusion (``task: latent-text-to-image``), Stable Diffusion's framing of text-to-image (Rombach et al.
2022, "High-Resolution Image Synthesis with Latent Diffusion Models"): the text-conditioned denoiser of
:mod:`difflab.tasks.text_to_image` (cross-attention on the same text encoders) trained on the latents of a frozen
KL autoencoder (:mod:`difflab.tasks.autoencoder`), scaled to unit variance by the autoencoder run's stored latent
scale (Sec. 4.3.2 of the paper: z / std(z)); sampling draws latents and decodes them.

The autoencoder is ``model.autoencoder_run``:

- null (default) or a bare name is a stage: ``difflab train`` trains it first into ``RUN/autoencoder`` (or
  ``RUN/<name>``) with the config :func:`autoencoder_config` derives: this one as ``task: autoencoder`` (its
  network is the ``autoencoder:`` section) with ``model.autoencoder_overrides`` applied (``--set`` syntax, e.g.
  its own ``train.max_minutes``), so one command trains both stages;
- a path names a trained autoencoder run instead.

The training images are encoded once, to the means of q(z|x) (deterministic, the usual cache), when the task is
built. The network sees (B, c, H/f, W/f) latents: f times fewer positions per side than pixel diffusion, which is
what makes it cheaper to train and to sample.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from difflab.config import Config, apply_overrides
from difflab.data.images import to_uint8
from difflab.errors import UserError
from difflab.models.autoencoder import KLAutoencoder, check_side
from difflab.models.unet import check_resolution
from difflab.tasks import Stage, is_stage_name, stage_folder
from difflab.tasks.autoencoder import encode_means, load_autoencoder
from difflab.tasks.image import PREVIEW_SAMPLES, preview_grid
from difflab.tasks.text_to_image import (TextToImageRun, TextToImageTask, build_text_unet, load_text_encoder,
                                         prompt_condition)

AUTOENCODER_STAGE = "autoencoder"  # RUN/autoencoder: the stage trained first when model.autoencoder_run is null


def autoencoder_ref(cfg: Config) -> str:
    """``model.autoencoder_run``, or the default stage's name."""
    return cfg.model.autoencoder_run or AUTOENCODER_STAGE


def autoencoder_config(cfg: Config) -> Config:
    """The autoencoder stage's config: ``cfg`` as ``task: autoencoder``, then ``model.autoencoder_overrides``."""
    stage = replace(cfg, task="autoencoder", model=replace(cfg.model, autoencoder_run=None, autoencoder_overrides=()))
    try:
        return apply_overrides(stage, list(cfg.model.autoencoder_overrides))
    except UserError as e:
        raise UserError(f"model.autoencoder_overrides: {e}") from None


def stages(cfg: Config) -> tuple[list[Stage], Config]:
    """The autoencoder stage (unless ``model.autoencoder_run`` names a trained run), then the latent denoiser."""
    ref = autoencoder_ref(cfg)
    main = replace(cfg, model=replace(cfg.model, autoencoder_run=ref))
    if is_stage_name(ref):
        return [Stage(ref, autoencoder_config(cfg))], main
    if not Path(ref).is_dir():
        raise UserError(f"model.autoencoder_run {ref} is not a run folder: name a trained autoencoder run, or a bare "
                        f"name (e.g. {AUTOENCODER_STAGE}) for a stage this config trains first")
    return [], main


def autoencoder_folder(run: Path | None, cfg: Config) -> Path:
    """Where the autoencoder of a latent run (or of one about to train into ``run``) is."""
    ref = autoencoder_ref(cfg)
    folder = (run / ref if run is not None else Path(ref)) if is_stage_name(ref) else stage_folder(run or Path("."), ref)
    if not folder.is_dir():
        raise UserError(f"the autoencoder {folder} of this latent-diffusion run does not exist: train the run with "
                        "`difflab train CONFIG --out RUN` (it trains its autoencoder stage first), or set "
                        "model.autoencoder_run to a trained autoencoder run")
    return folder


def check_latent_side(autoencoder: KLAutoencoder, cfg: Config) -> Any:
    """The side check of :func:`difflab.tasks.image.load_images` for latent diffusion: the image side must halve
    into the autoencoder's latent, and the latent side must suit the UNet of ``cfg.model``."""
    def check(side: int) -> None:
        check_side(side, autoencoder.downsample)
        try:
            check_resolution(side // autoencoder.downsample, cfg.model.channel_mult, cfg.model.patch_size)
        except UserError as e:
            raise UserError(f"the latent of a {side}x{side} image is {side // autoencoder.downsample}x"
                            f"{side // autoencoder.downsample} (autoencoder downsample {autoencoder.downsample}), and "
                            f"{e}") from None
    return check


class LatentTextToImageTask(TextToImageTask):
    """Text-to-image diffusion on the scaled latents of a frozen autoencoder (encoded once)."""

    name = "latent-text-to-image"

    def __init__(self, cfg: Config, run: Path | None = None) -> None:
        folder = autoencoder_folder(run, cfg)
        self.autoencoder, self.scale, ae_cfg = load_autoencoder(folder)
        # the images the autoencoder reads: its channels (the data itself may be another run's)
        super().__init__(replace(cfg, data=replace(cfg.data, channels=ae_cfg.data.channels)),
                         check=check_latent_side(self.autoencoder, cfg))
        self.latents = encode_means(self.autoencoder, self.images) * self.scale  # (N, c, H/f, W/f)
        self.images = self.images[:0]  # the pixels are not needed any more

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.latents = self.latents.to(device)
        self.autoencoder.to(device)

    def x0(self, idx: Tensor) -> Tensor:
        """The scaled latents of images ``idx`` (B, c, H/f, W/f)."""
        return self.latents[idx]

    def build_model(self) -> nn.Module:
        return build_text_unet(self.config, self.autoencoder.latent_channels, self.encoder)

    def preview(self, model: nn.Module) -> np.ndarray:
        """Decoded samples for training captions (in turn)."""
        prompts = [self.captions[i % len(self.captions)] for i in range(PREVIEW_SAMPLES)]
        cond = prompt_condition(model, prompts, next(model.parameters()).device)
        return preview_grid(model, self.schedule, self.config, cond, shape=tuple(self.latents.shape[1:]),
                            decode=lambda z: self.autoencoder.decode(z / self.scale))


def task_for_run(cfg: Config, run: Path | None) -> LatentTextToImageTask:
    """The task of a latent run training into ``run`` (its autoencoder stage is ``run/<name>``)."""
    return LatentTextToImageTask(cfg, run)


# -- a trained run -------------------------------------------------------------------------------
class LatentTextToImageRun(TextToImageRun):
    """A trained latent text-to-image run: the text-to-image run's prompts, sampling and metrics, on latents that
    the autoencoder decodes into images."""

    task = "latent-text-to-image"

    @classmethod
    def build(cls, cfg: Config, folder: Path) -> nn.Module:
        return build_text_unet(cfg, cfg.autoencoder.latent_channels, load_text_encoder(cfg, run=folder))

    @classmethod
    def load(cls, folder: Path, config: Config, device: torch.device | str = "cpu", *, ema: bool = True,
             checkpoint: Path | None = None) -> LatentTextToImageRun:
        run = super().load(folder, config, device, ema=ema, checkpoint=checkpoint)
        run.autoencoder, run.scale, _ = load_autoencoder(autoencoder_folder(Path(folder), config), device)
        return run

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(c, H/f, W/f): what the sampler draws, the latent of one image."""
        _, H, W = self.image_shape
        return self.autoencoder.latent_shape(H, W)

    @torch.inference_mode()
    def _images(self, batches: list[Tensor]) -> np.ndarray:
        """Decode the sampled latents: x = D(z / scale), uint8 (n, H, W, C)."""
        return np.concatenate([to_uint8(self.autoencoder.decode(z / self.scale)).permute(0, 2, 3, 1).cpu().numpy()
                               for z in batches])  # (n, H, W, C)

    def nll(self, n: int, **_: Any) -> dict[str, Any]:
        raise self._cannot("likelihood bound on pixels (its diffusion runs on the autoencoder's latents)")


__all__ = ["LatentTextToImageRun", "LatentTextToImageTask", "autoencoder_config", "stages", "task_for_run"]

TASK = LatentTextToImageTask
RUN = LatentTextToImageRun
