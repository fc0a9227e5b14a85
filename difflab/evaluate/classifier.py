"""The small CNN classifiers difflab trains to measure images, and their one training recipe.

Two networks are built and trained this way: the FID feature extractor
(:class:`~difflab.evaluate.features.FeatureNet`, a classifier of a dataset's labels) and the shapes
attribute classifier (:class:`~difflab.evaluate.attributes.AttributeNet`, one head per attribute).
They share the convolution stages (:func:`conv_stages`), the input preparation (:func:`prepare_images`),
batched inference (:func:`eval_batches`) and the training loop (:func:`fit_classifier`: AdamW, linear
warm-up then cosine decay to zero, :func:`lr_at`); each supplies its own batches (what it draws, and in
which order, from its seeded generator) and its loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from difflab.data.images import resize_uint8, to_model_range
from difflab.nn.blocks import conv_block

TRAIN_BATCH = 128  # images per optimizer step
EVAL_BATCH = 512  # images per forward pass when measuring
LR = 2e-3  # peak learning rate
WEIGHT_DECAY = 1e-4
WARMUP_FRACTION = 0.05  # of the steps, then cosine decay to zero


def conv_stages(in_channels: int, width: int, downsamples: int) -> tuple[nn.Sequential, int]:
    """A conv stem, then ``downsamples`` stages of (a stride-2 block doubling the channels, a 3x3 block).

    Args:
        in_channels: C of the images.
        width: channels of the stem.
        downsamples: stages; each halves H and W.

    Returns:
        The stages as one ``nn.Sequential`` of :func:`~difflab.nn.blocks.conv_block` (BatchNorm), and
        its output channels ``width * 2**downsamples``.
    """
    layers, c = [conv_block(in_channels, width)], width
    for _ in range(downsamples):
        layers += [conv_block(c, 2 * c, stride=2), conv_block(2 * c, 2 * c)]
        c *= 2
    return nn.Sequential(*layers), c


def prepare_images(net: nn.Module, images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1] at ``net.resolution`` (H, W), on the network's device.

    Images of another side are resized as the data layer resizes real images (square sides only).
    """
    H, W = net.resolution
    if tuple(images.shape[-2:]) != (H, W):
        if H != W:
            raise ValueError(f"cannot resize images {tuple(images.shape)} to the non-square {(H, W)}")
        images = resize_uint8(images, H)  # (B, C, H, W)
    return to_model_range(images.to(next(net.parameters()).device))


def eval_batches(net: nn.Module, images: Tensor, fn: Callable[[Tensor], Tensor], *, batch_size: int = EVAL_BATCH,
                 progress: bool = False, desc: str = "") -> list[Tensor]:
    """``fn`` of each batch of uint8 images (N, C, H, W) prepared for ``net`` (:func:`prepare_images`),
    in eval mode without gradients; the network is left in the mode it was in.

    Args:
        net: the classifier (on any device; the images follow it).
        images: uint8 (N, C, H, W).
        fn: a prepared batch (b, C, H, W) -> what to keep of it (e.g. ``net(x).argmax(dim=1).cpu()``).
        batch_size: images per forward pass.
        progress: show a tqdm bar labelled ``desc``.

    Returns:
        ``fn``'s results, one per batch, in order.
    """
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            return [fn(prepare_images(net, images[i:i + batch_size]))
                    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False)]
    finally:
        net.train(was_training)


def lr_at(step: int, steps: int) -> float:
    """The learning rate of ``step`` in a run of ``steps``: linear warm-up over WARMUP_FRACTION of them
    to LR, then cosine decay to zero."""
    warmup = max(1, round(WARMUP_FRACTION * steps))
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def fit_classifier(net: nn.Module, batches: Iterator[tuple[Tensor, Tensor]],
                   loss_fn: Callable[[Any, Tensor], Tensor], steps: int, *, desc: str,
                   progress: bool = True) -> None:
    """Train ``net`` for ``steps`` AdamW steps (:func:`lr_at`, WEIGHT_DECAY), in train mode.

    Args:
        net: the classifier, on its training device.
        batches: yields (inputs, targets) on that device, one pair per step, drawn in order.
        loss_fn: (``net(inputs)``, targets) -> the scalar loss.
        steps: optimizer steps.
        desc: the progress bar's label.
        progress: show a tqdm bar.
    """
    opt = torch.optim.AdamW(net.parameters(), lr=lr_at(0, steps), weight_decay=WEIGHT_DECAY)
    net.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        x, y = next(batches)
        loss = loss_fn(net(x), y)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
