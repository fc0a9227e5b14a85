"""Tasks: what the one training loop trains, chosen by ``task`` and ``data.name``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from difflab.config import TASKS, Config
from difflab.data.mixture import MIXTURES
from difflab.errors import UserError

if TYPE_CHECKING:  # difflab.train imports Accelerate: not for every `from difflab.tasks.image import ...`
    from difflab.train import Task


def build_task(cfg: Config) -> Task:
    """The task for a config: a 2-D mixture (:mod:`difflab.tasks.toy2d`), captioned images
    (:mod:`difflab.tasks.text_to_image`, when ``model.text_encoder`` is set) or images (:mod:`difflab.tasks.image`)."""
    if cfg.task not in TASKS:
        raise UserError(f"unknown task {cfg.task!r}: set task to one of {', '.join(TASKS)}")
    if cfg.task == "clip":  # contrastive image-text encoders (difflab clip train)
        from difflab.tasks.clip import ClipTask
        return ClipTask(cfg)
    if cfg.data.name in MIXTURES:
        from difflab.tasks.toy2d import Toy2DTask
        return Toy2DTask(cfg)
    from difflab.tasks.text_to_image import TextToImageTask, is_text_to_image
    if is_text_to_image(cfg):
        return TextToImageTask(cfg)
    from difflab.tasks.image import ImageTask
    return ImageTask(cfg)
