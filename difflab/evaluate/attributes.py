"""difflab's attribute classifier for captioned shapes: does a generated image obey its prompt?

:class:`AttributeNet` reads the four attributes of :mod:`difflab.data.shapes` (size, color,
shape, position) off an image with one classification head each. It is trained on difflab's own
renders, from seeds disjoint from the dataset's train/test splits (``POOL_SEED_OFFSET``), and is
checked on another set of fresh renders (``CHECK_SEED``); it is ~100% accurate on renders, so
on generated images its accuracy measures the generator, not the judge.

It shares :class:`~difflab.evaluate.features.FeatureNet`'s convolution stages, input preparation and
training loop (:mod:`difflab.evaluate.classifier`) and its safetensors + JSON sidecar saving. Unlike
FeatureNet it pools to a coarse ``POOL_GRID`` x ``POOL_GRID`` grid instead of globally, so position survives.
Weights live in ``cache_dir("attributes")/shapes-{R}x{R}.safetensors``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.data.shapes import ATTRIBUTES, DEFAULT_RESOLUTION, random_attributes, render_shapes
from difflab import files
from difflab.errors import UserError
from difflab.evaluate.classifier import (EVAL_BATCH, TRAIN_BATCH, conv_stages, eval_batches, fit_classifier,
                                         prepare_images)
from difflab.evaluate.features import save_feature_extractor
from difflab.paths import cache_dir

ATTRIBUTES_DIR = "attributes"
HEAD_SIZES = tuple(len(v) for v in ATTRIBUTES.values())  # (2, 8, 4, 5): size, color, shape, position

DEFAULT_WIDTH = 16  # channels of the first stage; doubled at each downsampling
DEFAULT_HIDDEN = 128  # width of the shared layer before the heads
NUM_DOWNSAMPLES = 2  # 32x32 -> 8x8
POOL_GRID = 4  # average-pooled to 4x4 cells: coarse enough for any resolution, fine enough for position
MAX_NET_RESOLUTION = 32  # larger renders are downsampled to this before the network (cheap at 64x64)

DEFAULT_STEPS = 150  # 19 s on 2 idle CPU cores at 32x32, 1.0 accuracy on fresh renders (measured; 120 suffice)
NOISE_STD = 0.05  # Gaussian noise added to training inputs (in [-1, 1] units), for imperfect generated images
POOL_SIZE = 16_384  # renders the classifier trains on
CHECK_SIZE = 2_000  # fresh renders its accuracy is measured on
POOL_SEED_OFFSET = 1_000  # training renders use seed POOL_SEED_OFFSET + seed (the dataset uses 0 and 1)
CHECK_SEED = 999  # the accuracy check's renders


@dataclass(frozen=True)
class AttributeConfig:
    """Everything needed to rebuild an :class:`AttributeNet`, saved as the weights' JSON sidecar."""

    resolution: tuple[int, int]  # (H, W) the network sees; inputs are resized to it
    in_channels: int = 3
    width: int = DEFAULT_WIDTH
    hidden: int = DEFAULT_HIDDEN
    steps: int = 0  # training steps
    seed: int = 0
    accuracy: dict[str, float] | None = None  # on CHECK_SIZE fresh renders, after training


class AttributeNet(nn.Module):
    """A small CNN with one classification head per shapes attribute.

    conv stem -> ``NUM_DOWNSAMPLES`` stages (stride-2 conv doubling the channels, 3x3 conv) ->
    average pooling to ``POOL_GRID`` x ``POOL_GRID`` -> linear + SiLU -> logits of all heads.
    Inputs are RGB images in [-1, 1] at ``resolution``.
    """

    def __init__(self, *, resolution: tuple[int, int], in_channels: int = 3, width: int = DEFAULT_WIDTH,
                 hidden: int = DEFAULT_HIDDEN) -> None:
        super().__init__()
        self.config = AttributeConfig(resolution=tuple(resolution), in_channels=in_channels, width=width,
                                      hidden=hidden)
        self.body, c = conv_stages(in_channels, width, NUM_DOWNSAMPLES)
        self.embed = nn.Sequential(nn.Linear(c * POOL_GRID**2, hidden), nn.SiLU())
        self.head = nn.Linear(hidden, sum(HEAD_SIZES))

    @property
    def resolution(self) -> tuple[int, int]:
        """(H, W) of the images the network expects."""
        return self.config.resolution

    def forward(self, x: Tensor) -> list[Tensor]:
        """Logits per attribute, ``[(B, 2), (B, 8), (B, 4), (B, 5)]``, of images x (B, 3, H, W) in [-1, 1]."""
        h = F.adaptive_avg_pool2d(self.body(x), POOL_GRID)  # (B, C', G, G)
        logits = self.head(self.embed(h.flatten(1)))  # (B, sum of head sizes)
        return list(logits.split(HEAD_SIZES, dim=1))


def _nchw(images_uint8: Tensor | np.ndarray) -> Tensor:
    """uint8 (N, H, W, 3) or (N, 3, H, W) -> tensor (N, 3, H, W)."""
    x = torch.as_tensor(images_uint8)
    if x.ndim != 4 or x.dtype != torch.uint8 or 3 not in (x.shape[1], x.shape[-1]):
        raise UserError(f"the attribute classifier needs uint8 RGB images (N, H, W, 3) or (N, 3, H, W), got "
                        f"{x.dtype} {tuple(x.shape)}: pass RGB samples of a shapes run")
    return x if x.shape[1] == 3 else x.permute(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)


def predict_attributes(net: AttributeNet, images_uint8: Tensor | np.ndarray,
                       batch_size: int = EVAL_BATCH) -> np.ndarray:
    """int64 (N, 4) predicted (size, color, shape, position) of uint8 images (N, H, W, 3) or (N, 3, H, W)."""
    def predict(x: Tensor) -> Tensor:  # (b, 4)
        return torch.stack([z.argmax(dim=1) for z in net(x)], dim=1).cpu()

    out = eval_batches(net, _nchw(images_uint8), predict, batch_size=batch_size)
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros((0, len(HEAD_SIZES)), dtype=np.int64)


def attribute_accuracy(images_uint8: Tensor | np.ndarray, attrs: np.ndarray,
                       net: AttributeNet | None = None) -> dict[str, float]:
    """Fraction of images whose predicted attributes equal ``attrs`` (N, 4).

    Args:
        images_uint8: uint8 (N, H, W, 3) or (N, 3, H, W).
        attrs: the intended (size, color, shape, position) indices, (N, 4).
        net: the classifier; None = :func:`get_attribute_classifier` at the images' resolution.

    Returns:
        {"size", "color", "shape", "position", "all"}: per-attribute accuracy, and all four right.
    """
    images = _nchw(images_uint8)
    net = net if net is not None else get_attribute_classifier(int(images.shape[-1]))
    correct = predict_attributes(net, images) == np.asarray(attrs, dtype=np.int64)  # (N, 4)
    result = {name: float(correct[:, k].mean()) for k, name in enumerate(ATTRIBUTES)}
    return {**result, "all": float(correct.all(axis=1).mean())}


# -- training ------------------------------------------------------------------------------------
def _renders(n: int, resolution: int, seed: int) -> tuple[Tensor, Tensor]:
    """(uint8 images (n, 3, R, R), int64 attributes (n, 4)) rendered from ``seed``."""
    attrs = random_attributes(n, seed)
    images = torch.from_numpy(render_shapes(attrs, resolution, seed=seed)).permute(0, 3, 1, 2)  # (n, 3, R, R)
    return images.contiguous(), torch.from_numpy(attrs)


def _batches(net: AttributeNet, images: Tensor, attrs: Tensor,
             generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """(renders in [-1, 1] plus NOISE_STD Gaussian noise, attributes (B, 4)) batches of TRAIN_BATCH
    drawn with replacement."""
    while True:
        idx = torch.randint(len(images), (TRAIN_BATCH,), generator=generator)
        x = prepare_images(net, images[idx])  # (B, 3, H, W)
        yield x + NOISE_STD * torch.randn(x.shape, generator=generator).to(x.device), attrs[idx].to(x.device)


def _heads_loss(logits: list[Tensor], attrs: Tensor) -> Tensor:
    """The sum over heads of the cross-entropy of each attribute (all heads trained jointly)."""
    return sum(F.cross_entropy(z, attrs[:, k]) for k, z in enumerate(logits))


def default_weights_path(resolution: int) -> Path:
    """The cached classifier: ``cache_dir("attributes")/shapes-{R}x{R}.safetensors``."""
    return cache_dir(ATTRIBUTES_DIR) / f"shapes-{resolution}x{resolution}.safetensors"


def train_attribute_classifier(resolution: int = DEFAULT_RESOLUTION, *, steps: int = DEFAULT_STEPS, seed: int = 0,
                               out: str | Path | None = None, device: str | torch.device | None = None,
                               progress: bool = True) -> Path:
    """Train the attribute classifier on fresh renders and save it (safetensors + JSON sidecar).

    Args:
        resolution: side of the renders it learns from; the network sees them downsampled to at
            most MAX_NET_RESOLUTION (images of any side are resized to the network's).
        steps: optimizer steps of TRAIN_BATCH renders (the default: under a minute on 2 CPU cores).
        seed: initialisation, batch order, and which renders it trains on.
        out: weights file; None = :func:`default_weights_path`.
        device: where to train; None = CUDA when available, else CPU.
        progress: show a tqdm bar.

    Returns:
        The path of the written ``.safetensors`` file; its sidecar records the accuracy per
        attribute on ``CHECK_SIZE`` fresh renders.
    """
    if steps < 1:
        raise UserError(f"attribute-classifier steps must be positive, got {steps}: pass 1 or more")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    side = min(resolution, MAX_NET_RESOLUTION)
    net = AttributeNet(resolution=(side, side)).to(device)
    images, attrs = _renders(POOL_SIZE, resolution, POOL_SEED_OFFSET + seed)
    batches = _batches(net, images, attrs, torch.Generator().manual_seed(seed))
    fit_classifier(net, batches, _heads_loss, steps, desc="attribute classifier", progress=progress)
    check_images, check_attrs = _renders(CHECK_SIZE, resolution, CHECK_SEED)
    acc = attribute_accuracy(check_images, check_attrs.numpy(), net=net)
    config = dataclasses.replace(net.config, steps=steps, seed=seed, accuracy=acc)
    out = Path(out) if out is not None else default_weights_path(resolution)
    return save_feature_extractor(net, out, config)


# -- saving and loading --------------------------------------------------------------------------
def load_attribute_classifier(path: str | Path, device: str | torch.device = "cpu") -> AttributeNet:
    """Load a classifier from ``.safetensors`` + its ``.json`` sidecar (no pickles), in eval mode."""
    path = Path(path)
    fix = "train one with difflab.evaluate.attributes.train_attribute_classifier"
    files.require_file(path, "attribute classifier", fix)
    config = files.read_sidecar(AttributeConfig, path, "attribute-classifier", fix)
    net = AttributeNet(resolution=config.resolution, in_channels=config.in_channels, width=config.width,
                       hidden=config.hidden)
    files.load_weights_into(net, path, "attribute classifier", fix)
    net.config = config
    return net.to(device).eval()


def get_attribute_classifier(resolution: int = DEFAULT_RESOLUTION,
                             device: str | torch.device = "cpu") -> AttributeNet:
    """The cached classifier for ``resolution``, trained once (printing one line) when missing."""
    path = default_weights_path(resolution)
    if not (path.is_file() and files.sidecar(path).is_file()):
        print(f"no shapes attribute classifier at {resolution}x{resolution} yet: training one once "
              f"(cached in {path})")
        train_attribute_classifier(resolution, out=path, progress=False)
    return load_attribute_classifier(path, device)
