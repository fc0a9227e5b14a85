"""The in-memory image dataset every loader returns, and the pixel conversions around it.

Images are stored as uint8 ``(N, C, H, W)``; the model sees float32 in ``[-1, 1]``
(:func:`to_model_range`), and samples go back with :func:`to_uint8`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.errors import UserError
from difflab.schedules import append_dims

RESIZE_CHUNK = 4096  # images resized per interpolate call (bounds the float32 copy)


@dataclass
class ImageDataset:
    """A whole image dataset, decoded into memory at its target resolution."""

    name: str
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor | None  # int64 (N,) class ids, or None when the dataset has no classes
    class_names: list[str]  # [] when no classes
    texts: list[str] | None  # one caption per image (image-folder metadata.jsonl), else None
    skipped: int = 0  # bad files skipped while loading
    attributes: Tensor | None = None  # int64 (N, A) per-image attribute ids (shapes: size, color, shape, position)

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when unlabelled)."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """C of the ``(N, C, H, W)`` images."""
        return int(self.images.shape[1])

    @property
    def resolution(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def to_model_range(images_uint8: Tensor) -> Tensor:
    """uint8 pixels ``0..255`` -> float32 in ``[-1, 1]`` (same shape)."""
    return images_uint8.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """Float images in ``[-1, 1]`` -> uint8 ``0..255``, clamped and rounded (inverse of :func:`to_model_range`)."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def random_flip(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Flip each image of a batch left-right with probability 1/2.

    Args:
        x: images ``(B, C, H, W)``.
        generator: source of the coin flips (one ``torch.rand`` draw of B numbers on its device);
            None uses the global generator.

    Returns:
        A new ``(B, C, H, W)`` tensor; sample b is flipped where its draw is < 0.5.
    """
    device = generator.device if generator is not None else x.device
    flip = torch.rand(x.shape[0], generator=generator, device=device).to(x.device) < 0.5  # (B,)
    return torch.where(append_dims(flip, x).bool(), x.flip(-1), x)  # mask (B, 1, 1, 1), cast back from x's dtype


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """Resize uint8 ``(N, C, H, W)`` images to ``(N, C, size, size)`` (bilinear, antialiased).

    Returns the input unchanged when it already has that size.
    """
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = images[start:start + RESIZE_CHUNK].to(torch.float32)  # (b, C, H, W)
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + RESIZE_CHUNK] = resized.round().clamp(0, 255).to(torch.uint8)  # (b, C, size, size)
    return out


def gray_to_channels(images: Tensor, channels: int | None, name: str) -> Tensor:
    """Single-channel ``(N, 1, H, W)`` images with ``channels`` channels (None or 1: as is; 3: repeated)."""
    if channels is None or channels == 1:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()  # (N, 3, H, W)
    raise UserError(f"{name} is greyscale and cannot give channels={channels}: set data.channels to 1 or 3")
