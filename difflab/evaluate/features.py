"""difflab's own feature extractors for FID: a small CNN classifier trained per dataset.

FID (Heusel et al. 2017, https://arxiv.org/abs/1706.08500) compares Gaussian fits of image
features. The usual features come from an ImageNet Inception network, whose weights are not
available offline and which knows nothing of 8x8 digits. difflab instead trains
:class:`FeatureNet`, a classifier of the dataset's own classes, and uses its penultimate layer.
FIDs are therefore comparable only between runs measured with the same extractor (the FID
statistics cache is keyed by a hash of its weights), never with published Inception FIDs.

The network's stages, input preparation and training loop are :mod:`difflab.evaluate.classifier`'s
(shared with the shapes attribute classifier). Weights are safetensors with a JSON sidecar (the
:class:`FeatureConfig`), by default in ``cache_dir("features")/{data}-{H}x{W}-c{C}.safetensors``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from difflab.data import load_dataset
from difflab.data.images import ImageDataset
from difflab import files
from difflab.errors import UserError
from difflab.evaluate.classifier import (EVAL_BATCH, TRAIN_BATCH, conv_stages, eval_batches, fit_classifier,
                                         prepare_images)
from difflab.paths import atomic_path, atomic_write_bytes, cache_dir

FEATURES_DIR = "features"

DEFAULT_WIDTH = 16  # channels of the first stage; doubled at each downsampling
DEFAULT_FEATURE_DIM = 128  # size of the penultimate layer (the FID features)
NUM_DOWNSAMPLES = 2  # 8x8 -> 2x2, 28x28 -> 7x7, 32x32 -> 8x8 before global pooling

DEFAULT_EPOCHS = 3  # the default budget: this many passes over the train split ...
MIN_STEPS = 300  # ... but at least this many steps (small datasets such as digits: seconds)
MAX_STEPS = 800  # ... and at most this many (1-2 minutes for fashion-mnist on 2 CPU cores)
SHIFT_FRACTION = 1 / 8  # augmentation (off by default): random shift by up to this fraction of the side
HOLDOUT_FRACTION = 0.1  # held out for the accuracy when a dataset has no test split
HOLDOUT_SEED = 0  # which images are held out then


@dataclass(frozen=True)
class FeatureConfig:
    """Everything needed to rebuild a :class:`FeatureNet`, saved as the weights' JSON sidecar."""

    in_channels: int
    num_classes: int
    resolution: tuple[int, int]  # (H, W) the network sees; inputs are resized to it
    width: int = DEFAULT_WIDTH
    feature_dim: int = DEFAULT_FEATURE_DIM
    dataset: str = ""  # what it was trained on (informational)
    test_accuracy: float | None = None  # on the held-out split, after training
    steps: int = 0  # training steps
    augment: bool = False  # trained with random shifts


class FeatureNet(nn.Module):
    """A small CNN classifier whose penultimate layer provides FID features.

    conv stem -> ``NUM_DOWNSAMPLES`` stages (a stride-2 conv that doubles the channels, then a
    3x3 conv) -> global average pooling -> linear + SiLU (the features) -> linear (the logits).
    Global pooling makes it work at any resolution (8x8, 28x28, 32x32, ...); inputs are images
    in [-1, 1] at ``resolution``. Downsampling right after the stem keeps it cheap on a CPU.
    """

    def __init__(self, *, in_channels: int, num_classes: int, resolution: tuple[int, int],
                 width: int = DEFAULT_WIDTH, feature_dim: int = DEFAULT_FEATURE_DIM) -> None:
        super().__init__()
        self.config = FeatureConfig(in_channels=in_channels, num_classes=num_classes, width=width,
                                    feature_dim=feature_dim, resolution=tuple(resolution))
        self.body, c = conv_stages(in_channels, width, NUM_DOWNSAMPLES)
        self.embed = nn.Sequential(nn.Linear(c, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def resolution(self) -> tuple[int, int]:
        """(H, W) of the images the network expects."""
        return self.config.resolution

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features (B, feature_dim) of images x (B, C, H, W) in [-1, 1]."""
        h = self.body(x)  # (B, C', H', W')
        return self.embed(h.mean(dim=(2, 3)))  # (B, D)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, num_classes) of images x (B, C, H, W) in [-1, 1]."""
        return self.head(self.features(x))


def weights_fingerprint(net: nn.Module) -> str:
    """A hex digest of a network's weights (names, shapes, values), for cache keys."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def default_weights_path(data: str, resolution: tuple[int, int], channels: int) -> Path:
    """The cached extractor of a dataset: ``cache_dir("features")/{data}-{H}x{W}-c{C}.safetensors``."""
    H, W = resolution
    return cache_dir(FEATURES_DIR) / f"{data}-{H}x{W}-c{channels}.safetensors"


# -- features ------------------------------------------------------------------------------------
def extract_features(net: FeatureNet, images_uint8: Tensor | np.ndarray, *, batch_size: int = EVAL_BATCH,
                     progress: bool = True) -> np.ndarray:
    """Features of images under ``net``, in eval mode without gradients.

    Args:
        net: a feature extractor (on any device; the images follow it).
        images_uint8: uint8 (N, C, H, W); resized (as the data layer resizes) to ``net.resolution``
            when they differ.
        batch_size: images per forward pass.
        progress: show a tqdm bar.

    Returns:
        float64 (N, feature_dim).
    """
    images = torch.as_tensor(images_uint8)
    if images.ndim != 4 or images.shape[1] != net.config.in_channels:
        raise ValueError(f"expected uint8 images (N, {net.config.in_channels}, H, W), got {tuple(images.shape)}")
    out = eval_batches(net, images, lambda x: net.features(x).double().cpu(), batch_size=batch_size,
                       progress=progress, desc="features")  # [(b, D)]
    return torch.cat(out).numpy() if out else np.zeros((0, net.config.feature_dim))


def accuracy(net: FeatureNet, images: Tensor, labels: Tensor, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy of ``net`` on uint8 images (N, C, H, W) with labels (N,)."""
    preds = eval_batches(net, images, lambda x: net(x).argmax(dim=1).cpu(), batch_size=batch_size)  # [(b,)]
    correct = sum(int((pred == labels[i * batch_size:(i + 1) * batch_size]).sum()) for i, pred in enumerate(preds))
    return correct / max(len(images), 1)


# -- training ------------------------------------------------------------------------------------
def _random_shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Shift each image of x (B, C, H, W) by up to SHIFT_FRACTION of its side (pad + random crop)."""
    B, _, H, W = x.shape
    s = max(1, round(SHIFT_FRACTION * min(H, W)))
    padded = F.pad(x, (s, s, s, s), mode="replicate")  # (B, C, H + 2s, W + 2s)
    oy, ox = (torch.randint(0, 2 * s + 1, (B,), generator=generator).to(x.device) for _ in range(2))
    rows = (oy[:, None] + torch.arange(H, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(B, device=x.device)[:, None, None]  # (B, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def default_steps(num_train: int) -> int:
    """The default budget: DEFAULT_EPOCHS passes, clipped to [MIN_STEPS, MAX_STEPS]."""
    return int(np.clip(math.ceil(DEFAULT_EPOCHS * num_train / TRAIN_BATCH), MIN_STEPS, MAX_STEPS))


def _labelled_splits(data: str, data_path: str | None, resolution: int | None,
                     channels: int | None) -> tuple[ImageDataset, Tensor, Tensor, Tensor, Tensor]:
    """(train dataset, train images, train labels, test images, test labels) of a labelled dataset."""
    train = load_dataset(data, path=data_path, resolution=resolution, channels=channels, split="train")
    if train.labels is None:
        raise UserError(f"dataset {data} has no class labels: train the feature extractor on a labelled "
                        f"dataset or pass --features WEIGHTS")
    images, labels = torch.as_tensor(train.images), torch.as_tensor(train.labels)
    test = load_dataset(data, path=data_path, resolution=resolution, channels=channels, split="test")
    # A dataset without a held-out part (image-folder) returns its train images as "test".
    if test.labels is not None and not np.array_equal(np.asarray(test.images), np.asarray(train.images)):
        return train, images, labels, torch.as_tensor(test.images), torch.as_tensor(test.labels)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    n_test = max(1, round(HOLDOUT_FRACTION * len(images)))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return train, images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def _batches(net: FeatureNet, images: Tensor, labels: Tensor, generator: torch.Generator,
             augment: bool) -> Iterator[tuple[Tensor, Tensor]]:
    """(images in [-1, 1], labels) batches of TRAIN_BATCH, in epochs of a fresh random order, each
    image optionally shifted (:func:`_random_shift`)."""
    order, pos = torch.randperm(len(images), generator=generator), 0
    while True:
        if pos + TRAIN_BATCH > len(order):
            order, pos = torch.randperm(len(images), generator=generator), 0
        idx = order[pos:pos + TRAIN_BATCH]
        pos += TRAIN_BATCH
        x = prepare_images(net, images[idx])  # (B, C, H, W)
        yield (_random_shift(x, generator) if augment else x), labels[idx].to(x.device)


def train_feature_extractor(data: str, *, data_path: str | None = None, resolution: int | None = None,
                            channels: int | None = None, steps: int | None = None, seed: int = 0,
                            augment: bool = False, out: str | Path | None = None,
                            device: str | torch.device | None = None, progress: bool = True) -> Path:
    """Train the FID feature extractor of a dataset as a classifier of its labels.

    Args:
        data: dataset name (see :func:`difflab.data.load_dataset`); it must have labels.
        data_path, resolution, channels: passed to ``load_dataset`` (None = the defaults / native).
        steps: optimizer steps of TRAIN_BATCH images; None = :func:`default_steps` (3 epochs,
            at least 300 and at most 800 steps: ~5 s for digits, ~70 s for fashion-mnist on 2 cores).
        seed: initialisation, batch order and augmentation.
        augment: random shifts (pad + crop). Off by default: within the default budget they cost
            accuracy (fashion-mnist 0.84 with vs 0.87 without at 800 steps; digits 0.986 vs 0.997).
        out: weights file; None = :func:`default_weights_path`. The JSON sidecar goes beside it.
        device: where to train; None = CUDA when available, else CPU.
        progress: show a tqdm bar.

    Returns:
        The path of the written ``.safetensors`` file.
    """
    train, images, labels, test_images, test_labels = _labelled_splits(data, data_path, resolution, channels)
    steps = default_steps(len(images)) if steps is None else steps
    if steps < 1:
        raise UserError(f"feature-extractor steps must be positive, got {steps}: pass --steps 1 or more")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    net = FeatureNet(in_channels=train.channels, num_classes=train.num_classes,
                     resolution=tuple(train.resolution)).to(device)
    batches = _batches(net, images, labels, torch.Generator().manual_seed(seed), augment)
    fit_classifier(net, batches, F.cross_entropy, steps, desc="feature extractor", progress=progress)
    acc = accuracy(net, test_images, test_labels)
    print(f"feature extractor for {data}: test accuracy {acc:.4f} after {steps} steps")
    config = dataclasses.replace(net.config, dataset=data, test_accuracy=acc, steps=steps, augment=augment)
    out = Path(out) if out is not None else default_weights_path(data, net.resolution, net.config.in_channels)
    save_feature_extractor(net, out, config)
    return out


# -- saving and loading --------------------------------------------------------------------------
def save_feature_extractor(net: FeatureNet, path: str | Path, config: FeatureConfig | None = None) -> Path:
    """Write ``net``'s weights (safetensors) and its config (JSON sidecar), each atomically."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    text = json.dumps(dataclasses.asdict(config or net.config), indent=2) + "\n"
    atomic_write_bytes(files.sidecar(path), text.encode())
    return path


def load_feature_extractor(path: str | Path, device: str | torch.device = "cpu") -> FeatureNet:
    """Load a feature extractor from ``.safetensors`` + its ``.json`` sidecar (no pickles)."""
    path = Path(path)
    fix = "write one with `difflab features train --data NAME` (it keeps the .json beside the .safetensors)"
    if path.suffix != ".safetensors":
        raise UserError(f"feature-extractor weights {path} are not a .safetensors file: {fix}")
    files.require_file(path, "feature-extractor weights", fix)
    config = files.read_sidecar(FeatureConfig, path, "feature-extractor", fix)
    arch = {k: getattr(config, k) for k in ("in_channels", "num_classes", "width", "feature_dim", "resolution")}
    net = FeatureNet(**arch)
    files.load_weights_into(net, path, "feature-extractor weights", fix)
    net.config = config
    return net.to(device).eval()


def get_feature_extractor(data: str, *, data_path: str | None = None, resolution: int | None = None,
                          channels: int | None = None, weights: str | Path | None = None,
                          train_if_missing: bool = True, device: str | torch.device = "cpu") -> FeatureNet:
    """The feature extractor for a dataset: ``weights`` if given, else the cached one, else a new one.

    Args:
        data, data_path, resolution, channels: the dataset, as for :func:`train_feature_extractor`.
        weights: a user ``.safetensors`` file (with its ``.json`` sidecar) to use instead.
        train_if_missing: train and cache an extractor when none is cached (else UserError).
        device: where to put the network.
    """
    if weights is not None:
        return load_feature_extractor(weights, device)
    ds = load_dataset(data, path=data_path, resolution=resolution, channels=channels, split="train")
    path = default_weights_path(data, tuple(ds.resolution), ds.channels)
    if not (path.is_file() and files.sidecar(path).is_file()):
        if not train_if_missing:
            raise UserError(f"no feature extractor for {data} in {path.parent}: run "
                            f"`difflab features train --data {data}` or pass --features WEIGHTS")
        print(f"no feature extractor for {data} yet: training one once (cached in {path})")
        train_feature_extractor(data, data_path=data_path, resolution=resolution, channels=channels, out=path)
    return load_feature_extractor(path, device)
