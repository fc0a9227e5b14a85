"""Tasks: what the one training loop trains, chosen by ``data.name``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from difflab.config import Config
from difflab.data.mixture import MIXTURES

if TYPE_CHECKING:  # difflab.train imports Accelerate: not for every `from difflab.tasks.image import ...`
    from difflab.train import Task


def build_task(cfg: Config) -> Task:
    """The task for a config: a 2-D mixture (:mod:`difflab.tasks.toy2d`) or images (:mod:`difflab.tasks.image`)."""
    if cfg.data.name in MIXTURES:
        from difflab.tasks.toy2d import Toy2DTask
        return Toy2DTask(cfg)
    from difflab.tasks.image import ImageTask
    return ImageTask(cfg)
