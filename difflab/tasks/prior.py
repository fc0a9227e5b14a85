"""DALL-E 2's diffusion prior (``task: prior``): CLIP text embedding -> CLIP image embedding.

Ramesh et al. 2022, Sec. 2.2: the prior P(z_i | y) is Gaussian diffusion on the CLIP image embedding z_i of
an image, conditioned on the CLIP text embedding z_t of its caption. The training pairs of a captioned
dataset are embedded once by a frozen difflab CLIP run (``prior.clip_run``, :mod:`difflab.tasks.clip`),
normalised as CLIP does and scaled by sqrt(E) (:func:`difflab.models.prior.scaled_embedding`); then it is
Algorithm 1 on (B, E) vectors with the Gaussian core unchanged (the schedule, the loss, any sampler),
predicting what ``diffusion.prediction`` says (DALL-E 2: x0). The caption's embedding is dropped to a
learned null with probability ``prior.cond_drop_prob``, so the prior samples with classifier-free guidance.

A prior is usually a stage of an unclip run (:mod:`difflab.tasks.unclip`, RUN/prior, whose
``prior.clip_run`` is ``../clip``: the CLIP stage beside it). Alone, ``difflab sample RUN --prompt ...
--out z.npz`` writes sampled image embeddings (unit vectors), and ``difflab eval`` measures them in the
CLIP's space: the CLIP score of each embedding with its prompt and whether it retrieves its prompt,
beside the same numbers for real test images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab import io, report_html
from difflab.config import Config
from difflab.data import captioned_pairs
from difflab.denoisers import Cond, check_prediction
from difflab.errors import UserError
from difflab.evaluate.clip_score import (clip_eval, clip_score_from_embeddings, distinct_captions, embed_images,
                                         embed_texts, retrieval_from_embeddings)
from difflab.evaluate.fid import fixed_subset
from difflab.models.prior import PriorMLP, scaled_embedding
from difflab.models.text_encoders import ClipTextEncoder
from difflab.paths import atomic_path
from difflab.schedules import Schedule, schedule_from_config
from difflab.tasks import stage_folder
from difflab.tasks.base import Samples, Section, a_run
from difflab.tasks.clip import ClipRun, load_clip_run
from difflab.tasks.gaussian import GaussianRunBase, algorithm1, load_network
from difflab.tasks.text_to_image import TextToImageRun, is_empty, sample_prompts


# -- the CLIP it works in ------------------------------------------------------------------------
def named_run(run: Path | None, ref: str, key: str, what: str, fix: str) -> Path:
    """The run folder the config key ``key`` names (``ref``), resolved against the folder ``run`` of the config's
    own run (:func:`difflab.tasks.stage_folder`; None = as given); one line ending in ``fix`` when it is missing."""
    folder = Path(ref) if run is None else stage_folder(run, ref)
    if not folder.is_dir():
        where = ref if run is None or Path(ref).is_absolute() else f"{ref} (in {run} or the working directory)"
        raise UserError(f"{what} {where}, named by {key}, does not exist: {fix}")
    return folder


def clip_folder(run: Path | None, cfg: Config) -> Path:
    """The CLIP run of ``cfg.prior.clip_run``, resolved against the folder ``run`` of the config's own run.

    Raises:
        UserError: no CLIP named, or no such folder.
    """
    ref = cfg.prior.clip_run
    if ref is None:
        raise UserError(f"{a_run(cfg.task or 'prior')} needs a CLIP run: set prior.clip_run=RUN (the --out folder of "
                        "`difflab clip train`)")
    return named_run(run, ref, "prior.clip_run", "the CLIP run",
                     "train it (`difflab train CONFIG --out RUN --resume` trains a missing stage; or `difflab clip "
                     "train`) or set prior.clip_run to a CLIP run's folder")


def embed_dim(clip: ClipRun) -> int:
    """E of a CLIP run's joint embedding."""
    return clip.config.clip.embed_dim


def text_embeddings(clip: ClipRun, texts: Sequence[str]) -> Tensor:
    """z_t (N, E): the scaled CLIP text embeddings of ``texts`` (on the CLIP's device)."""
    device = next(clip.model.parameters()).device
    return scaled_embedding(embed_texts(clip.model, clip.tokenizer, list(texts))).to(device)


def image_embeddings(clip: ClipRun, images_uint8: Tensor | np.ndarray) -> Tensor:
    """z_i (N, E): the scaled CLIP image embeddings of uint8 images (N, C, H, W) or (N, H, W, C), resized to the
    CLIP's side (on the CPU)."""
    return scaled_embedding(embed_images(clip.model, images_uint8))


@dataclass(frozen=True)
class EmbeddedPairs:
    """A captioned dataset in a CLIP's space: z_i of every image, z_t of every distinct caption."""

    image_embeds: Tensor  # (N, E) scaled z_i
    caption_index: Tensor  # (N,) long, into captions
    captions: list[str]  # the U distinct captions
    text_embeds: Tensor  # (U, E) scaled z_t


def embed_pairs(clip: ClipRun, cfg: Config, split: str = "train") -> EmbeddedPairs:
    """The (image, caption) pairs of ``cfg.data`` (at the CLIP's resolution and channels) embedded by ``clip``."""
    d, c = cfg.data, clip.config.data
    images, texts, _ = captioned_pairs(d.name, path=d.path, resolution=c.resolution, channels=c.channels,
                                       split=split, size=d.size, holdout=d.holdout)
    captions, index = distinct_captions(texts)
    return EmbeddedPairs(image_embeddings(clip, images), index, captions, text_embeddings(clip, captions).cpu())


def build_prior(cfg: Config, dim: int) -> PriorMLP:
    """The prior network of ``cfg.prior`` on E = ``dim`` embeddings."""
    return PriorMLP(dim, width=cfg.prior.width, num_blocks=cfg.prior.blocks)


# -- training ------------------------------------------------------------------------------------
class PriorTask:
    """The diffusion prior on the (image, caption) pairs of ``cfg.data``, embedded once by the CLIP run
    ``prior.clip_run`` (resolved against ``run``, the folder it trains into)."""

    name = "prior"

    def __init__(self, cfg: Config, run: Path | None = None) -> None:
        check_prediction(cfg.diffusion.prediction)
        clip = load_clip_run(clip_folder(run, cfg))
        c = clip.config.data
        # x0_hat of an embedding has no data range to clamp to (sample.clip_x0 is for images in [-1, 1])
        self.config = replace(cfg, task=self.name, data=replace(cfg.data, resolution=c.resolution, channels=c.channels),
                              sample=replace(cfg.sample, clip_x0=False))
        self.schedule: Schedule = schedule_from_config(cfg.diffusion)
        self.dim = embed_dim(clip)
        pairs = embed_pairs(clip, self.config)
        self.image_embeds, self.caption_index = pairs.image_embeds, pairs.caption_index  # (N, E), (N,)
        self.text_embeds = pairs.text_embeds  # (U, E)

    def to(self, device: torch.device) -> None:
        """Keep the embeddings on the training device (N x E floats)."""
        self.image_embeds, self.caption_index, self.text_embeds = (
            self.image_embeds.to(device), self.caption_index.to(device), self.text_embeds.to(device))

    def run_files(self) -> dict[str, str]:
        return {}

    def preview(self, model: nn.Module) -> None:
        return None

    def build_model(self) -> PriorMLP:
        return build_prior(self.config, self.dim)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """x0 = z_i (B, E) of random pairs and the network's condition: ``text_embed`` z_t (B, E) of their
        captions, ``drop`` (B,) True at ``prior.cond_drop_prob``."""
        device = self.image_embeds.device
        idx = torch.randint(0, len(self.image_embeds), (batch_size,), device=device, generator=generator)
        drop = torch.rand(batch_size, device=device, generator=generator) < self.config.prior.cond_drop_prob
        return self.image_embeds[idx], {"text_embed": self.text_embeds[self.caption_index[idx]], "drop": drop}

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Algorithm 1 on a random :meth:`batch` of embedded pairs."""
        x0, cond = self.batch(batch_size, generator)
        return algorithm1(model, x0, cond, self.schedule, self.config, generator)


def task_for_run(cfg: Config, run: Path | None) -> PriorTask:
    """The task trained into ``run``: its ``prior.clip_run`` may name the CLIP relative to it (``../clip``)."""
    return PriorTask(cfg, run)


# -- a trained run -------------------------------------------------------------------------------
def save_embeddings(out: Path, embeds: np.ndarray, prompts: np.ndarray | None) -> Path:
    """``out`` (.npz): ``embeddings`` float32 (N, E) and ``prompts``, written atomically."""
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=embeds, prompts=prompts if prompts is not None else np.full(len(embeds), ""))
    return out


class PriorRun(GaussianRunBase):
    """A trained prior: ``cond`` is the prompt of every embedding (n strings, "" = unconditional; None = prompts
    drawn from the data's test captions). Samples are unit CLIP image embeddings, float32 (n, E)."""

    task = "prior"
    outputs: ClassVar[dict[str, str]] = {".npz": "a .npz of embeddings"}
    add_flags = staticmethod(TextToImageRun.add_flags)  # --prompt / --prompts, as text-to-image runs
    request = TextToImageRun.request

    def text_encoders(self) -> list[nn.Module]:
        """CLIP's text tower, which encodes the prompts the prior is conditioned on."""
        return [ClipTextEncoder.from_clip(self.clip.config, self.clip.model, self.clip.tokenizer)]

    def __init__(self, folder: Path, config: Config, model: nn.Module, checkpoint: Path, clip: ClipRun) -> None:
        super().__init__(folder, config, model, checkpoint)
        self.clip = clip

    @classmethod
    def load(cls, folder: Path, config: Config, device: torch.device | str = "cpu", *, ema: bool = True,
             checkpoint: Path | None = None) -> PriorRun:
        """The prior of ``folder`` and the CLIP it was trained in (``prior.clip_run``, relative to ``folder``)."""
        checkpoint = checkpoint or io.require_checkpoint(folder)
        clip = load_clip_run(clip_folder(folder, config), device)
        model = load_network(build_prior(config, embed_dim(clip)), checkpoint, ema, device)
        return cls(folder, config, model, checkpoint, clip)

    @classmethod
    def build(cls, cfg: Config, folder: Path) -> nn.Module:
        return build_prior(cfg, embed_dim(load_clip_run(clip_folder(folder, cfg))))

    @property
    def conditional(self) -> bool:
        return True

    @property
    def dim(self) -> int:
        """E of the embeddings."""
        return embed_dim(self.clip)

    def embeddings(self, prompts: Sequence[str], *, sampler: str | None = None, steps: int | None = None,
                   seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
                   progress: bool = True, **options: Any) -> Tensor:
        """Sampled z_i (n, E) for ``prompts`` (one each; "" = the null condition), renormalised to the scaled
        sphere sqrt(E) * unit, on the run's device."""
        prompts = list(prompts)
        text = text_embeddings(self.clip, prompts).to(self.device)  # (n, E)
        empty = is_empty(prompts).to(self.device)  # (n,)

        def cond_of(start: int, stop: int) -> Cond:
            return {"text_embed": text[start:stop], "drop": empty[start:stop]}

        batches = self.draw(len(prompts), (self.dim,), cond_of, sampler=sampler, steps=steps, seed=seed,
                            guidance=guidance, batch_size=batch_size, progress=progress, unit="embedding", **options)
        return scaled_embedding(torch.cat(batches))  # (n, E)

    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, **options: Any) -> Samples:
        """``n`` unit image embeddings float32 (n, E) with their ``prompts``."""
        self.sampler_options(sampler, steps, {})
        prompts = sample_prompts(self.config, n, cond, seed)
        z = self.embeddings(prompts, sampler=sampler, steps=steps, seed=seed, guidance=guidance,
                            batch_size=batch_size, progress=progress, **options)
        return Samples(F.normalize(z, dim=-1).cpu().numpy().astype(np.float32),
                       {"prompts": np.asarray(prompts, dtype=str)})

    def save(self, samples: Samples, out: Path) -> Path:
        return save_embeddings(Path(out), samples.data, samples.conditions.get("prompts"))

    def default_output(self, sampler: str, steps: int) -> Path:
        return self.folder / "samples" / f"{sampler}-{steps}.npz"

    def metrics(self, samples: Samples, *, data: str | None = None, data_path: str | None = None,
                features: str | Path | None = None, clip_run: str | Path | None = None,
                progress: bool = True) -> dict[str, Any]:
        """The embeddings in the run's own CLIP space: ``clip_score`` (100 x mean max(cos(z_i, z_t), 0) with
        their prompts), ``clip_retrieval`` (each picks its prompt among the distinct prompts; with its chance
        level), and for reference ``clip_score_real`` / ``clip_score_mismatched`` of as many real test images
        with their own / another caption."""
        prompts = samples.conditions["prompts"].tolist()
        distinct, target = distinct_captions(prompts)
        fake = torch.from_numpy(samples.data)  # (n, E)
        candidates = text_embeddings(self.clip, distinct).cpu()  # (K, E)
        d = self.config.data
        real_images, real_texts, _ = captioned_pairs(d.name, path=d.path, resolution=d.resolution,
                                                     channels=d.channels, split="test", size=d.size)
        pick = fixed_subset(np.arange(len(real_texts)), len(prompts))
        real = clip_eval(self.clip.model, self.clip.tokenizer, real_images[pick], [real_texts[i] for i in pick])
        return {"data": f"{d.name} (test split)", "clip_score": clip_score_from_embeddings(fake, candidates[target]),
                "clip_retrieval": retrieval_from_embeddings(fake, candidates, target),
                "clip_retrieval_chance": 1 / len(distinct), "clip_score_real": real["clip_score"],
                "clip_score_mismatched": real["clip_score_mismatched"], "clip_run": str(self.clip.folder)}

    def report_sections(self) -> Sequence[Section]:
        h = report_html
        return h.config_section, h.training_section, h.metrics_section, h.environment_section


TASK = PriorTask
RUN = PriorRun
