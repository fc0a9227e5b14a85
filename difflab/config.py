"""Typed run configuration: frozen dataclasses, YAML files, ``--set a.b=v`` overrides.

Unknown keys, values of the wrong type and values out of range are errors (one line, naming the
key and the fix); there are no aliases. A field's range is a :class:`Rule` in its metadata
(:func:`checked`); rules that tie fields together are :func:`check_config`'s. :func:`from_dict`
checks both, so YAML files, ``--set`` overrides and a run's saved ``config.yaml`` are all
validated where they are read, before any library sees a value. The resolved config is saved
as ``config.yaml`` beside every run's checkpoints, and is all that ``difflab sample`` needs to
rebuild the model.
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

# the value rules (difflab.config_rules) and the speech and text sections (difflab.config_media), re-exported
from difflab.config_media import TEXT_METHODS, AudioConfig, TextConfig, VocoderConfig, WordsConfig  # noqa: F401
from difflab.config_rules import (EXAMPLE, HALF_OPEN, NON_NEGATIVE, OPEN_UNIT, PERCENTILE,  # noqa: F401
                                  POSITIVE, RULE, UNIT_INTERVAL, Rule, at_least, checked, each, one_of)
from difflab.errors import UserError
from difflab.files import read_text


IMAGE_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: every channel count a loader of difflab.data can give
# DDPM's linear schedule (Ho et al. 2020, Sec. 4) runs from beta_1 = 1e-4 to beta_T = 0.02 for T = 1000, scaled
# by 1000 / T for other T (difflab.schedules builds it from these; the config rules check its beta_T < 1).
DDPM_TIMESTEPS = 1000
DDPM_BETA_START = 1e-4
DDPM_BETA_END = 0.02


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on (see :func:`difflab.data.load_dataset`)."""

    name: str = "digits"  # digits | mnist | fashion-mnist | image-folder | shapes (captioned) | mixture2d (2-D points)
    path: str | None = None  # folder of the files; None = the dataset's default place
    # square side in pixels; None = the dataset's native size
    resolution: int | None = checked(None, POSITIVE, example=32)
    # None = native (1 for the MNIST family, 3 for folders)
    channels: int | None = checked(None, one_of(*IMAGE_CHANNELS), example=3)
    random_flip: bool = False  # horizontal flips while training (off for digits and clothes)
    class_conditional: bool = True  # condition on labels when the dataset has them
    # shapes: images in the generated training set; None = its default
    size: int | None = checked(None, POSITIVE, example=20000)
    holdout: tuple[str, ...] = ()  # shapes: attribute combinations kept out of training, e.g. "red triangle"
    # captioned training: grammar = each image's own caption; paraphrase (shapes) = also caption_variants - 1
    # rewordings in the training side of the held-out vocabulary (difflab.data.shape_words), one drawn per step
    captions: str = checked("grammar", one_of("grammar", "paraphrase"))
    caption_variants: int = checked(16, at_least(2))


@dataclass(frozen=True)
class ModelConfig:
    """The UNet denoiser (see :class:`difflab.models.unet.UNet`); ``mlp_*`` for 2-D data (:mod:`difflab.models.mlp`)."""

    base_channels: int = checked(32, POSITIVE)
    channel_mult: tuple[int, ...] = checked((1, 2), each(at_least(1), non_empty=True))
    num_res_blocks: int = checked(2, at_least(1))  # per level (the UNet needs one, for its widths)
    attention_levels: tuple[int, ...] = checked((1,), each(NON_NEGATIVE))  # indices into channel_mult
    num_heads: int = checked(4, POSITIVE)  # must divide the width of every attention level and the last
    dropout: float = checked(0.0, HALF_OPEN)
    norm_groups: int = checked(8, POSITIVE)  # must divide every level's width
    patch_size: int = checked(1, POSITIVE)  # space-to-depth factor before the network (2: a quarter of the positions)
    coord_channels: bool = False  # append (y, x) coordinates to the input (CoordConv): position from captions
    num_classes: int = checked(0, NON_NEGATIVE)  # filled in from the data when data.class_conditional
    # condition (class or caption) dropout to the learned null (for guidance)
    cond_drop_prob: float = checked(0.1, UNIT_INTERVAL)
    text_encoder: str = "none"  # none | scratch (trained jointly) | minilm (frozen, pretrained) | clip (frozen, difflab's)
    clip_run: str | None = None  # text_encoder clip: run folder of `difflab clip train`
    text_max_length: int = checked(16, POSITIVE)  # tokens per caption; longer prompts are truncated with a warning
    text_width: int = checked(128, POSITIVE)  # scratch encoder: width of its transformer
    text_layers: int = checked(2, POSITIVE)  # scratch encoder: transformer layers
    text_heads: int = checked(4, POSITIVE)  # scratch encoder: attention heads (dividing text_width)
    # minilm: which hidden state the context is (-1 = the last layer, 0 = the word embeddings, 1-6 the layers')
    text_layer: int = checked(-1, at_least(-1))
    text_context: str = checked("tokens", one_of("tokens", "pooled"))  # what cross-attention reads (pooled: one token)
    text_normalize: bool = False  # scale each context vector to unit RMS before the UNet reads it
    text_noise: float = checked(0.0, NON_NEGATIVE)  # training only: Gaussian noise on the text vectors, x their RMS
    mlp_width: int = checked(96, POSITIVE)  # hidden width of the residual MLP (data.name mixture2d)
    mlp_blocks: int = checked(2, POSITIVE)  # its residual blocks
    # latent-text-to-image: the KL autoencoder whose latents the denoiser models; null or a bare name = a stage
    # difflab train trains first into RUN/<name> (default autoencoder) from the autoencoder: section, a path = a
    # trained autoencoder run (difflab.tasks.latent_text_to_image)
    autoencoder_run: str | None = None
    # that stage's config is this one with task autoencoder, then these overrides (--set syntax, e.g.
    # "train.max_minutes=8")
    autoencoder_overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise process and what the network predicts."""

    schedule: str = "linear"  # linear (DDPM) | cosine (improved DDPM)
    timesteps: int = checked(1000, at_least(2))  # linear without beta_start / beta_end: more than 20 (beta_T < 1)
    # linear schedule only, both or neither (beta_start <= beta_end); None = DDPM's 1e-4 / 0.02 scaled by
    # 1000/T, which is what every config written before these keys meant
    beta_start: float | None = checked(None, OPEN_UNIT, example=1e-4)
    beta_end: float | None = checked(None, OPEN_UNIT, example=DDPM_BETA_END)
    prediction: str = "eps"  # eps | x0 | v
    weighting: str = "simple"  # simple (Algorithm 1) | min-snr (Hang et al. 2023)
    min_snr_gamma: float = checked(5.0, POSITIVE)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop (see :func:`difflab.train.train`)."""

    batch_size: int = checked(128, at_least(1))  # per process, per accumulation step
    lr: float = checked(1e-3, POSITIVE)
    weight_decay: float = checked(0.0, NON_NEGATIVE)
    adam_beta2: float = checked(0.999, OPEN_UNIT)  # AdamW's second-moment decay (Kingma & Ba's beta_2)
    warmup_steps: int = checked(100, NON_NEGATIVE)
    lr_decay: str = "none"  # none | cosine (to 10% at max_steps or max_minutes, whichever ends first)
    grad_clip: float = checked(1.0, NON_NEGATIVE)  # max gradient norm; 0 = no clipping
    grad_accum: int = checked(1, at_least(1))
    ema_decay: float = checked(0.995, HALF_OPEN)  # horizon ~200 steps: fits a run of a few thousand steps
    mixed_precision: str = "no"  # no | bf16 | fp16
    channels_last: bool = False  # NHWC memory format for the convolutions
    compile: bool = False  # torch.compile (inductor): pays on long runs and GPUs; minutes of compiling on a CPU
    max_steps: int = checked(3000, NON_NEGATIVE)
    max_minutes: float | None = checked(5.0, POSITIVE)  # wall-clock budget of the training loop; None = none
    checkpoint_every: int = checked(500, at_least(1))
    keep_checkpoints: int = checked(2, NON_NEGATIVE)  # newest checkpoints kept (io.save_checkpoint); 0 = keep all
    log_every: int = checked(25, at_least(1))
    log_with: str = "none"  # none | tensorboard (loss, lr, images/s and sample grids under RUN/logs)
    seed: int = 0


@dataclass(frozen=True)
class SampleConfig:
    """Defaults of ``difflab sample`` (each has a command-line flag)."""

    sampler: str = "dpmpp-2m"  # ddpm | ddim | dpmpp-2m | dpmpp-3m | euler | heun
    steps: int = checked(20, at_least(1))
    grid: str | None = None  # None = the sampler's; trailing | trailing-fractional | leading | linspace | karras | ...
    eta: float = checked(0.0, NON_NEGATIVE)  # ddim only
    variance: str = "beta_tilde"  # ddpm only: beta_tilde | beta
    guidance: float = checked(1.0, NON_NEGATIVE)  # classifier-free guidance scale; 1 = plain conditional model
    clip_x0: bool = True  # clamp x0_hat to the data range [-1, 1]
    # Imagen's dynamic thresholding of the guided x0_hat at this percentile of |x0_hat| (e.g. 99.5; replaces
    # clip_x0; difflab.denoisers.dynamic_threshold); None = off
    dynamic_threshold: float | None = checked(None, PERCENTILE, example=99.5)
    batch_size: int = checked(500, at_least(1))


@dataclass(frozen=True)
class ClipConfig:
    """difflab's own CLIP (``task: clip``, see :mod:`difflab.models.clip`)."""

    embed_dim: int = checked(128, POSITIVE)  # joint image-text embedding
    image_width: int = checked(32, POSITIVE)  # channels of the image encoder's first stage
    text_width: int = checked(128, POSITIVE)  # text transformer width
    text_layers: int = checked(2, POSITIVE)
    text_heads: int = checked(4, POSITIVE)  # dividing text_width
    max_length: int = checked(16, POSITIVE)  # tokens per caption
    temperature: float = checked(0.07, POSITIVE)  # initial softmax temperature (learned; Radford et al. 2021)


POWER_OF_TWO = Rule("a power of 2, at least 2", lambda v: v >= 2 and v & (v - 1) == 0)


@dataclass(frozen=True)
class AutoencoderConfig:
    """The KL autoencoder (``task: autoencoder``) and the VAE (``task: vae``): the network of
    :class:`difflab.models.autoencoder.KLAutoencoder`, its loss (:mod:`difflab.tasks.autoencoder`)."""

    latent_channels: int = checked(4, POSITIVE)  # C of the latent z (Stable Diffusion's KL-f8: 4)
    downsample: int = checked(4, POWER_OF_TWO)  # f: the latent is (H/f, W/f); log2(f) halvings
    base_channels: int = checked(32, POSITIVE)  # width of the full-resolution level
    max_channels: int = checked(128, POSITIVE)  # level i is min(base_channels * 2**i, max_channels) wide
    num_res_blocks: int = checked(1, at_least(1))  # per level (the decoder has one more)
    attention: bool = True  # self-attention in the middle, at the latent's resolution (LDM's autoencoders)
    num_heads: int = checked(1, POSITIVE)  # of that attention (dividing the widest level)
    norm_groups: int = checked(8, POSITIVE)  # dividing base_channels and max_channels
    recon_loss: str = checked("l1", one_of("l1", "l2"))  # reconstruction term, per pixel value
    # weight of KL(q(z|x) || N(0, I)), per pixel value like the reconstruction; None = the kind's default
    # (autoencoder: 1e-6, Stable Diffusion's KL-f autoencoders; vae: 0.1, measured in difflab.tasks.vae)
    kl_weight: float | None = checked(None, NON_NEGATIVE, example=1e-6)
    # weight of the squared distance of x and x_hat in the FID feature space (difflab.evaluate.features)
    perceptual_weight: float = checked(0.0, NON_NEGATIVE)
    scale_images: int = checked(1000, at_least(2))  # training images behind the latent scale (1 / std of z)


@dataclass(frozen=True)
class SuperResConfig:
    """A super-resolution stage (``task: super-resolution``, and a cascade's main run; see
    :mod:`difflab.tasks.super_resolution`): the network sees the low-resolution image, upsampled to
    ``data.resolution``, as extra input channels."""

    low_resolution: int = checked(16, POSITIVE)  # side of the low-resolution input; must divide data.resolution
    upsample: str = checked("bicubic", one_of("bicubic", "bilinear"))  # how it is brought to data.resolution
    # noise-conditioning augmentation (Ho et al. 2021, Sec. 4.2; Imagen): the low-resolution input noised by the
    # forward process to a level s ~ U[0, aug_max] in training, s an input of the network; false = always clean
    noise_aug: bool = True
    aug_max: float = checked(0.5, UNIT_INTERVAL)  # largest training level, as a fraction of the schedule (1 = T)
    aug_level: float = checked(0.1, UNIT_INTERVAL)  # the level at sampling (--aug-level); 0 = clean; noise_aug false: 0
    # true: the network's x0 is the residual (x0 - up(x_low)) * residual_scale from the clean low-resolution image
    # upsampled, added back after sampling (Li et al. 2022, SRDiff; Whang et al. 2022): the stage starts at the
    # interpolation's quality; the static clip of x0_hat (sample.clip_x0) is then left to the final image
    residual: bool = False
    # None = 1 / std of the training residuals (unit variance, as the latent scale), computed when training
    # starts and stored in the run's config
    residual_scale: float | None = checked(None, POSITIVE, example=10.0)


@dataclass(frozen=True)
class CascadeConfig:
    """A cascade (``task: cascade``, Imagen's framing; :mod:`difflab.tasks.cascade`): a base text-to-image run at
    ``super_res.low_resolution``, then this run's super-resolution model up to ``data.resolution``."""

    # the base run: a bare name = a stage this config trains first into RUN/<name>; a path = a trained run
    base_run: str = "base"
    # the base stage's config is this one with task text-to-image, data.resolution = super_res.low_resolution,
    # then these overrides (the syntax of --set, e.g. "model.base_channels=32")
    base_overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class PriorConfig:
    """DALL-E 2's framing (Ramesh et al. 2022; ``task: unclip``, :mod:`difflab.tasks.unclip`): a CLIP, a diffusion
    prior from its text embedding to its image embedding (``task: prior``, :mod:`difflab.tasks.prior`), and the
    decoder, an image model reading the image embedding. A run named here is a stage this config trains first
    into RUN/<name> when None or the stage's name (``clip``, ``prior``), else a trained run's folder."""

    clip_run: str | None = None  # the CLIP; None = the stage RUN/clip (clip.* sizes it, the budget below)
    prior_run: str | None = None  # the prior; None = the stage RUN/prior (prior.width ... prior.lr)
    clip_resolution: int | None = checked(None, POSITIVE, example=32)  # CLIP stage's image side; None = data.resolution
    clip_steps: int = checked(300, at_least(1))  # CLIP stage's budget
    clip_minutes: float | None = checked(3.0, POSITIVE)
    width: int = checked(256, POSITIVE)  # the prior's residual MLP: hidden width
    blocks: int = checked(4, POSITIVE)  # ... and its residual blocks
    prediction: str = "x0"  # what the prior predicts: eps | x0 | v (DALL-E 2: x0)
    schedule: str = "cosine"  # the prior's noise schedule (DALL-E 2: cosine)
    cond_drop_prob: float = checked(0.1, UNIT_INTERVAL)  # text embedding dropped to the learned null (guidance)
    train_steps: int = checked(3000, at_least(1))  # prior stage's budget, batch and learning rate
    train_minutes: float | None = checked(3.0, POSITIVE)
    batch_size: int = checked(256, at_least(1))
    lr: float = checked(1e-3, POSITIVE)
    sampler: str = "ddim"  # how `difflab sample` of an unclip run samples the prior
    steps: int = checked(32, at_least(1))
    guidance: float = checked(1.0, NON_NEGATIVE)  # classifier-free guidance of the prior
    decoder_tokens: int = checked(4, POSITIVE)  # decoder: context tokens projected from the image embedding (DALL-E 2: 4)
    decoder_text: bool = False  # decoder: also read the caption (token states of the CLIP text tower)
    text_drop_prob: float = checked(0.5, UNIT_INTERVAL)  # decoder_text: caption dropped alone (DALL-E 2: 50%)
    # the decoder's image side; None = data.resolution. Smaller: an upsampler (task super-resolution) takes its
    # images to data.resolution, as DALL-E 2's decoder (64x64) is followed by two upsamplers
    decoder_resolution: int | None = checked(None, POSITIVE, example=32)
    upsampler_run: str | None = None  # None = the stage RUN/upsampler; else a trained super-resolution run
    # the upsampler stage's config is this one with task super-resolution, super_res.low_resolution =
    # decoder_resolution and no text encoder (DALL-E 2's upsamplers read no caption), then these (--set syntax)
    upsampler_overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class DistillConfig:
    """Where a student of ``difflab distill`` comes from (:mod:`difflab.distill`); unset on trained runs.
    The defaults of ``teacher_solver`` and ``teacher_substeps`` are Algorithm 2's (a 2N-step DDIM teacher),
    which is what configs written before those keys existed mean."""

    teacher: str | None = None  # run folder of the first teacher; None = not a distilled run
    # steps of that teacher's solver; the first student takes teacher_substeps in one
    teacher_steps: int = checked(64, at_least(2))
    teacher_solver: str = "ddim"  # first teacher: ddim | dpmpp-2s | dpmpp-2m (trajectory; later teachers: ddim)
    teacher_substeps: int = checked(2, at_least(1))  # first-teacher steps per first-student step (later rounds: 2)
    steps: int = checked(0, NON_NEGATIVE)  # DDIM steps of this student (= sample.steps); 0 = not distilled
    # classifier-free guidance of the first teacher, built into every student
    guidance: float = checked(1.0, NON_NEGATIVE)


@dataclass(frozen=True)
class Config:
    """A whole run."""

    # the kind of run (difflab.tasks.TASKS): image | text-to-image | toy2d | clip | autoencoder | vae |
    # super-resolution | cascade | vocoder | spoken-words | text; None (or "diffusion",
    # as configs written before kinds had names say) = from data.name and model.text_encoder
    task: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    super_res: SuperResConfig = field(default_factory=SuperResConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    words: WordsConfig = field(default_factory=WordsConfig)
    text: TextConfig = field(default_factory=TextConfig)


# -- dict <-> dataclass with checking -------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                pass
        raise UserError(f"config key {key} must be {' or '.join(_type_name(a) for a in args)}, "
                        f"got {value!r}: fix its value")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, key) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise UserError(f"config key {key} must be {_type_name(tp)}, got {value!r}: fix its value")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys are errors."""
    if not isinstance(data, dict):
        where = f"config section {prefix.rstrip('.')}" if prefix else "a config"
        raise UserError(f"{where} must be a mapping of keys to values, got {type(data).__name__} {data!r:.60}: "
                        "write it as configs/digits.yaml does")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise UserError(f"unknown config key {prefix}{key}: valid keys{' in ' + prefix.rstrip('.') if prefix else ''}"
                            f" are {', '.join(known)}")
        tp = hints[key]
        if is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
            _check_rule(known[key], kwargs[key], value, f"{prefix}{key}")
    cfg = cls(**kwargs)
    if cls is Config:
        check_config(cfg)
    return cfg


def _yaml_value(value: Any) -> str:
    """A value as one shell-safe YAML word for ``--set key=value`` (lists without spaces)."""
    return json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":"))


def _check_rule(f: Any, value: Any, raw: Any, key: str) -> None:
    """Raise a one-line UserError when ``value`` (read as ``raw``) breaks the rule of field ``f``."""
    rule = f.metadata.get(RULE)
    if rule is None or value is None:
        return
    numbers = value if isinstance(value, tuple) else (value,)
    finite = all(math.isfinite(v) for v in numbers if isinstance(v, float))
    if not (finite and rule.test(value)):
        example = f.default if f.default is not None else f.metadata[EXAMPLE]
        finite_text = "" if finite else "finite and "
        raise UserError(f"config key {key} must be {finite_text}{rule.text}, got {raw}: "
                        f"fix it with --set {key}={_yaml_value(example)}")


# -- rules across fields -----------------------------------------------------------------------
def _largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is at most ``at_most`` (1 at least)."""
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def _check_heads(prefix: str, width: int, heads: int) -> None:
    """``{prefix}width`` must split evenly into ``{prefix}heads`` attention heads."""
    if width % heads:
        raise UserError(f"config key {prefix}heads={heads} does not divide {prefix}width={width}: "
                        f"fix it with --set {prefix}heads={_largest_divisor(width, heads)}")


def _check_unet(m: ModelConfig) -> None:
    """The UNet's rules (:class:`difflab.models.unet.UNet`): attention levels that exist, widths
    ``base_channels * channel_mult`` that ``norm_groups`` divides, attention widths ``num_heads`` divides."""
    levels = len(m.channel_mult)
    kept = [lvl for lvl in m.attention_levels if lvl < levels]
    if len(kept) < len(m.attention_levels):
        raise UserError(f"config key model.attention_levels={_yaml_value(m.attention_levels)} names levels that "
                        f"model.channel_mult={_yaml_value(m.channel_mult)} does not have (0..{levels - 1}): "
                        f"fix it with --set model.attention_levels={_yaml_value(kept)}")
    widths = [m.base_channels * mult for mult in m.channel_mult]
    if any(w % m.norm_groups for w in widths):
        base = math.ceil(m.base_channels / m.norm_groups) * m.norm_groups
        groups = _largest_divisor(math.gcd(*widths), m.norm_groups)
        raise UserError(f"config key model.norm_groups={m.norm_groups} does not divide the level widths {widths} "
                        f"(model.base_channels x model.channel_mult): fix it with --set model.norm_groups={groups} "
                        f"or --set model.base_channels={base}")
    attended = sorted({widths[lvl] for lvl in m.attention_levels} | {widths[-1]})  # the middle block attends too
    common = math.gcd(*attended)
    if common % m.num_heads:
        raise UserError(f"config key model.num_heads={m.num_heads} does not divide the attention widths {attended} "
                        f"(model.attention_levels and the middle block): "
                        f"fix it with --set model.num_heads={_largest_divisor(common, m.num_heads)}")


def default_linear_range(timesteps: int) -> tuple[float, float]:
    """(beta_1, beta_T) of the linear schedule without ``diffusion.beta_start`` / ``beta_end``: DDPM's scaled by
    1000 / T (Nichol & Dhariwal 2021, Sec. 3.2), as :func:`difflab.schedules.make_schedule` builds it."""
    scale = DDPM_TIMESTEPS / timesteps
    return DDPM_BETA_START * scale, DDPM_BETA_END * scale


def default_beta_end(timesteps: int) -> float:
    """beta_T of :func:`default_linear_range`."""
    return default_linear_range(timesteps)[1]


def _check_betas(d: DiffusionConfig) -> None:
    """The linear schedule's range: both ends or neither, beta_start <= beta_end, and a resolved beta_T < 1
    (DDPM's range scaled to T <= 20 reaches beta_T >= 1: alpha_bar_T = 0, a degenerate schedule)."""
    start, end = _field(DiffusionConfig, "beta_start"), _field(DiffusionConfig, "beta_end")
    example = f"--set diffusion.beta_start={start.metadata[EXAMPLE]} diffusion.beta_end={end.metadata[EXAMPLE]}"
    if (d.beta_start is None) != (d.beta_end is None):
        raise UserError(f"config keys diffusion.beta_start ({_yaml_value(d.beta_start)}) and diffusion.beta_end "
                        f"({_yaml_value(d.beta_end)}) go together: set both ({example}) or neither "
                        f"(DDPM's range scaled to diffusion.timesteps)")
    if d.beta_start is not None and d.beta_start > d.beta_end:
        raise UserError(f"config key diffusion.beta_start={d.beta_start} is above diffusion.beta_end={d.beta_end}: "
                        f"fix it with {example}")
    if d.schedule == "linear" and d.beta_end is None and default_beta_end(d.timesteps) >= 1:
        raise UserError(f"config key diffusion.timesteps={d.timesteps} makes the linear schedule's last beta "
                        f"{default_beta_end(d.timesteps):g} >= 1 (DDPM's range scaled by 1000/T), a degenerate "
                        f"alpha_bar_T = 0: fix it with --set diffusion.timesteps={DiffusionConfig.timesteps}, "
                        f"or give the range: {example}")


def _field(cls: type, name: str) -> Any:
    """The dataclass field ``name`` of ``cls``."""
    return next(f for f in fields(cls) if f.name == name)


def check_config(cfg: Config) -> None:
    """Rules that tie fields together; :func:`from_dict` runs it on every whole config it reads.

    Raises:
        UserError: one line naming the keys and a fix.
    """
    _check_unet(cfg.model)
    _check_heads("model.text_", cfg.model.text_width, cfg.model.text_heads)
    _check_heads("clip.text_", cfg.clip.text_width, cfg.clip.text_heads)
    _check_heads("text.", cfg.text.width, cfg.text.heads)
    _check_betas(cfg.diffusion)
    _check_autoencoder(cfg.autoencoder)


def _check_autoencoder(a: AutoencoderConfig) -> None:
    """The autoencoder's widths (min(base_channels * 2**i, max_channels)) split into ``norm_groups`` groups, and
    its widest level into ``num_heads`` heads."""
    if a.base_channels % a.norm_groups or a.max_channels % a.norm_groups:
        groups = _largest_divisor(math.gcd(a.base_channels, a.max_channels), a.norm_groups)
        raise UserError(f"config key autoencoder.norm_groups={a.norm_groups} does not divide autoencoder.base_channels="
                        f"{a.base_channels} and autoencoder.max_channels={a.max_channels}: fix it with "
                        f"--set autoencoder.norm_groups={groups}")
    levels = a.downsample.bit_length() - 1  # log2(f) halvings
    widest = min(a.base_channels * 2 ** levels, a.max_channels)
    if widest % a.num_heads:
        raise UserError(f"config key autoencoder.num_heads={a.num_heads} does not divide the widest level's "
                        f"{widest} channels: fix it with --set autoencoder.num_heads={_largest_divisor(widest, a.num_heads)}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists), ready for YAML."""
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``a.b=value`` strings (values parsed as YAML) to a config."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form key=value: write e.g. --set train.lr=1e-3")
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise UserError(f"unknown config key {key}: see configs/*.yaml for the valid keys")
            node = node[part]
        if leaf not in node:
            raise UserError(f"unknown config key {key}: valid keys are {', '.join(node)}")
        node[leaf] = yaml.safe_load(raw)
    return from_dict(Config, data)


def apply_stage_overrides(cfg: Config, overrides: Sequence[str], key: str) -> Config:
    """:func:`apply_overrides` of the overrides a config holds for one of its stages (e.g.
    ``cascade.base_overrides``), an error naming ``key``."""
    try:
        return apply_overrides(cfg, list(overrides))
    except UserError as e:
        raise UserError(f"{key}: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the built-in default when ``path`` is None) and apply overrides."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        text = read_text(p, "config file", "pass a YAML file such as configs/digits.yaml")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {p} is not valid YAML ({str(e).splitlines()[0]}): fix the file") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {p} holds a {type(data).__name__}, not a mapping of sections (data:, model:, "
                            "train:, ...): write it as configs/digits.yaml does")
        cfg = from_dict(Config, data)
    return apply_overrides(cfg, overrides or [])


def dump_config(cfg: Config) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
