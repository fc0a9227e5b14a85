"""The pieces of ``difflab report``'s page: the context every section reads, HTML helpers (tables, embedded
PNGs and Agg figures, sample grids with a prompt under each row) and the sections every kind of run
shares (config, training curves, sample grids, the numbers of ``difflab eval``, the ELBO per step, the
environment). A kind of run lists its sections in its ``Run.report_sections()``; a missing piece is a
one-line "not computed yet", never an error.

Every image is a base64 PNG inside the page (plots from matplotlib's Agg renderer), so it opens offline.
"""

from __future__ import annotations

import base64
import html
import io as bytes_io
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from difflab import grids, io
from difflab.config import Config
from difflab.errors import UserError
from difflab.evaluate.run_eval import EVAL_FILE, read_eval_file
from difflab.tasks.base import rows_condition

DEFAULT_GRIDS: tuple[tuple[str, int], ...] = (("dpmpp-2m", 10), ("dpmpp-2m", 20), ("ddim", 20), ("ddpm", 100))
DEFAULT_SAMPLES = 8  # images per grid row
CELL_PX = 48  # a sample is shown at least this many pixels wide (nearest-neighbour upscaling)
PLOT_SIZE = (10.0, 3.2)  # inches, width x height of a figure
PLOT_DPI = 96
GIT_TIMEOUT_S = 5


# -- context ---------------------------------------------------------------------------------
@dataclass
class ReportContext:
    """Everything the section builders read: the loaded run and what was read beside it."""

    loaded: Any  # the run folder loaded as its kind's difflab.tasks.base.Run
    log_rows: list[dict[str, Any]]  # metrics.jsonl
    evaluation: dict[str, Any] | None  # metrics.json, None when absent or unreadable
    evaluation_problem: str | None = None  # why ``evaluation`` is None when the file exists
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    grids: Sequence[tuple[str, int]] = DEFAULT_GRIDS
    progress: bool = True

    @property
    def run(self) -> Path:
        """The run folder."""
        return Path(self.loaded.folder)

    @property
    def cfg(self) -> Config:
        return self.loaded.config

    @property
    def checkpoint_step(self) -> int:
        """Training step of the loaded (newest) checkpoint."""
        return self.loaded.checkpoint_step

    def eval_hint(self, problem: str = "not computed yet") -> str:
        """``problem`` and the command that fills in what ``difflab eval`` computes."""
        return f"{problem}: run `difflab eval {self.run} --data {self.cfg.data.name}`"


def _read_evaluation(run: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``metrics.json`` as a dict, or (None, why) when it is unreadable; (None, None) when absent."""
    if not (run / EVAL_FILE).exists():
        return None, None
    try:
        return read_eval_file(run), None
    except UserError as e:
        return None, f"{e} (then run `difflab eval` again)"


def load_context(loaded: Any, **options: Any) -> ReportContext:
    """The context of a report on ``loaded`` (a :class:`difflab.tasks.base.Run`).

    Args:
        loaded: the run folder, loaded.
        options: :class:`ReportContext` fields (samples, seed, device, grids, progress).
    """
    run = Path(loaded.folder)
    evaluation, problem = _read_evaluation(run)
    return ReportContext(loaded=loaded, log_rows=io.read_metrics(run), evaluation=evaluation,
                         evaluation_problem=problem, **options)


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


def wav_data_uri(wave: np.ndarray, sample_rate: int) -> str:
    """A float waveform (L,) in [-1, 1] as a 16-bit ``data:audio/wav;base64,...`` URI."""
    import wave as wav

    pcm = (np.clip(np.asarray(wave, dtype=np.float64), -1, 1) * 32767).round().astype("<i2")
    buf = bytes_io.BytesIO()
    with wav.open(buf, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def audio_tag(uri: str, label: str) -> str:
    """An ``<audio>`` player of a data URI, with its label."""
    return f'<figure class="audio"><figcaption>{html.escape(label)}</figcaption><audio controls src="{uri}"></audio></figure>'


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
class GridStrip:
    """One rendered row of a sample grid: a label beside it, an optional prompt under it."""

    label: str
    images: np.ndarray  # uint8 (N, H, W, C)
    prompt: str | None = None


def upscale(images: np.ndarray, cell_px: int = CELL_PX) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 (N, H, W, C) by the integer factor that reaches ``cell_px``."""
    factor = max(1, cell_px // images.shape[1])
    return images.repeat(factor, axis=1).repeat(factor, axis=2)  # (N, H*f, W*f, C)


def render_grid(title: str, rows: Sequence[GridStrip], note: str = "") -> str:
    """A sample grid as HTML: one PNG strip per row, its label beside it and its prompt under it."""
    parts = [f"<div><h3>{html.escape(title)}</h3>"]
    for row in rows:
        strip = grids.image_grid(upscale(row.images), ncol=len(row.images))
        parts.append(f'<div class="row"><span class="label">{html.escape(row.label)}</span>'
                     f'{_img(png_data_uri(strip), f"{title}, row {row.label}", "samples")}</div>')
        if row.prompt:
            parts.append(f'<p class="prompt">{html.escape(row.prompt)}</p>')
    return "".join(parts) + (f'<p class="note">{html.escape(note)}</p>' if note else "") + "</div>"


def samples_section(ctx: ReportContext) -> tuple[str, str]:
    """Seeded samples of the newest EMA weights for every (sampler, steps) of ``ctx.grids``: one row per
    row of the run's ``grid_rows`` (a class, a prompt printed under it, or a seed)."""
    run, N = ctx.loaded, ctx.samples
    rows = run.grid_rows(N, ctx.seed)
    cond = rows_condition(rows, N)
    parts = []
    for sampler, steps in tqdm(ctx.grids, desc="report: sampling grids", unit="grid", disable=not ctx.progress):
        t0 = time.perf_counter()
        images = run.sample(len(rows) * N, cond=cond, sampler=sampler, steps=steps, seed=ctx.seed,
                            progress=False).data
        strips = [GridStrip(r.label, images[i * N:(i + 1) * N], r.prompt) for i, r in enumerate(rows)]
        parts.append(render_grid(f"{sampler}, {steps} steps", strips,
                                 note=f"sampled in {time.perf_counter() - t0:.1f} s"))
    note = (f"checkpoint step {ctx.checkpoint_step} (EMA weights), seed {ctx.seed}, guidance "
            f"{ctx.cfg.sample.guidance}, {N} images per row")
    return "Samples", f'<p class="note">{html.escape(note)}</p><div class="grids">{"".join(parts)}</div>'


# (label, key, key of its +/-, key of the real-image count): FID is measured against the whole
# train split ("fid_real_n"), the others against a subset of it ("real_n"); see difflab.evaluate.run_eval.
_METRIC_ROWS = (("FID", "fid", None, "fid_real_n"), ("KID (± std over subsets)", "kid", "kid_std", "real_n"),
                ("precision", "precision", None, "real_n"), ("recall", "recall", None, "real_n"),
                ("density", "density", None, "real_n"), ("coverage", "coverage", None, "real_n"))


# (label, key, key of its +/-, whether it counts images) of an autoencoder's (or a VAE's) reconstructions
_RECONSTRUCTION_ROWS = (("PSNR (dB)", "psnr", "psnr_std", True), ("SSIM", "ssim", "ssim_std", True),
                        ("rFID", "rfid", None, True), ("latent scale (1 / std of z)", "latent_scale", None, False))


def _metric_rows(ev: dict[str, Any]) -> list[list[str]]:
    """Table rows (metric, value, +/-, samples) of an evaluation."""
    def counts(real_key: str) -> str:
        return f"{_fmt(ev.get('n'))} generated vs {_fmt(ev.get(real_key, ev.get('real_n')))} real"

    rows = [[name, _fmt(ev[key]), _fmt(ev.get(err)) if err else "", counts(real)]
            for name, key, err, real in _METRIC_ROWS if key in ev]
    recon_count = f"{_fmt(ev.get('recon_n', ev.get('n')))} test images, reconstructed"
    rows += [[name, _fmt(ev[key]), _fmt(ev.get(err)) if err else "", recon_count if count else ""]
             for name, key, err, count in _RECONSTRUCTION_ROWS if ev.get(key) is not None]
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
    made = f" from {_fmt(ev['sampler'])}" if "sampler" in ev else ""
    made += f" with {_fmt(ev['steps'])} steps" if "steps" in ev else ""
    against = f"against {_fmt(ev['real_n'])} images of " if "real_n" in ev else "of "
    outputs = _fmt(ev.get("outputs", "samples"))
    how = (f"checkpoint step {_fmt(ev.get('checkpoint_step'))}; {_fmt(ev.get('n'))} {outputs}{made}, "
           f"seed {_fmt(ev.get('seed'))}, {against}{_fmt(ev.get('data'))}")
    body = f'<p class="note">{how}</p>' + _table(["metric", "value", "±", "samples"], _metric_rows(ev), numeric=(1, 2))
    notes = ev.get("notes") if isinstance(ev.get("notes"), dict) else {}
    body += "".join(f'<p class="note">{html.escape(str(k).upper())}: {html.escape(str(v))}</p>'
                    for k, v in notes.items() if v)  # what a figure cannot tell at this sample size
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
