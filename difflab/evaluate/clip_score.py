"""CLIP score and image-to-text retrieval accuracy under difflab's own CLIP.

Notation (Hessel et al. 2021, "CLIPScore", https://arxiv.org/abs/2104.08718, eq. 1)::

    cos(I, T)     cosine of the CLIP embeddings of an image and a caption
    CLIP score    w * mean over pairs of max(cos(I, T), 0), with w = 100 as in torchmetrics
                  (the paper's w = 2.5 rescales it)
    retrieval     fraction of images whose own caption has the highest cosine among the
                  distinct captions of the set (top-1, image -> text)

A matched score means little alone; :func:`clip_eval` reports it beside the score of the same
images with other captions (each caption rolled by one among the distinct captions), and the gap.
Values are comparable only under the same CLIP, which is difflab's own (:mod:`difflab.models.clip`),
never OpenAI's. :func:`difflab.tasks.clip.get_default_clip` trains and caches one per dataset and
resolution, so ``difflab eval`` can report a CLIP score with no extra step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.data.images import resize_uint8, to_model_range
from difflab.errors import UserError
from difflab.evaluate.fid import to_nchw
from difflab.models.clip import CLIPModel
from difflab.models.text_encoders import WordTokenizer

CLIP_SCORE_WEIGHT = 100.0  # w of CLIPScore, as torchmetrics' CLIPScore
EMBED_BATCH = 512  # images or captions per forward pass


# -- embeddings ----------------------------------------------------------------------------------
@torch.inference_mode()
def embed_images(model: CLIPModel, images_uint8: Tensor | np.ndarray, batch_size: int = EMBED_BATCH) -> Tensor:
    """I_e (N, E) on the CPU of uint8 images (N, H, W, C) or (N, C, H, W), resized to the model's side."""
    images = to_nchw(images_uint8)  # (N, C, H, W)
    if images.shape[1] != model.image_channels:
        raise UserError(f"this CLIP takes {model.image_channels}-channel images but got {images.shape[1]}: "
                        f"use a CLIP trained on {images.shape[1]}-channel images")
    device = next(model.parameters()).device
    out = [model.encode_image(to_model_range(resize_uint8(images[i:i + batch_size], model.resolution).to(device)))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).float().cpu()


@torch.inference_mode()
def embed_texts(model: CLIPModel, tokenizer: WordTokenizer, texts: Sequence[str],
                batch_size: int = EMBED_BATCH) -> Tensor:
    """T_e (N, E) on the CPU of captions (too long ones truncated with one warning)."""
    tokens, mask = tokenizer.encode(list(texts), model.max_length)  # (N, L) each
    device = next(model.parameters()).device
    out = [model.encode_text(tokens[i:i + batch_size].to(device), mask[i:i + batch_size].to(device))
           for i in range(0, len(tokens), batch_size)]
    return torch.cat(out).float().cpu()


def _check_pairs(images: Tensor | np.ndarray, texts: Sequence[str]) -> None:
    if len(images) != len(texts) or len(texts) == 0:
        raise UserError(f"CLIP scores need one caption per image, got {len(images)} images and {len(texts)} "
                        f"captions: pass equally many (at least one)")


# -- the numbers, from embeddings ----------------------------------------------------------------
def clip_score_from_embeddings(image_embeds: Tensor, text_embeds: Tensor) -> float:
    """w * mean(max(cos(I_i, T_i), 0)) over pairs: I_e, T_e (N, E), row i a pair."""
    cos = F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)  # (N,)
    return CLIP_SCORE_WEIGHT * float(cos.clamp(min=0).mean())


def retrieval_from_embeddings(image_embeds: Tensor, candidate_embeds: Tensor, target: Tensor) -> float:
    """Fraction of images i whose highest-cosine candidate is ``target[i]``: I_e (N, E), candidates (K, E)."""
    sims = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(candidate_embeds.float(), dim=-1).T  # (N, K)
    return float((sims.argmax(dim=1) == target).float().mean())


def distinct_captions(texts: Sequence[str]) -> tuple[list[str], Tensor]:
    """(the distinct captions in order of first appearance, index (N,) of each caption among them)."""
    distinct = list(dict.fromkeys(texts))
    index = {t: k for k, t in enumerate(distinct)}
    return distinct, torch.tensor([index[t] for t in texts], dtype=torch.long)


# -- public API ------------------------------------------------------------------------------------
def clip_score(model: CLIPModel, tokenizer: WordTokenizer, images: Tensor | np.ndarray,
               texts: Sequence[str]) -> float:
    """CLIP score (Hessel et al. 2021, w = 100) of images and their captions.

    Args:
        model, tokenizer: a CLIP run (:func:`difflab.tasks.clip.load_clip`).
        images: uint8 (N, H, W, C) or (N, C, H, W), numpy or tensor; resized to the CLIP's side.
        texts: N captions, ``texts[i]`` of ``images[i]``.

    Returns:
        100 * mean(max(cos(image, text), 0)), between 0 and 100.
    """
    _check_pairs(images, texts)
    return clip_score_from_embeddings(embed_images(model, images), embed_texts(model, tokenizer, texts))


def retrieval_accuracy(model: CLIPModel, tokenizer: WordTokenizer, images: Tensor | np.ndarray,
                       texts: Sequence[str]) -> float:
    """Top-1 image -> text retrieval: each image picks the caption of highest cosine among the distinct
    captions of ``texts``; correct when it is its own. Arguments as :func:`clip_score`; chance is
    1 / (number of distinct captions)."""
    _check_pairs(images, texts)
    distinct, target = distinct_captions(texts)
    return retrieval_from_embeddings(embed_images(model, images), embed_texts(model, tokenizer, distinct), target)


def clip_eval(model: CLIPModel, tokenizer: WordTokenizer, images: Tensor | np.ndarray,
              texts: Sequence[str]) -> dict[str, float]:
    """CLIP score of matched and mismatched pairs, their gap, and retrieval accuracy, from one embedding pass.

    Mismatched pairs give each image the next distinct caption after its own (in order of first
    appearance, cyclically), so no image is scored with its own caption.

    Arguments as :func:`clip_score`, with at least two distinct captions.

    Returns:
        {"clip_score", "clip_score_mismatched", "gap" (matched - mismatched), "retrieval",
        "distinct_texts", "chance" (1 / distinct_texts)}.
    """
    _check_pairs(images, texts)
    distinct, target = distinct_captions(texts)
    if len(distinct) < 2:
        raise UserError("mismatched pairs need at least two different captions: evaluate on more varied images")
    image_embeds = embed_images(model, images)  # (N, E)
    candidates = embed_texts(model, tokenizer, distinct)  # (K, E)
    matched = clip_score_from_embeddings(image_embeds, candidates[target])
    mismatched = clip_score_from_embeddings(image_embeds, candidates[(target + 1) % len(distinct)])
    return {"clip_score": matched, "clip_score_mismatched": mismatched, "gap": matched - mismatched,
            "retrieval": retrieval_from_embeddings(image_embeds, candidates, target),
            "distinct_texts": len(distinct), "chance": 1 / len(distinct)}
