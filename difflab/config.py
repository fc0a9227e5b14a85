"""Typed run configuration: frozen dataclasses, YAML files, ``--set a.b=v`` overrides.

Unknown keys and values of the wrong type are errors (one line, naming the key and the
fix); there are no aliases. The resolved config is saved as ``config.yaml`` beside every
run's checkpoints, and is all that ``difflab sample`` needs to rebuild the model.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from difflab.errors import UserError


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on (see :func:`difflab.data.load_dataset`)."""

    name: str = "digits"  # digits | mnist | fashion-mnist | image-folder | shapes (captioned) | mixture2d (2-D points)
    path: str | None = None  # folder of the files; None = the dataset's default place
    resolution: int | None = None  # square side in pixels; None = the dataset's native size
    channels: int | None = None  # None = native (1 for the MNIST family, 3 for folders)
    random_flip: bool = False  # horizontal flips while training (off for digits and clothes)
    class_conditional: bool = True  # condition on labels when the dataset has them
    size: int | None = None  # shapes: images in the generated training set; None = its default
    holdout: tuple[str, ...] = ()  # shapes: attribute combinations kept out of training, e.g. "red triangle"


@dataclass(frozen=True)
class ModelConfig:
    """The UNet denoiser (see :class:`difflab.models.unet.UNet`); ``mlp_*`` for 2-D data (:mod:`difflab.models.mlp`)."""

    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1,)
    num_heads: int = 4
    dropout: float = 0.0
    norm_groups: int = 8
    patch_size: int = 1  # space-to-depth factor before the network (2: a quarter of the positions)
    coord_channels: bool = False  # append (y, x) coordinates to the input (CoordConv): position from captions
    num_classes: int = 0  # filled in from the data when data.class_conditional
    cond_drop_prob: float = 0.1  # condition (class or caption) dropout to the learned null (for guidance)
    text_encoder: str = "none"  # none | scratch (trained jointly) | minilm (frozen, pretrained) | clip (frozen, difflab's)
    clip_run: str | None = None  # text_encoder clip: run folder of `difflab clip train`
    text_max_length: int = 16  # tokens per caption; longer prompts are truncated with a warning
    text_width: int = 128  # scratch encoder: width of its transformer
    text_layers: int = 2  # scratch encoder: transformer layers
    text_heads: int = 4  # scratch encoder: attention heads
    mlp_width: int = 96  # hidden width of the residual MLP (data.name mixture2d)
    mlp_blocks: int = 2  # its residual blocks


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise process and what the network predicts."""

    schedule: str = "linear"  # linear (DDPM) | cosine (improved DDPM)
    timesteps: int = 1000
    beta_start: float | None = None  # linear schedule only; None = DDPM's 1e-4 / 0.02 scaled by 1000/T,
    beta_end: float | None = None  # which is what every config written before these keys meant
    prediction: str = "eps"  # eps | x0 | v
    weighting: str = "simple"  # simple (Algorithm 1) | min-snr (Hang et al. 2023)
    min_snr_gamma: float = 5.0


@dataclass(frozen=True)
class TrainConfig:
    """The training loop (see :func:`difflab.train.train`)."""

    batch_size: int = 128  # per process, per accumulation step
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_decay: str = "none"  # none | cosine (to 10% at max_steps or max_minutes, whichever ends first)
    grad_clip: float = 1.0
    grad_accum: int = 1
    ema_decay: float = 0.995  # horizon ~200 steps: fits a run of a few thousand steps
    mixed_precision: str = "no"  # no | bf16 | fp16
    channels_last: bool = False  # NHWC memory format for the convolutions
    compile: bool = False  # torch.compile (inductor): pays on long runs and GPUs; minutes of compiling on a CPU
    max_steps: int = 3000
    max_minutes: float | None = 5.0  # wall-clock budget of the training loop
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 25
    log_with: str = "none"  # none | tensorboard (loss, lr, images/s and sample grids under RUN/logs)
    seed: int = 0


@dataclass(frozen=True)
class SampleConfig:
    """Defaults of ``difflab sample`` (each has a command-line flag)."""

    sampler: str = "dpmpp-2m"  # ddpm | ddim | dpmpp-2m | dpmpp-3m | euler | heun
    steps: int = 20
    grid: str | None = None  # None = the sampler's; trailing | trailing-fractional | leading | linspace | karras | ...
    eta: float = 0.0  # ddim only
    variance: str = "beta_tilde"  # ddpm only: beta_tilde | beta
    guidance: float = 1.0  # classifier-free guidance scale; 1 = plain conditional model
    clip_x0: bool = True  # clamp x0_hat to the data range [-1, 1]
    batch_size: int = 500


@dataclass(frozen=True)
class ClipConfig:
    """difflab's own CLIP (``task: clip``, see :mod:`difflab.models.clip`)."""

    embed_dim: int = 128  # joint image-text embedding
    image_width: int = 32  # channels of the image encoder's first stage
    text_width: int = 128  # text transformer width
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 16  # tokens per caption
    temperature: float = 0.07  # initial softmax temperature (learned; Radford et al. 2021)


@dataclass(frozen=True)
class DistillConfig:
    """Where a student of ``difflab distill`` comes from (:mod:`difflab.distill`); unset on trained runs.
    The defaults of ``teacher_solver`` and ``teacher_substeps`` are Algorithm 2's (a 2N-step DDIM teacher),
    which is what configs written before those keys existed mean."""

    teacher: str | None = None  # run folder of the first teacher; None = not a distilled run
    teacher_steps: int = 64  # steps of that teacher's solver; the first student takes teacher_substeps in one
    teacher_solver: str = "ddim"  # first teacher: ddim | dpmpp-2s | dpmpp-2m (trajectory; later teachers: ddim)
    teacher_substeps: int = 2  # first-teacher steps per first-student step (later rounds: 2)
    steps: int = 0  # DDIM steps of this student (= sample.steps)
    guidance: float = 1.0  # classifier-free guidance of the first teacher, built into every student


@dataclass(frozen=True)
class Config:
    """A whole run."""

    # the kind of run (difflab.tasks.TASKS): image | text-to-image | toy2d | clip; None (or "diffusion",
    # as configs written before kinds had names say) = from data.name and model.text_encoder
    task: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


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
        raise UserError(f"config section {prefix.rstrip('.') or '<top>'} must be a mapping, got {data!r}")
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
    return cls(**kwargs)


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the built-in default when ``path`` is None) and apply overrides."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} not found: pass a YAML file such as configs/digits.yaml")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {p} is not valid YAML ({str(e).splitlines()[0]}): fix the file") from None
        cfg = from_dict(Config, data)
    return apply_overrides(cfg, overrides or [])


def dump_config(cfg: Config) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
