"""The contrastive image-text loss of CLIP (Radford et al. 2021, "Learning Transferable Visual Models
From Natural Language Supervision", Fig. 3).

The symmetric InfoNCE over the cosine similarities of a batch of pairs, scaled by exp(t) with
t = log(1 / temperature) learned: each image picks its caption among the batch's captions, and
each caption its image. The encoders are :mod:`difflab.models.clip`, the task :mod:`difflab.tasks.clip`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def clip_contrastive_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor,
                          groups: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, Fig. 3).

    logits = exp(t) I_e T_e^T; the loss is the mean of the cross-entropies over rows (each image
    picks its text) and over columns (each text picks its image).

    Args:
        image_embeds: I_e (B, E), unit vectors.
        text_embeds: T_e (B, E), unit vectors; row i is the caption of image i.
        logit_scale: t = log(1 / temperature), a scalar (the model clamps it).
        groups: optional (B,) ids, equal for pairs with the same caption: such pairs are all
            positives, with the target spread evenly over them (a batch drawn with replacement
            may repeat a caption). None = the diagonal only, as in the paper.

    Returns:
        The scalar loss.
    """
    logits = logit_scale.exp() * image_embeds.float() @ text_embeds.float().T  # (B, B)
    B = logits.shape[0]
    if groups is None:
        target = torch.arange(B, device=logits.device)
    else:
        positive = (groups[:, None] == groups[None, :]).float()  # (B, B), symmetric
        target = positive / positive.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
