"""Text (``task: text``): five methods on one transformer (:mod:`difflab.tasks.text_methods`), trained on a corpus
of ``data.name`` (``bible``: the World English Bible; ``fortunes``: Debian's fortune files; ``text-file``: a user's
UTF-8 file or folder), tokenised by characters or a BPE trained on it (:mod:`difflab.data.text`).

=============  =====================================================================================
symbol         meaning
=============  =====================================================================================
``x0``         a window of ``text.length`` tokens (B, L) of the training stream, ids 0..V-1
``labels``     the category of each window's document (B,) (a Bible book, a fortune file), -1 = none
``fixed``      infilling: the given positions (B, L) bool and their tokens (a prefix and a suffix)
=============  =====================================================================================

Measured by bits per character on held-out documents (the ELBO for the diffusion methods, exact for the
autoregressive baseline), the generative perplexity of samples under an autoregressive run of the same data
(``difflab eval RUN --scorer AR_RUN``), their unigram entropy and distinct-n (:mod:`difflab.evaluate.text`), and
the seconds per sample.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from difflab import report_html
from difflab.config import Config, SampleConfig
from difflab.errors import UserError
from difflab.tasks.base import RunBase, SampleRequest, Samples, Section
from difflab.tasks.gaussian import check_count, load_network
from difflab.tasks.text_methods import TextMethod, text_method

TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.json"
TEXT_DATASETS = ("bible", "fortunes", "text-file")
SPLIT_SEED = 0  # the held-out documents are the same for every run of a corpus
NLL_WINDOWS = 200  # held-out windows of `difflab eval --nll`
SAMPLE_SEPARATOR = "%"  # a line between samples in a .txt (the fortune files' format)
REPORT_SAMPLES = 6


# -- data ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextData:
    """A corpus split into training and held-out documents, its tokenizer and category names."""

    train: Any  # difflab.data.text.Corpus
    test: Any
    tokenizer: Any  # difflab.data.text.TextTokenizer
    label_names: tuple[str, ...]


def check_text(cfg: Config) -> None:
    if cfg.data.name not in TEXT_DATASETS:
        raise UserError(f"task text trains on text, but data.name is {cfg.data.name}: set data.name to one of "
                        f"{', '.join(TEXT_DATASETS)} (text-file with data.path: your UTF-8 file or folder)")


def corpus_split(cfg: Config, held_out: str = "test"):
    """(train, held-out) documents of ``cfg.data`` and the sorted category names of the whole corpus; ``held_out``
    "test" (``text.test_fraction``) or "validation" (``text.validation_fraction`` of the rest, which training then
    never sees either)."""
    from difflab.data.text import load_corpus, split_corpus

    check_text(cfg)
    t = cfg.text
    corpus = load_corpus(cfg.data.name, cfg.data.path, errors=t.errors)
    train, test = split_corpus(corpus, t.test_fraction, seed=SPLIT_SEED)
    validation = None
    if t.validation_fraction > 0:
        train, validation = split_corpus(train, t.validation_fraction, seed=SPLIT_SEED + 1)
    elif held_out == "validation":
        raise UserError("this run holds no validation documents: train with text.validation_fraction=0.05")
    return train, validation if held_out == "validation" else test, corpus.label_names if corpus.labels else ()


def stream_of(corpus: Any, tokenizer: Any, label_names: Sequence[str]):
    """The token stream of ``corpus`` with category ids indexing ``label_names`` (none: every id -1)."""
    from difflab.data.text import TokenStream

    if not label_names:
        return TokenStream(replace(corpus, labels=None), tokenizer)
    return TokenStream(corpus, tokenizer, label_names=tuple(label_names))


class TextTask:
    """Random windows of the training stream, the method's loss (category dropped to -1 for guidance-free
    unconditional sampling at ``text.label_drop_prob``)."""

    name = "text"

    def __init__(self, cfg: Config) -> None:
        from difflab.data.text import build_tokenizer

        train, test, names = corpus_split(cfg)
        t = cfg.text
        self.tokenizer = build_tokenizer(t.tokenizer, train.documents, t.vocab_size if t.tokenizer == "bpe" else None)
        self.label_names = names if t.labels else ()
        self.stream = stream_of(train, self.tokenizer, self.label_names)
        self.config = replace(cfg, task=self.name, sample=default_sampler(cfg))
        self.method: TextMethod = text_method(self.config, self.tokenizer.vocab_size, len(self.label_names))
        self.method.check_sampler(self.config.sample.sampler)
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def run_files(self) -> dict[str, str]:
        return {TOKENIZER_FILE: self.tokenizer.to_json(), LABELS_FILE: json.dumps(list(self.label_names))}

    def build_model(self) -> nn.Module:
        return self.method.build()

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        x0, labels = self.stream.random_windows(batch_size, self.config.text.length, generator)
        x0 = x0.to(self.device)
        if self.label_names:
            drop = torch.rand(batch_size, generator=generator, device=generator.device) < self.config.text.label_drop_prob
            labels = torch.where(drop.to(self.device), -1, labels.to(self.device))
        else:
            labels = None
        return self.method.loss(model, x0, labels, generator)

    def preview(self, model: nn.Module) -> np.ndarray | None:
        return None


def default_sampler(cfg: Config) -> SampleConfig:
    """``cfg.sample`` with the method's own sampler where it names the Gaussian default (dpmpp-2m) of a discrete
    method."""
    from difflab.tasks.text_methods import METHODS

    method = METHODS[cfg.text.method]
    if cfg.text.method != "embedding" and cfg.sample.sampler == SampleConfig.sampler:
        return replace(cfg.sample, sampler=method.samplers[0])
    return cfg.sample


# -- a trained run -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextCondition:
    """What ``difflab sample`` asks of a text run: a prefix and a suffix to keep, a category, and how tokens are
    drawn (a temperature and a top-p nucleus; 1 and 1 = the model's own distribution), and, for the mask-predict
    sampler only, MaskGIT's noise on its re-masking (None: the method's measured default)."""

    prefix: str = ""
    suffix: str = ""
    category: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    remask_noise: float | None = None


class TextRun(RunBase):
    """A trained text run: ``cond`` is a :class:`TextCondition` (None = unconditional); a sample is a str."""

    task = "text"
    can_sample = True
    outputs: ClassVar[dict[str, str]] = {".txt": "a .txt file (samples between lines of %)",
                                         ".jsonl": "a .jsonl file (one JSON object per sample)"}

    def __init__(self, folder: Path, config: Config, model: nn.Module, checkpoint: Path, tokenizer: Any,
                 label_names: tuple[str, ...]) -> None:
        super().__init__(folder, config, checkpoint)
        self.model, self.tokenizer, self.label_names = model, tokenizer, label_names
        self.method: TextMethod = text_method(config, tokenizer.vocab_size, len(label_names))

    @classmethod
    def load(cls, folder: Path, config: Config, device: torch.device | str = "cpu", *, ema: bool = True,
             checkpoint: Path | None = None) -> TextRun:
        from difflab import io
        from difflab.data.text import tokenizer_from_json
        from difflab.files import read_json, read_text

        fix = "train the run again with `difflab train` (the file is written at its start)"
        tokenizer = tokenizer_from_json(read_text(Path(folder) / TOKENIZER_FILE, "tokenizer file", fix))
        names = tuple(read_json(Path(folder) / LABELS_FILE, "category file", fix))
        checkpoint = checkpoint or io.require_checkpoint(folder)
        method = text_method(config, tokenizer.vocab_size, len(names))
        return cls(folder, config, load_network(method.build(), checkpoint, ema, device), checkpoint, tokenizer, names)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- conditions ------------------------------------------------------------------------------
    def encode_exact(self, text: str, what: str) -> list[int]:
        """Token ids of ``text`` that decode back to it exactly (one line naming the characters the run's
        tokenizer does not know)."""
        ids = self.tokenizer.encode(text)
        if self.tokenizer.decode(ids) != text:
            unknown = sorted({c for c in text if self.tokenizer.decode(self.tokenizer.encode(c)) != c})
            raise UserError(f"the {what} holds characters this run never saw ({''.join(unknown)!r}): leave them out, "
                            "or train with text.tokenizer=bpe (any text)")
        return ids

    def fixed(self, cond: TextCondition, n: int) -> tuple[Tensor, Tensor] | None:
        """The given positions and tokens (n, L) of a prefix and a suffix; None when neither is given."""
        if not cond.prefix and not cond.suffix:
            return None
        if cond.suffix and not self.method.infills:
            from difflab.tasks.text_methods import infilling_methods

            raise UserError(f"a {self.method.name} text run continues a prefix but cannot fill before a suffix: drop "
                            f"--suffix, or sample a run that infills ({infilling_methods()})")
        L = self.config.text.length
        pre, suf = self.encode_exact(cond.prefix, "prefix"), self.encode_exact(cond.suffix, "suffix")
        if len(pre) + len(suf) >= L:
            raise UserError(f"the prefix and suffix are {len(pre) + len(suf)} tokens, but a sample is {L}: shorten them "
                            "to leave tokens to fill")
        given = torch.zeros(n, L, dtype=torch.bool)
        tokens = torch.zeros(n, L, dtype=torch.long)
        given[:, :len(pre)], tokens[:, :len(pre)] = True, torch.tensor(pre, dtype=torch.long)
        if suf:
            given[:, L - len(suf):], tokens[:, L - len(suf):] = True, torch.tensor(suf, dtype=torch.long)
        return given.to(self.device), tokens.to(self.device)

    def label_ids(self, cond: TextCondition, n: int) -> Tensor | None:
        if not self.label_names:
            if cond.category is not None:
                raise UserError("this run was trained without categories, so --category cannot be used: train "
                                "with text.labels=true")
            return None
        if cond.category is None:
            return torch.full((n,), -1, dtype=torch.long, device=self.device)
        if cond.category not in self.label_names:
            raise UserError(f"unknown category {cond.category!r}: use one of {', '.join(self.label_names)}")
        return torch.full((n,), self.label_names.index(cond.category), dtype=torch.long, device=self.device)

    # -- sampling --------------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, **options: Any) -> Samples:
        """``n`` texts of ``text.length`` tokens for ``cond`` (a :class:`TextCondition`; None: unconditional) with
        ``sampler`` (None = ``sample.sampler``) in ``steps`` steps (None = ``sample.steps``; the autoregressive
        baseline always takes one step per token)."""
        unused = {k: v for k, v in options.items() if v is not None}
        if unused or guidance is not None:
            raise UserError(f"text runs take no {', '.join(['--guidance'] * (guidance is not None) + list(unused))}: "
                            "drop it (they take --steps, --sampler, --prefix, --suffix, --category, --temperature, "
                            "--top-p, --remask-noise)")
        check_count(n)
        cond = cond or TextCondition()
        s = self.config.sample
        sampler, steps = sampler or s.sampler, steps or s.steps
        if sampler not in self.method.samplers:
            self.method.check_sampler(sampler)
        batch_size = batch_size or s.batch_size
        extra = {}
        if cond.remask_noise is not None:
            if sampler != "mask-predict":
                raise UserError(f"--remask-noise is the mask-predict sampler's, not {sampler}'s: drop it, or pass "
                                "--sampler mask-predict")
            extra["remask_noise"] = cond.remask_noise
        generator = torch.Generator(device=self.device).manual_seed(seed)
        middles, start_time = [], time.perf_counter()
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            fixed = self.fixed(cond, b)
            tokens = self.method.sample(self.model, b, self.label_ids(cond, b), sampler=sampler, steps=steps,
                                        fixed=fixed, generator=generator, progress=progress,
                                        temperature=cond.temperature, top_p=cond.top_p, **extra)
            middles += [self.decode_middle(row, fixed) for row in tokens.cpu()]
        seconds = time.perf_counter() - start_time
        texts = [cond.prefix + m + cond.suffix for m in middles]
        return Samples(np.array(texts, dtype=object),
                       {"prefix": np.asarray([cond.prefix] * n, dtype=object),
                        "suffix": np.asarray([cond.suffix] * n, dtype=object),
                        "category": np.asarray([cond.category or ""] * n, dtype=object),
                        "seconds": np.full(n, seconds / n)})

    def decode_middle(self, row: Tensor, fixed: tuple[Tensor, Tensor] | None) -> str:
        """The text of one sample's free positions (the given prefix and suffix are kept as typed)."""
        if fixed is None:
            return self.tokenizer.decode(row.tolist())
        free = ~fixed[0][0].cpu()
        return self.tokenizer.decode(row[free].tolist())

    def save(self, samples: Samples, out: Path) -> Path:
        """``.txt``: the samples, each followed by a line ``%``; ``.jsonl``: {"text", "prefix", "suffix",
        "category"} per line. Written atomically."""
        from difflab.io import write_text_atomic

        out = Path(out)
        c = samples.conditions
        if out.suffix.lower() == ".jsonl":
            text = "".join(json.dumps({"text": str(t), "prefix": str(p), "suffix": str(s), "category": str(k)}) + "\n"
                           for t, p, s, k in zip(samples.data, c["prefix"], c["suffix"], c["category"]))
        else:
            text = "".join(f"{t}\n{SAMPLE_SEPARATOR}\n" for t in samples.data)
        write_text_atomic(out, text)
        return out

    def default_output(self, sampler: str, steps: int) -> Path:
        return self.folder / "samples" / f"{sampler}-{steps}.txt"

    # -- measures --------------------------------------------------------------------------------
    def held_out(self, split: str = "test"):
        """The token stream of the held-out documents of ``split`` (test | validation: the same split as training)."""
        _, held, _ = corpus_split(self.config, split)
        return stream_of(held, self.tokenizer, self.label_names)

    @torch.inference_mode()
    def bound(self, tokens: Tensor, seed: int = 0, batch_size: int = 32, labels: Tensor | None = None,
              progress: bool = False) -> Tensor:
        """The method's bound on -log p of each window (K, L) of tokens, (K,) nats (exact for autoregressive)."""
        from tqdm.auto import tqdm

        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        for start in tqdm(range(0, len(tokens), batch_size), desc="bound", disable=not progress, dynamic_ncols=True):
            x0 = tokens[start:start + batch_size].to(self.device)
            lab = None if labels is None else labels[start:start + batch_size].to(self.device)
            out.append(self.method.nelbo(self.model, x0, lab, generator).double().cpu())
        return torch.cat(out)

    def nll(self, n: int, *, variance: str | None = None, strata: int | None = None, seed: int = 0,
            progress: bool = True, split: str = "test") -> dict[str, Any]:
        """Bits per character (and per token) of ``n`` held-out windows of ``split`` (evenly spread over it)."""
        stream = self.held_out(split)
        tokens, labels = stream.windows(self.config.text.length)
        pick = np.linspace(0, len(tokens) - 1, min(n, len(tokens))).round().astype(int)
        tokens, labels = tokens[pick], labels[pick]
        nats = self.bound(tokens, seed, labels=labels if self.label_names else None, progress=progress)
        chars = sum(len(self.tokenizer.decode(row.tolist())) for row in tokens)
        L = tokens.shape[1]
        per_char = nats.numpy() / (chars / len(tokens)) / math.log(2)  # (K,) bits/char per window, for the error
        return {"data": f"{self.config.data.name} {split} documents", "n": len(tokens), "method": self.method.name,
                "bits_per_char": float(nats.sum() / chars / math.log(2)),
                "bits_per_char_stderr": float(per_char.std() / math.sqrt(len(per_char))) if len(per_char) > 1 else None,
                "bits_per_token": float(nats.mean() / L / math.log(2)), "chars_per_token": chars / tokens.numel(),
                "exact": self.method.name == "autoregressive"}

    def score_texts(self, texts: Sequence[str], seed: int = 0) -> tuple[float, int]:
        """(nats, characters) of ``texts`` under this run (exact for autoregressive): each text's tokens scored in
        windows of ``text.length`` (a shorter last window is scored as it is)."""
        L = self.config.text.length
        by_length: dict[int, list[list[int]]] = {}  # windows of each length, scored in batches
        for text in texts:
            ids = self.tokenizer.encode(text)
            for start in range(0, len(ids), L):
                window = ids[start:start + L]
                if len(window) == L or self.method.name == "autoregressive":
                    by_length.setdefault(len(window), []).append(window)
        nats, chars = 0.0, 0
        for windows in by_length.values():
            nats += float(self.bound(torch.tensor(windows, dtype=torch.long), seed).sum())
            chars += sum(len(self.tokenizer.decode(w)) for w in windows)
        return nats, chars

    def metrics(self, samples: Samples, *, scorer: str | Path | None = None, progress: bool = True,
                **_: Any) -> dict[str, Any]:
        """Unigram entropy and distinct-n of the samples, seconds per sample; with ``scorer`` (an autoregressive text
        run of the same corpus) their generative perplexity and bits/char under it."""
        from difflab.evaluate.text import diversity

        texts = [str(t) for t in samples.data]
        out: dict[str, Any] = {"data": f"{self.config.data.name} samples", **diversity(texts),
                               "seconds_per_sample": float(np.mean(samples.conditions["seconds"]))}
        if scorer is not None:
            out |= {"scorer": str(scorer), **judged(scoring_run(scorer, self.device), texts)}
        return out

    def evaluate(self, n: int, *, seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 batch_size: int | None = None, progress: bool = True, scorer: str | Path | None = None,
                 **options: Any) -> dict[str, Any]:
        options = {k: v for k, v in options.items() if k not in ("data", "data_path", "features", "clip_run")}
        draw = {k: v for k in ("temperature", "top_p", "remask_noise") if (v := options.pop(k, None)) is not None}
        samples = self.sample(n, cond=TextCondition(**draw), sampler=sampler, steps=steps, seed=seed,
                              batch_size=batch_size, progress=progress, **options)
        metrics = self.metrics(samples, scorer=scorer, progress=progress)
        return {"data": metrics.pop("data"), "outputs": "samples", **self.made_with(sampler, steps), **draw,
                **metrics}

    # -- report and flags ------------------------------------------------------------------------
    def report_sections(self) -> Sequence[Section]:
        h = report_html
        return h.config_section, h.training_section, text_samples_section, text_metrics_section, h.environment_section

    @staticmethod
    def add_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--prefix", metavar="TEXT", help="text runs: the text every sample starts with")
        parser.add_argument("--suffix", metavar="TEXT", help="text runs: the text every sample ends with (infilling: "
                                                             "the diffusion methods fill the middle)")
        parser.add_argument("--category", metavar="NAME", help="text runs trained with text.labels: the category "
                                                               "(a Bible book, a fortune file) to write in")
        parser.add_argument("--temperature", type=float, metavar="T", help="text runs: draw tokens from the model's "
                                                                           "distribution to the power 1/T (default 1; "
                                                                           "mask-predict: 0 = the paper's argmax)")
        parser.add_argument("--top-p", type=float, metavar="P", help="text runs: draw from the most likely tokens "
                                                                     "whose probability reaches P (default 1: all)")
        parser.add_argument("--remask-noise", type=float, metavar="TAU", help="text runs, --sampler mask-predict: "
                            "MaskGIT's Gumbel noise on the confidence ranking, annealed to 0 (default 16; 0 = the "
                            "paper's ranking by confidence alone, which collapses into repetition)")

    def request(self, args: argparse.Namespace, n: int | None, default_n: int) -> SampleRequest:
        temperature, top_p = getattr(args, "temperature", None), getattr(args, "top_p", None)
        cond = TextCondition(getattr(args, "prefix", None) or "", getattr(args, "suffix", None) or "",
                             getattr(args, "category", None), 1.0 if temperature is None else temperature,
                             1.0 if top_p is None else top_p, getattr(args, "remask_noise", None))
        return SampleRequest(n or default_n, cond)


def scoring_run(folder: str | Path, device: torch.device | str) -> TextRun:
    """The autoregressive text run that scores samples, else one line."""
    from difflab.tasks import load_run

    run = load_run(folder, device)
    if not isinstance(run, TextRun) or run.method.name != "autoregressive":
        raise UserError(f"{folder} is not an autoregressive text run, so it cannot score samples: pass --scorer with "
                        "a run of configs/text_autoregressive.yaml trained on the same corpus")
    return run


def judged(judge: TextRun, texts: Sequence[str]) -> dict[str, float]:
    """The judge's (an autoregressive run's) bits/char and generative perplexity of ``texts``."""
    from difflab.evaluate.text import bits_per_char

    nats, chars = judge.score_texts(texts)
    tokens = sum(len(judge.tokenizer.encode(t)) for t in texts)
    return {"gen_bits_per_char": bits_per_char(nats, chars), "gen_perplexity": math.exp(nats / tokens)}


# -- report --------------------------------------------------------------------------------------
def text_samples_section(ctx: Any) -> tuple[str, str]:
    """A report's samples: unconditional texts, and one infilled from a held-out prefix and suffix."""
    run: TextRun = ctx.loaded
    samples = run.sample(min(ctx.samples, REPORT_SAMPLES), seed=ctx.seed, progress=False)
    s = run.config.sample
    note = (f"checkpoint step {ctx.checkpoint_step} (EMA weights), {s.sampler}, {s.steps} steps, seed {ctx.seed}, "
            f"{run.config.text.length} tokens each")
    body = "".join(f"<pre class=\"text-sample\">{html.escape(str(t))}</pre>" for t in samples.data)
    return "Samples", f'<p class="note">{html.escape(note)}</p>{body}'


TEXT_METRIC_ROWS = (  # (label, key in metrics.json, its standard error)
    ("held-out bits/char", "bits_per_char", "bits_per_char_stderr"), ("held-out bits/token", "bits_per_token", None),
    ("samples: bits/char under the scorer", "gen_bits_per_char", None), ("samples: generative perplexity",
                                                                         "gen_perplexity", None),
    ("samples: unigram entropy (bits)", "unigram_entropy", None), ("samples: distinct-1", "distinct_1", None),
    ("samples: distinct-2", "distinct_2", None), ("samples: distinct-3", "distinct_3", None),
    ("seconds per sample", "seconds_per_sample", None))


def text_metrics_section(ctx: Any) -> tuple[str, str]:
    """The numbers of ``difflab eval`` (samples) and ``--nll`` (the bound) of a text run."""
    ev = dict(ctx.evaluation or {})
    if not ev:
        return "Metrics", report_html._missing(ctx.evaluation_problem or
                                               f"not computed yet: run `difflab eval {ctx.run} --nll`")
    values = ev | (ev.get("nll") if isinstance(ev.get("nll"), dict) else {})
    h = report_html
    rows = [[label, h._fmt(values[key]), h._fmt(values.get(err)) if err else ""]
            for label, key, err in TEXT_METRIC_ROWS if values.get(key) is not None]
    how = f"checkpoint step {h._fmt(ev.get('checkpoint_step'))}; {h._fmt(ev.get('n'))} samples"
    return "Metrics", f'<p class="note">{html.escape(how)}</p>' + h._table(["metric", "value", "±"], rows, numeric=(1, 2))


TASK = TextTask
RUN = TextRun
