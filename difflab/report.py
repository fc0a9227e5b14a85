"""``difflab report RUN``: one self-contained HTML page about a run folder.

The page is a list of sections, each built by a function ``section(ctx) -> (title, html)``
from a :class:`ReportContext` (:data:`SECTIONS`): the resolved config, the training curves
(``metrics.jsonl``), sample grids per sampler and step count, the evaluation table and the
ELBO per timestep (``metrics.json``, written by ``difflab eval``) and the environment. A new
kind of run (text-to-image) adds its own builder to the list; the grid renderer already shows
a prompt under each row (:class:`GridRow`). A missing piece is a one-line "not computed yet",
never an error; only a folder that is not a trained run is (:class:`~difflab.errors.UserError`).

Every image is a base64 PNG inside the page (plots from matplotlib's Agg renderer), so it opens
offline; the file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io as bytes_io
import json
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from difflab import io
from difflab.config import Config
from difflab.errors import UserError
from difflab.evaluate.run_eval import EVAL_FILE
from difflab.report_page import PAGE

REPORT_FILE = "report.html"
DEFAULT_GRIDS: tuple[tuple[str, int], ...] = (("dpmpp-2m", 10), ("dpmpp-2m", 20), ("ddim", 20), ("ddpm", 100))
DEFAULT_SAMPLES = 8  # images per grid row
UNCONDITIONAL_ROWS = 4  # grid rows of an unconditional run
CELL_PX = 48  # a sample is shown at least this many pixels wide (nearest-neighbour upscaling)
PLOT_SIZE = (10.0, 3.2)  # inches, width x height of a figure
PLOT_DPI = 96
GIT_TIMEOUT_S = 5


# -- context ---------------------------------------------------------------------------------
@dataclass
class ReportContext:
    """Everything the section builders read; the model is loaded only by the samples section."""

    run: Path
    cfg: Config
    checkpoint: Path
    log_rows: list[dict[str, Any]]  # metrics.jsonl
    evaluation: dict[str, Any] | None  # metrics.json, None when absent or unreadable
    evaluation_problem: str | None = None  # why ``evaluation`` is None when the file exists
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    grids: Sequence[tuple[str, int]] = DEFAULT_GRIDS
    progress: bool = True

    @property
    def checkpoint_step(self) -> int:
        """Training step of the newest checkpoint (from its folder name ``step-NNNNNNNN``)."""
        return int(self.checkpoint.name.removeprefix(io.CHECKPOINT_PREFIX))

    def eval_hint(self, problem: str = "not computed yet") -> str:
        """``problem`` and the command that fills in what ``difflab eval`` computes."""
        return f"{problem}: run `difflab eval {self.run} --data {self.cfg.data.name}`"


def _read_evaluation(run: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``metrics.json`` as a dict, or (None, why) when it is unreadable; (None, None) when absent."""
    path = run / EVAL_FILE
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, f"{EVAL_FILE} could not be read ({e}): delete it and run `difflab eval` again"
    if not isinstance(data, dict):
        return None, f"{EVAL_FILE} does not hold a JSON object: delete it and run `difflab eval` again"
    return data, None


def load_context(run: str | Path, **options: Any) -> ReportContext:
    """Read a run folder for a report (a one-line UserError when it is not a trained run).

    Args:
        run: folder written by ``difflab train``.
        options: :class:`ReportContext` fields (samples, seed, device, grids, progress).

    Returns:
        The context every section builder reads.
    """
    run = Path(run)
    cfg = io.read_run_config(run)
    checkpoint = io.require_checkpoint(run)
    evaluation, problem = _read_evaluation(run)
    return ReportContext(run=run, cfg=cfg, checkpoint=checkpoint, log_rows=io.read_metrics(run),
                         evaluation=evaluation, evaluation_problem=problem, **options)


# -- html pieces -------------------------------------------------------------------------------
def png_data_uri(image: np.ndarray) -> str:
    """A uint8 image (H, W, C) with C in 1, 3, 4 as a ``data:image/png;base64,...`` URI."""
    buf = bytes_io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_data_uri(fig: Any) -> str:
    """A matplotlib Figure rendered by Agg as a PNG data URI."""
    buf = bytes_io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str, css: str = "") -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}"{f" class={css!r}" if css else ""}>'


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _fmt(value: Any) -> str:
    """A metric value for a table cell: ints as they are, floats to 4 significant digits."""
    if value is None:
        return "&mdash;"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(str(value))
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are already HTML (escaped by the caller); ``numeric`` columns align right."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(ncols: int = 1) -> tuple[Any, Any]:
    """A Figure with ``ncols`` axes, drawn by Agg (no pyplot, no display)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_SIZE, layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


# -- sections ----------------------------------------------------------------------------------
Section = Callable[[ReportContext], tuple[str, str]]  # ctx -> (title, html body)


def config_section(ctx: ReportContext) -> tuple[str, str]:
    """The resolved config.yaml, verbatim."""
    text = (ctx.run / io.CONFIG_FILE).read_text()
    return "Config", f"<pre>{html.escape(text)}</pre>"


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the log rows that hold ``key``."""
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _training_plot(rows: list[dict[str, Any]]) -> str:
    """Loss (log scale when positive) and learning rate against step, side by side, as an <img>."""
    fig, (ax_loss, ax_lr) = _figure(2)
    steps, loss = _series(rows, "loss")
    ax_loss.plot(steps, loss, color="tab:blue")
    if loss and min(loss) > 0:
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss (mean over each log window)")
    ax_lr.plot(*_series(rows, "lr"), color="tab:orange")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
    return _img(figure_data_uri(fig), "loss and learning rate against step")


def training_section(ctx: ReportContext) -> tuple[str, str]:
    """Loss and learning rate against step, and a line on speed and memory."""
    rows = ctx.log_rows
    if not rows:
        return "Training", _missing(f"no training log ({io.METRICS_FILE} is empty): train the run first")
    speed, rss = _series(rows, "img_per_s")[1], _series(rows, "peak_rss_mb")[1]
    facts = (f"{len(rows)} log rows up to step {_fmt(rows[-1].get('step'))}; "
             f"elapsed {_fmt(rows[-1].get('elapsed_s'))} s; median {_fmt(float(np.median(speed)) if speed else None)} images/s; "
             f"peak RSS {_fmt(max(rss) if rss else None)} MB; newest checkpoint: step {ctx.checkpoint_step}")
    return "Training", _training_plot(rows) + f'<p class="note">{facts}</p>'


@dataclass(frozen=True)
class GridRow:
    """One row of a sample grid: a label beside it, an optional prompt under it."""

    label: str
    images: np.ndarray  # uint8 (N, H, W, C)
    prompt: str | None = None


def upscale(images: np.ndarray, cell_px: int = CELL_PX) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 (N, H, W, C) by the integer factor that reaches ``cell_px``."""
    factor = max(1, cell_px // images.shape[1])
    return images.repeat(factor, axis=1).repeat(factor, axis=2)  # (N, H*f, W*f, C)


def render_grid(title: str, rows: Sequence[GridRow], note: str = "") -> str:
    """A sample grid as HTML: one PNG strip per row, its label beside it and its prompt under it."""
    parts = [f"<div><h3>{html.escape(title)}</h3>"]
    for row in rows:
        strip = io.image_grid(upscale(row.images), ncol=len(row.images))
        parts.append(f'<div class="row"><span class="label">{html.escape(row.label)}</span>'
                     f'{_img(png_data_uri(strip), f"{title}, row {row.label}", "samples")}</div>')
        if row.prompt:
            parts.append(f'<p class="prompt">{html.escape(row.prompt)}</p>')
    return "".join(parts) + (f'<p class="note">{html.escape(note)}</p>' if note else "") + "</div>"


def class_names(cfg: Config) -> list[str]:
    """Names of the run's classes from its dataset; the class ids when the dataset is not at hand."""
    from difflab.data import load_dataset

    K = cfg.model.num_classes
    try:
        d = cfg.data
        names = load_dataset(d.name, path=d.path, resolution=d.resolution, channels=d.channels, size=d.size,
                             holdout=d.holdout).class_names
    except UserError:
        names = []
    return list(names) if len(names) == K else [str(k) for k in range(K)]


def _row_conditions(ctx: ReportContext) -> tuple[list[str], torch.Tensor | None, int]:
    """Row labels, the class id of every image (None: unconditional) and images per row."""
    N, K = ctx.samples, ctx.cfg.model.num_classes
    if K:
        return class_names(ctx.cfg), torch.arange(K).repeat_interleave(N), N  # (K*N,) row-major
    return [f"#{r + 1}" for r in range(UNCONDITIONAL_ROWS)], None, N


def samples_section(ctx: ReportContext) -> tuple[str, str]:
    """Seeded samples of the newest EMA weights for every (sampler, steps) of ``ctx.grids``."""
    from difflab.tasks.image import generate, load_image_model

    cfg, model = load_image_model(ctx.run, ctx.device)
    labels, class_ids, N = _row_conditions(ctx)
    grids = []
    for sampler, steps in tqdm(ctx.grids, desc="report: sampling grids", unit="grid", disable=not ctx.progress):
        t0 = time.perf_counter()
        images, _ = generate(cfg, model, len(labels) * N, sampler=sampler, steps=steps, labels=class_ids,
                             seed=ctx.seed, progress=False)
        title = f"{sampler}, {steps} steps"
        rows = [GridRow(name, images[i * N:(i + 1) * N]) for i, name in enumerate(labels)]
        grids.append(render_grid(title, rows, note=f"sampled in {time.perf_counter() - t0:.1f} s"))
    note = (f"checkpoint step {ctx.checkpoint_step} (EMA weights), seed {ctx.seed}, guidance "
            f"{cfg.sample.guidance}, {N} images per row" + (", one row per class" if class_ids is not None else ""))
    return "Samples", f'<p class="note">{html.escape(note)}</p><div class="grids">{"".join(grids)}</div>'


# (label, key, key of its +/-, key of the real-image count): FID is measured against the whole
# train split ("fid_real_n"), the others against a subset of it ("real_n"); see difflab.evaluate.run_eval.
_METRIC_ROWS = (("FID", "fid", None, "fid_real_n"), ("KID (± std over subsets)", "kid", "kid_std", "real_n"),
                ("precision", "precision", None, "real_n"), ("recall", "recall", None, "real_n"),
                ("density", "density", None, "real_n"), ("coverage", "coverage", None, "real_n"))


def _metric_rows(ev: dict[str, Any]) -> list[list[str]]:
    """Table rows (metric, value, +/-, samples) of an evaluation."""
    def counts(real_key: str) -> str:
        return f"{_fmt(ev.get('n'))} generated vs {_fmt(ev.get(real_key, ev.get('real_n')))} real"

    rows = [[name, _fmt(ev[key]), _fmt(ev.get(err)) if err else "", counts(real)]
            for name, key, err, real in _METRIC_ROWS if key in ev]
    nll = ev.get("nll")
    if isinstance(nll, dict):
        nll_count = f"{_fmt(nll.get('n'))} images"
        rows += [["NLL (bits/dim, ELBO bound)", _fmt(nll.get("bpd")), _fmt(nll.get("bpd_stderr")), nll_count],
                 ["prior term L_T (bits/dim)", _fmt(nll.get("prior_bpd")), "", nll_count],
                 ["decoder term L_0 (bits/dim)", _fmt(nll.get("decoder_bpd")), "", nll_count]]
    return rows


def metrics_section(ctx: ReportContext) -> tuple[str, str]:
    """The numbers of ``difflab eval`` (metrics.json) with the sample counts behind them."""
    ev = ctx.evaluation
    if ev is None:
        return "Metrics", _missing(ctx.evaluation_problem or ctx.eval_hint())
    how = (f"checkpoint step {_fmt(ev.get('checkpoint_step'))}; {_fmt(ev.get('n'))} samples from "
           f"{_fmt(ev.get('sampler'))} with {_fmt(ev.get('steps'))} steps, seed {_fmt(ev.get('seed'))}, "
           f"against {_fmt(ev.get('real_n'))} images of {_fmt(ev.get('data'))}")
    body = f'<p class="note">{how}</p>' + _table(["metric", "value", "±", "samples"], _metric_rows(ev), numeric=(1, 2))
    if ev.get("checkpoint_step") not in (None, ctx.checkpoint_step):
        body += _missing(f"measured at step {ev['checkpoint_step']}, but the newest checkpoint is step "
                         f"{ctx.checkpoint_step}: run `difflab eval` again for current numbers")
    return "Metrics", body


def _elbo_curve(nll: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(t, kl_bpd) of an "nll" block, or None when it has no curve of equal lengths."""
    if not isinstance(nll, dict) or not isinstance(nll.get("t"), list) or not isinstance(nll.get("kl_bpd"), list):
        return None
    if not nll["t"] or len(nll["t"]) != len(nll["kl_bpd"]):
        return None
    return np.asarray(nll["t"], float), np.asarray(nll["kl_bpd"], float)


def elbo_section(ctx: ReportContext) -> tuple[str, str]:
    """The ELBO's KL term per timestep (bits/dim against t) from metrics.json's "nll" block."""
    nll = (ctx.evaluation or {}).get("nll")
    curve = _elbo_curve(nll)
    if curve is None:
        problem = "not computed yet" if ctx.evaluation is None else f"no NLL in {EVAL_FILE} yet"
        return "ELBO per step", _missing(ctx.evaluation_problem or ctx.eval_hint(problem))
    t, kl = curve
    fig, (ax,) = _figure()
    ax.plot(t, kl, marker="." if len(t) < 50 else None)
    if (kl > 0).all():
        ax.set_yscale("log")
    ax.set(xlabel="t", ylabel="KL term (bits/dim)", title="ELBO contribution of each timestep")
    ax.grid(alpha=0.3)
    estimate = "exact sum over all steps" if nll.get("strata") is None else f"{_fmt(nll['strata'])} strata"
    note = (f"{len(t)} points, {_fmt(nll.get('n'))} images, {estimate}, reverse variance "
            f"{_fmt(nll.get('variance'))}; total {_fmt(nll.get('bpd'))} bits/dim")
    return "ELBO per step", _img(figure_data_uri(fig), "ELBO KL term against t") + f'<p class="note">{note}</p>'


def _git_commit() -> str:
    """``git describe --always --dirty`` of the difflab source tree, or "unknown"."""
    try:
        res = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else "unknown"


def environment_section(ctx: ReportContext) -> tuple[str, str]:
    """Versions, device and threads the report (and its samples) were made with."""
    import matplotlib

    device = str(ctx.device)
    if ctx.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(ctx.device)})"
    facts = [("difflab commit", _git_commit()), ("torch", torch.__version__), ("device", device),
             ("torch threads", str(torch.get_num_threads())), ("python", platform.python_version()),
             ("platform", platform.platform()), ("numpy", np.__version__), ("matplotlib", matplotlib.__version__),
             ("written", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))]
    return "Environment", _table(["what", "value"], [[k, html.escape(v)] for k, v in facts])


SECTIONS: tuple[Section, ...] = (config_section, training_section, samples_section, metrics_section,
                                 elbo_section, environment_section)


# -- 2-D mixture runs (difflab.tasks.toy2d) ----------------------------------------------------
MIXTURE_POINTS = 2000  # samples in the scatter plot
MIXTURE_BOUND_SAMPLES = 2048  # samples for the bound against the entropy


def _mixture_run(ctx: ReportContext) -> tuple[Any, Any, Any]:
    """(denoiser, mixture, schedule) of a 2-D mixture run's newest EMA weights."""
    from difflab.data.mixture import load_mixture
    from difflab.schedules import make_schedule
    from difflab.tasks.toy2d import load_toy_denoiser

    cfg, denoiser = load_toy_denoiser(ctx.run, ctx.checkpoint)
    return denoiser, load_mixture(cfg.data.name), make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)


def mixture_samples_section(ctx: ReportContext) -> tuple[str, str]:
    """Scatter plots of model samples per (sampler, steps) beside samples of the true mixture."""
    from difflab.samplers import sample

    denoiser, mixture, schedule = _mixture_run(ctx)
    g = torch.Generator().manual_seed(ctx.seed)
    panels = [("data", mixture.sample(MIXTURE_POINTS, generator=g))]
    for sampler, steps in ctx.grids:
        x = sample(sampler, denoiser, (MIXTURE_POINTS, mixture.dim), schedule, steps=steps,
                   generator=torch.Generator().manual_seed(ctx.seed))
        panels.append((f"{sampler}, {steps} steps", x))
    fig, axes = _figure(len(panels))
    lim = 1.2 * float(panels[0][1].abs().max())  # the data's extent, shared by every panel
    for ax, (title, x) in zip(axes, panels):
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=1, alpha=0.4)
        ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    note = f"{MIXTURE_POINTS} points each, checkpoint step {ctx.checkpoint_step} (EMA weights), seed {ctx.seed}"
    return "Samples", f'<p class="note">{html.escape(note)}</p>' + _img(figure_data_uri(fig), "samples")


def mixture_bound_section(ctx: ReportContext) -> tuple[str, str]:
    """The variational bound of the run against the mixture's exact entropy (nats per sample)."""
    from difflab.tasks.toy2d import bound_vs_entropy

    denoiser, mixture, schedule = _mixture_run(ctx)
    c = bound_vs_entropy(denoiser, mixture, schedule, n=MIXTURE_BOUND_SAMPLES, seed=ctx.seed)
    rows = [["true entropy H", _fmt(c.entropy)], ["bound (-ELBO)", _fmt(c.bound)],
            ["bound - H", f"{_fmt(c.gap)} ± {_fmt(c.gap_se)}"],
            ["of which the exact denoiser's floor", f"{_fmt(c.floor.mean)} ± {_fmt(c.floor.se)}"],
            ["of which the network's excess", f"{_fmt(c.excess.mean)} ± {_fmt(c.excess.se)}"]]
    note = f"{MIXTURE_BOUND_SAMPLES} samples (bench/known_density.py measures with more)"
    return "Bound against the true entropy", f'<p class="note">{note}</p>' + _table(["nats", "value"], rows, (1,))


MIXTURE_SECTIONS: tuple[Section, ...] = (config_section, training_section, mixture_samples_section,
                                         mixture_bound_section, environment_section)


def default_sections(cfg: Config) -> tuple[Section, ...]:
    """The sections for a kind of run: 2-D mixtures or images."""
    from difflab.data.mixture import MIXTURES

    return MIXTURE_SECTIONS if cfg.data.name in MIXTURES else SECTIONS


# -- page ----------------------------------------------------------------------------------------
def render_report(ctx: ReportContext, sections: Sequence[Section] = SECTIONS) -> str:
    """The whole HTML page: a title, a table of contents and one ``<section>`` per builder."""
    nav, body = [], []
    for i, build in enumerate(sections):
        title, content = build(ctx)
        nav.append(f'<a href="#s{i}">{html.escape(title)}</a>')
        body.append(f'<section id="s{i}"><h2>{html.escape(title)}</h2>{content}</section>')
    subtitle = (f"{ctx.cfg.data.name}, newest checkpoint step {ctx.checkpoint_step}, "
                f"run folder {ctx.run.resolve()}")
    return PAGE.substitute(title=html.escape(f"difflab report: {ctx.run.name}"), subtitle=html.escape(subtitle),
                           nav="".join(nav), body="\n".join(body))


def write_report(run: str | Path, out: str | Path | None = None, *, sections: Sequence[Section] | None = None,
                 **options: Any) -> Path:
    """Write the report of a run folder, atomically.

    Args:
        run: folder written by ``difflab train``.
        out: the HTML file; default ``RUN/report.html``.
        sections: the section builders, in page order; None = :func:`default_sections` of the run.
        options: :class:`ReportContext` fields (samples, seed, device, grids, progress).

    Returns:
        The path written.

    Raises:
        UserError: ``run`` is not a run folder, or has no checkpoint yet.
    """
    ctx = load_context(run, **options)
    out = Path(out) if out is not None else ctx.run / REPORT_FILE
    io.write_text_atomic(out, render_report(ctx, default_sections(ctx.cfg) if sections is None else sections))
    return out
