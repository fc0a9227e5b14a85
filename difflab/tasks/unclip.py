"""DALL-E 2's framing (``task: unclip``): text -> CLIP text embedding -> prior -> CLIP image embedding -> decoder.

Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents", Sec. 2, with
difflab's own CLIP (:mod:`difflab.tasks.clip`). One config trains three networks, each a run::

    RUN/clip/    the CLIP (a stage; or prior.clip_run names a trained CLIP run)
    RUN/prior/   the diffusion prior z_t -> z_i (a stage, task prior: difflab.tasks.prior; or prior.prior_run)
    RUN/upsampler/  with ``prior.decoder_resolution`` below ``data.resolution``: a super-resolution diffusion model
                 from the decoder's side to the output's (a stage, task super-resolution; or prior.upsampler_run),
                 as DALL-E 2 follows its 64x64 decoder with two upsamplers (Sec. 2.1)
    RUN/         the decoder P(x | z_i): this run's own network

The decoder is the text-to-image UNet (:class:`~difflab.models.text_unet.TextConditionedUNet`) whose
"text encoder" is :class:`~difflab.models.prior.ImageEmbeddingEncoder`: the image's CLIP embedding z_i
(computed once per training image by the frozen CLIP, scaled as the prior's) becomes ``prior.decoder_tokens``
context tokens for cross-attention and the pooled vector added to the time embedding, as in DALL-E 2; with
``prior.decoder_text`` the caption's CLIP token states follow them (dropped alone at
``prior.text_drop_prob``). The whole condition is dropped to the UNet's null at ``model.cond_drop_prob``, so
the decoder takes classifier-free guidance (``--guidance``), and so does the prior (``prior.guidance``).

``difflab sample RUN --prompt ...`` runs the pipeline (the prior with ``prior.sampler``, ``prior.steps``,
``prior.guidance``; the decoder with the sampling flags); ``difflab eval`` measures the images as a
text-to-image run's (FID, CLIP score under the dataset's default CLIP, attribute accuracy);
``difflab variations RUN in.png`` decodes images from the CLIP embedding of a given image.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from difflab import io
from difflab.config import Config, PriorConfig, SampleConfig, apply_stage_overrides, from_dict, to_dict
from difflab.data.images import to_model_range
from difflab.denoisers import Cond, check_prediction
from difflab.errors import UserError
from difflab.evaluate.clip_score import distinct_captions
from difflab.models.prior import ImageEmbeddingEncoder
from difflab.models.text_encoders import ClipTextEncoder
from difflab.models.text_unet import TextConditionedUNet
from difflab.samplers import check_sample_config
from difflab.schedules import Schedule, schedule_from_config
from difflab.tasks import Stage, load_run, run_class
from difflab.tasks.base import SampleRequest, Samples, a_run
from difflab.tasks.clip import ClipRun, clip_config, load_clip_run
from difflab.tasks.gaussian import algorithm1, load_network
from difflab.tasks.image import PREVIEW_SAMPLES, build_unet, image_channels, load_images, preview_grid
from difflab.tasks.prior import PriorRun, clip_folder, embed_dim, image_embeddings, named_run
from difflab.tasks.super_resolution import LowResolution, SuperResolutionRun
from difflab.tasks.text_to_image import TextToImageRun, is_empty, sample_prompts

CLIP_STAGE = "clip"  # RUN/clip
PRIOR_STAGE = "prior"  # RUN/prior
UPSAMPLER_STAGE = "upsampler"  # RUN/upsampler, with prior.decoder_resolution
UPSAMPLER_TASK = "super-resolution"


# -- the stages ----------------------------------------------------------------------------------
def _is_stage(ref: str | None, name: str) -> bool:
    return ref is None or ref == name


def clip_stage_config(cfg: Config) -> Config:
    """The CLIP stage: difflab's default CLIP recipe (:func:`difflab.tasks.clip.clip_config`) on ``cfg.data``
    at ``prior.clip_resolution``, sized by ``cfg.clip``, for ``prior.clip_steps`` / ``prior.clip_minutes``."""
    d, p = cfg.data, cfg.prior
    base = clip_config(d.name, data_path=d.path, resolution=p.clip_resolution or d.resolution, channels=d.channels)
    return replace(base, data=replace(base.data, size=d.size, holdout=d.holdout), clip=cfg.clip,
                   train=replace(base.train, max_steps=p.clip_steps, max_minutes=p.clip_minutes, seed=cfg.train.seed))


def prior_stage_config(cfg: Config, clip_ref: str) -> Config:
    """The prior stage (task prior): ``cfg`` with the diffusion, training and sampling settings of ``cfg.prior``,
    naming the CLIP relative to RUN/prior (``../clip``) when it is the CLIP stage."""
    p = cfg.prior
    ref = f"../{CLIP_STAGE}" if clip_ref == CLIP_STAGE else clip_ref
    return replace(cfg, task="prior", diffusion=replace(cfg.diffusion, prediction=p.prediction, schedule=p.schedule),
                   train=replace(cfg.train, max_steps=p.train_steps, max_minutes=p.train_minutes,
                                 batch_size=p.batch_size, lr=p.lr),
                   sample=replace(SampleConfig(), sampler=p.sampler, steps=p.steps, guidance=p.guidance, clip_x0=False,
                                  batch_size=cfg.sample.batch_size),
                   prior=replace(p, clip_run=ref, prior_run=None))


def check_upsampling(cfg: Config) -> None:
    """One line unless ``prior.decoder_resolution`` (when set) divides ``data.resolution`` and is below it."""
    side, H = cfg.prior.decoder_resolution, cfg.data.resolution
    if side is not None and (H is None or side >= H or H % side):
        raise UserError(f"prior.decoder_resolution={side} must divide data.resolution={H} and be smaller (an "
                        "upsampler takes the decoder's images to data.resolution): set data.resolution to a multiple "
                        "of it, or prior.decoder_resolution=null for a decoder at data.resolution")


def decoder_config(cfg: Config) -> Config:
    """The decoder's view of ``cfg``: its images at ``prior.decoder_resolution`` (None: ``data.resolution``)."""
    side = cfg.prior.decoder_resolution
    return cfg if side is None else replace(cfg, data=replace(cfg.data, resolution=side))


def upsampler_stage_config(cfg: Config) -> Config:
    """The upsampler stage (task super-resolution): ``cfg`` from ``prior.decoder_resolution`` to ``data.resolution``
    without a text encoder, then ``prior.upsampler_overrides`` (the syntax of ``--set``)."""
    base = replace(cfg, task=UPSAMPLER_TASK, model=replace(cfg.model, text_encoder="none"),
                   super_res=replace(cfg.super_res, low_resolution=cfg.prior.decoder_resolution), prior=PriorConfig())
    return apply_stage_overrides(base, cfg.prior.upsampler_overrides, "prior.upsampler_overrides")


def _check_stage(stage: Config) -> None:
    """A stage's values by their rules, its prediction and sampling settings: one line now, not after the
    stages before it have trained."""
    from_dict(Config, to_dict(stage))
    check_prediction(stage.diffusion.prediction)
    check_sample_config(stage.sample, schedule_from_config(stage.diffusion))


def stages(cfg: Config) -> tuple[list[Stage], Config]:
    """RUN/clip (unless ``prior.clip_run`` names a trained CLIP) and RUN/prior (unless ``prior.prior_run`` names a
    trained prior), then the decoder's config, which names them ``clip`` and ``prior``."""
    p = cfg.prior
    if not _is_stage(p.prior_run, PRIOR_STAGE) and _is_stage(p.clip_run, CLIP_STAGE):
        raise UserError(f"prior.prior_run={p.prior_run} names a trained prior, so the decoder must use its CLIP: "
                        f"set prior.clip_run to the CLIP run that prior was trained in")
    out = []
    clip_ref = CLIP_STAGE if _is_stage(p.clip_run, CLIP_STAGE) else p.clip_run
    if clip_ref == CLIP_STAGE:
        out.append(Stage(CLIP_STAGE, clip_stage_config(cfg)))
    prior_ref = PRIOR_STAGE if _is_stage(p.prior_run, PRIOR_STAGE) else p.prior_run
    if prior_ref == PRIOR_STAGE:
        out.append(Stage(PRIOR_STAGE, prior_stage_config(cfg, clip_ref)))
    check_upsampling(cfg)
    upsampler_ref = p.upsampler_run
    if p.decoder_resolution is not None and _is_stage(p.upsampler_run, UPSAMPLER_STAGE):
        upsampler_ref = UPSAMPLER_STAGE
        out.append(Stage(UPSAMPLER_STAGE, upsampler_stage_config(cfg)))
    for stage in out:
        try:
            _check_stage(stage.config)
        except UserError as e:
            raise UserError(f"the {stage.name} stage, made from this config's prior: and clip: settings, would not "
                            f"train: {e}") from None
    return out, replace(cfg, prior=replace(p, clip_run=clip_ref, prior_run=prior_ref, upsampler_run=upsampler_ref))


# -- the decoder ---------------------------------------------------------------------------------
def build_decoder(cfg: Config, channels: int, clip: ClipRun) -> TextConditionedUNet:
    """The UNet of ``cfg.model`` reading the image embedding of ``clip`` (and the caption's token states of its
    text tower with ``prior.decoder_text``)."""
    p, E = cfg.prior, embed_dim(clip)
    encoder = ImageEmbeddingEncoder(E, tokens=p.decoder_tokens, text_dim=clip.config.clip.text_width if p.decoder_text
                                    else 0)
    return TextConditionedUNet(build_unet(cfg, channels, context_dim=E, pooled_dim=E), encoder)


def caption_states(clip: ClipRun, texts: Sequence[str]) -> dict[str, Tensor]:
    """{"context": (N, L, D), "context_mask": (N, L)}: the CLIP text tower's token states of ``texts`` (an empty
    text: no valid token), for a decoder with ``prior.decoder_text``."""
    tokens = ClipTextEncoder.from_clip(clip.config, clip.model, clip.tokenizer).tokenize(list(texts))
    empty = is_empty(texts).to(tokens["context_mask"].device)  # (N,)
    return {"context": tokens["context"], "context_mask": tokens["context_mask"] & ~empty[:, None]}


class UnclipTask:
    """The decoder: images of ``cfg.data`` from their CLIP image embeddings (computed once by the CLIP run
    ``prior.clip_run``, resolved against ``run``, the folder it trains into)."""

    name = "unclip"

    def __init__(self, cfg: Config, run: Path | None = None) -> None:
        check_upsampling(cfg)
        clip = load_clip_run(clip_folder(run, cfg))
        dataset = load_images(decoder_config(cfg))  # at prior.decoder_resolution, when set
        if cfg.prior.decoder_text and not dataset.texts:
            raise UserError(f"prior.decoder_text needs captions, but dataset {cfg.data.name} has none: train on "
                            "captioned images or set prior.decoder_text=false")
        H, _ = dataset.resolution
        self.channels = dataset.channels
        self.config = replace(cfg, task=self.name, data=replace(cfg.data, resolution=cfg.data.resolution
                                                                if cfg.prior.decoder_resolution else H,
                                                                channels=dataset.channels),
                              model=replace(cfg.model, num_classes=0))
        self.schedule: Schedule = schedule_from_config(cfg.diffusion)
        self.clip = clip
        self.images: Tensor = dataset.images  # uint8 (N, C, H, W)
        self.image_embeds = image_embeddings(clip, dataset.images)  # (N, E), once
        self.text: dict[str, Tensor] | None = None  # the captions' token states (U, L, D), with decoder_text
        if cfg.prior.decoder_text:
            captions, self.caption_index = distinct_captions(list(dataset.texts))  # U captions, (N,)
            self.text = caption_states(clip, captions)

    def to(self, device: torch.device) -> None:
        """Keep images, embeddings and token states on the training device (they are small)."""
        self.images, self.image_embeds = self.images.to(device), self.image_embeds.to(device)
        if self.text is not None:
            self.caption_index = self.caption_index.to(device)
            self.text = {k: v.to(device) for k, v in self.text.items()}

    def run_files(self) -> dict[str, str]:
        return {}

    def build_model(self) -> nn.Module:
        return build_decoder(decoder_config(self.config), self.channels, self.clip)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """x0 (B, C, H, W) in [-1, 1] of random images and the network's condition: ``image_embed`` z_i (B, E),
        ``drop`` (B,) True at ``model.cond_drop_prob``; with ``prior.decoder_text`` the caption's ``context`` and
        ``context_mask``, masked out alone at ``prior.text_drop_prob``."""
        device = self.images.device
        idx = torch.randint(0, len(self.images), (batch_size,), device=device, generator=generator)
        drop = torch.rand(batch_size, device=device, generator=generator) < self.config.model.cond_drop_prob
        cond = {"image_embed": self.image_embeds[idx], "drop": drop}
        if self.text is not None:
            cap = self.caption_index[idx]  # (B,)
            text_drop = torch.rand(batch_size, device=device, generator=generator) < self.config.prior.text_drop_prob
            cond |= {"context": self.text["context"][cap],
                     "context_mask": self.text["context_mask"][cap] & ~text_drop[:, None]}  # (B, L)
        return to_model_range(self.images[idx]), cond

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Algorithm 1 on a random :meth:`batch` of images and their embeddings."""
        x0, cond = self.batch(batch_size, generator)
        return algorithm1(model, x0, cond, self.schedule, self.config, generator)

    def preview(self, model: nn.Module) -> np.ndarray:
        """Decoded images of the first training images' embeddings."""
        device = next(model.parameters()).device
        n = min(PREVIEW_SAMPLES, len(self.images))
        cond = {"image_embed": self.image_embeds[:n].to(device), "drop": torch.zeros(n, dtype=torch.bool, device=device)}
        if self.text is not None:
            cond |= {k: v[self.caption_index[:n]].to(device) for k, v in self.text.items()}
        return preview_grid(model, self.schedule, decoder_config(self.config), cond)


def task_for_run(cfg: Config, run: Path | None) -> UnclipTask:
    """The decoder trained into ``run``: its ``prior.clip_run`` names the CLIP stage relative to it (``clip``)."""
    return UnclipTask(cfg, run)


# -- a trained run -------------------------------------------------------------------------------
def prior_folder(run: Path, cfg: Config) -> Path:
    """The prior run of ``cfg.prior.prior_run``, resolved against ``run``; one line when it is missing."""
    return named_run(run, cfg.prior.prior_run or PRIOR_STAGE, "prior.prior_run", "the prior run",
                     "train it (`difflab train CONFIG --out RUN --resume` trains a missing stage) or set "
                     "prior.prior_run to a prior run's folder")


def load_upsampler(folder: Path, cfg: Config, device: torch.device | str) -> SuperResolutionRun:
    """The upsampler of ``prior.upsampler_run`` (a stage in ``folder`` or a path), checked to take the decoder's
    images to ``data.resolution``."""
    path = named_run(folder, cfg.prior.upsampler_run or UPSAMPLER_STAGE, "prior.upsampler_run", "the upsampler run",
                     "train it (`difflab train CONFIG --out RUN --resume` trains a missing stage) or set "
                     "prior.upsampler_run to a super-resolution run's folder")
    run = load_run(path, device)
    side, C = cfg.prior.decoder_resolution, image_channels(cfg)
    if not isinstance(run, SuperResolutionRun):
        raise UserError(f"the upsampler {path} of {folder} is {a_run(run.task)}: name a super-resolution run in "
                        "prior.upsampler_run")
    if run.low_shape != (side, side, C) or run.config.data.resolution != cfg.data.resolution:
        H = run.config.data.resolution
        raise UserError(f"the upsampler {path} takes {run.low_shape[0]}x{run.low_shape[0]} images to {H}x{H}, but "
                        f"the decoder of {folder} makes {side}x{side} for {cfg.data.resolution}x{cfg.data.resolution}: "
                        "name an upsampler from prior.decoder_resolution to data.resolution")
    return run


def centre_square(image: np.ndarray) -> np.ndarray:
    """The centred square of an (H, W, C) image: (S, S, C) with S = min(H, W)."""
    H, W = image.shape[:2]
    S = min(H, W)
    top, left = (H - S) // 2, (W - S) // 2
    return image[top:top + S, left:left + S].copy()  # (S, S, C), writable (a decoded file is read-only)


class UnclipRun(TextToImageRun):
    """A trained unclip run: the decoder, with the CLIP and the prior it samples through. ``cond`` is the prompt
    of every image, as for a text-to-image run (its flags, metrics and report)."""

    task = "unclip"
    flags_of = (TextToImageRun,)  # --prompt / --prompts, besides its own --prior-guidance / --prior-steps

    def text_encoders(self) -> list[nn.Module]:
        """CLIP's text tower (the prior's prompts, and the decoder's with ``prior.decoder_text``)."""
        return self.prior.text_encoders()

    def __init__(self, folder: Path, config: Config, model: nn.Module, checkpoint: Path, clip: ClipRun,
                 prior: PriorRun, upsampler: SuperResolutionRun | None = None) -> None:
        super().__init__(folder, config, model, checkpoint)
        self.clip, self.prior, self.upsampler = clip, prior, upsampler

    @classmethod
    def load(cls, folder: Path, config: Config, device: torch.device | str = "cpu", *, ema: bool = True,
             checkpoint: Path | None = None) -> UnclipRun:
        """The decoder of ``folder`` with its CLIP (``prior.clip_run``), prior (``prior.prior_run``) and, with
        ``prior.decoder_resolution``, upsampler (``prior.upsampler_run``), each resolved against ``folder``; one
        line when the prior was trained in another CLIP."""
        checkpoint = checkpoint or io.require_checkpoint(folder)
        clip = load_clip_run(clip_folder(folder, config), device)
        prior = load_prior_run(prior_folder(folder, config), device)
        if prior.clip.folder.resolve() != clip.folder.resolve():
            raise UserError(f"the prior {prior.folder} was trained in the CLIP {prior.clip.folder}, but the decoder of "
                            f"{folder} in {clip.folder}: set prior.clip_run and prior.prior_run to runs of one CLIP")
        upsampler = load_upsampler(folder, config, device) if config.prior.decoder_resolution else None
        model = load_network(cls.build(config, folder, clip), checkpoint, ema, device)
        return cls(folder, config, model, checkpoint, clip, prior, upsampler)

    @classmethod
    def build(cls, cfg: Config, folder: Path, clip: ClipRun | None = None) -> nn.Module:
        return build_decoder(decoder_config(cfg), image_channels(cfg), clip or load_clip_run(clip_folder(folder, cfg)))

    @property
    def decoder_shape(self) -> tuple[int, int, int]:
        """(C, h, h) of the decoder's images (the output's, :attr:`image_shape`, without an upsampler)."""
        C, h = self.image_shape[0], decoder_config(self.config).data.resolution
        return C, h, h

    def decoder_condition(self, image_embeds: Tensor, prompts: Sequence[str] | None) -> Callable[[int, int], Cond]:
        """``cond_of(start, stop)`` of the decoder for z_i (n, E) (and the prompts' token states with
        ``prior.decoder_text``; None or "": none)."""
        text = None
        if self.config.prior.decoder_text:
            text = caption_states(self.clip, list(prompts) if prompts is not None else [""] * len(image_embeds))

        def cond_of(start: int, stop: int) -> Cond:
            z = image_embeds[start:stop].to(self.device)
            cond = {"image_embed": z, "drop": torch.zeros(len(z), dtype=torch.bool, device=self.device)}
            return cond | ({k: v[start:stop].to(self.device) for k, v in text.items()} if text is not None else {})

        return cond_of

    def decode(self, image_embeds: Tensor, prompts: Sequence[str] | None = None, **sampling: Any) -> np.ndarray:
        """Images uint8 (n, H, W, C) decoded from z_i (n, E), then upscaled by the upsampler (its own sampler
        settings, the same seed) when the run has one; ``sampling``: the keyword arguments of
        :meth:`~difflab.tasks.gaussian.GaussianRunBase.draw` (sampler, steps, seed, guidance, ...)."""
        batches = self.draw(len(image_embeds), self.decoder_shape, self.decoder_condition(image_embeds, prompts),
                            unit="img", **sampling)
        images = self._images(batches)  # (n, h, h, C)
        if self.upsampler is None:
            return images
        common = {k: sampling[k] for k in ("seed", "batch_size", "progress") if k in sampling}
        return self.upsampler.upscale(LowResolution(images), **common)  # (n, H, H, C)

    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, prior_guidance: float | None = None, prior_steps: int | None = None,
               **options: Any) -> Samples:
        """``n`` images uint8 (n, H, W, C) for their ``prompts``: z_t -> the prior (``prior.sampler``,
        ``prior.steps`` or ``prior_steps``, ``prior.guidance`` or ``prior_guidance``) -> z_i -> the decoder
        (``sampler``, ``steps``, ``guidance`` and the sampler's ``options``)."""
        self.sampler_options(sampler, steps, {})
        if prior_guidance is not None and not prior_guidance >= 0:
            raise UserError(f"the prior's guidance must be zero or more, got {prior_guidance}: e.g. --prior-guidance 3")
        if prior_steps is not None and prior_steps < 1:
            raise UserError(f"the prior's steps must be positive, got {prior_steps}: e.g. --prior-steps 32")
        prompts = sample_prompts(self.config, n, cond, seed)
        p = self.config.prior
        z = self.prior.embeddings(prompts, sampler=p.sampler, steps=prior_steps or p.steps, seed=seed,
                                  guidance=p.guidance if prior_guidance is None else prior_guidance,
                                  batch_size=batch_size, progress=progress)  # (n, E)
        images = self.decode(z, prompts, sampler=sampler, steps=steps, seed=seed, guidance=guidance,
                             batch_size=batch_size, progress=progress, **options)
        return Samples(images, {"labels": np.full(n, -1, dtype=np.int64), "prompts": np.asarray(prompts, dtype=str)})

    @staticmethod
    def add_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--prior-guidance", type=float, metavar="W",
                            help="unclip runs: classifier-free guidance of the prior (default: the run's prior.guidance)")
        parser.add_argument("--prior-steps", type=int, metavar="N",
                            help="unclip runs: sampling steps of the prior (default: the run's prior.steps)")

    def request(self, args: argparse.Namespace, n: int | None, default_n: int) -> SampleRequest:
        """As text-to-image's (``--prompt``, ``--prompts``), with ``--prior-guidance`` and ``--prior-steps``."""
        given = {"prior_guidance": getattr(args, "prior_guidance", None), "prior_steps": getattr(args, "prior_steps", None)}
        return replace(TextToImageRun.request(self, args, n, default_n),
                       options={k: v for k, v in given.items() if v is not None})

    def variations(self, image: np.ndarray, n: int, **sampling: Any) -> Samples:
        """``n`` images decoded from the CLIP image embedding of ``image`` uint8 (H, W, C) (its centred square at
        the CLIP's side): DALL-E 2's variations. ``sampling`` as :meth:`decode`."""
        z = image_embeddings(self.clip, centre_square(image)[None])  # (1, E)
        return Samples(self.decode(z.expand(n, -1), None, **sampling), {"labels": np.full(n, -1, dtype=np.int64)})


def load_prior_run(folder: str | Path, device: torch.device | str = "cpu") -> PriorRun:
    """:func:`difflab.tasks.load_run` of a prior run, else one line (checked before its checkpoint is read)."""
    cfg, cls = run_class(folder)
    if cls is not PriorRun:
        raise UserError(f"{folder} is {a_run(cfg.task)}, not a prior run: set prior.prior_run to a run of task prior")
    return load_run(folder, device)


def unclip_config(folder: str | Path, verb: str = "variations") -> Config:
    """The config of the unclip run ``folder``, else one line naming its kind (nothing else is read)."""
    cfg, cls = run_class(folder)
    if cls is not UnclipRun:
        raise UserError(f"{folder} is {a_run(cfg.task)}, not an unclip run, so `difflab {verb}` cannot use it: pass a "
                        f"run of configs/shapes64_unclip.yaml (a CLIP, a prior and a decoder)")
    return cfg


def load_unclip_run(folder: str | Path, device: torch.device | str = "cpu", *, verb: str = "variations") -> UnclipRun:
    """:func:`difflab.tasks.load_run` of an unclip run, else one line (checked before its checkpoint is read)."""
    unclip_config(folder, verb)
    return load_run(folder, device)


def write_variations(run: str | Path, image: str | Path, *, n: int, out: str | Path | None = None,
                     device: torch.device | str = "cpu", **sampling: Any) -> Path:
    """``difflab variations``: ``n`` images from the CLIP embedding of the image file ``image``, written to ``out``
    (a .png grid, .npz or new folder; default RUN/samples/variations-NAME.png), checked before sampling.

    Raises:
        UserError: not an unclip run, an unreadable image, an output that cannot be written.
    """
    from difflab.data.image_folder import read_image

    picture = read_image(image, channels=image_channels(unclip_config(run)))  # (H, W, C), guarded
    loaded = load_unclip_run(run, device)
    target = loaded.check_output(Path(out) if out else loaded.folder / "samples" / f"variations-{Path(image).stem}.png")
    return loaded.save(loaded.variations(picture, n, **sampling), target)


TASK = UnclipTask
RUN = UnclipRun
