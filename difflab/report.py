"""``difflab report RUN``: one self-contained HTML page about a run folder.

The page is a list of sections, each built by a function ``section(ctx) -> (title, html)`` from a
:class:`~difflab.report_html.ReportContext`; which sections, in which order, is the run's own
choice (``Run.report_sections()`` of its kind in :mod:`difflab.tasks`): images get the config, the
training curves, sample grids per sampler and step count (a prompt under each row of a text-to-image
run), the numbers of ``difflab eval``, the ELBO per step and the environment; 2-D mixtures get scatter
plots and their bound against the true entropy. A missing piece is a one-line "not computed yet",
never an error; only a folder that is not a trained run is (:class:`~difflab.errors.UserError`).

Every image is a base64 PNG inside the page, so it opens offline; the file is written atomically.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from difflab import files, io
from difflab.errors import UserError
from difflab.report_html import ReportContext, load_context
from difflab.report_page import PAGE
from difflab.tasks import load_run
from difflab.tasks.base import Section

REPORT_FILE = "report.html"
REPORT_SUFFIXES = (".html", ".htm")


def render_report(ctx: ReportContext, sections: Sequence[Section]) -> str:
    """The whole HTML page: a title, a table of contents and one ``<section>`` per builder."""
    nav, body = [], []
    for i, build in enumerate(sections):
        title, content = build(ctx)
        nav.append(f'<a href="#s{i}">{html.escape(title)}</a>')
        body.append(f'<section id="s{i}"><h2>{html.escape(title)}</h2>{content}</section>')
    subtitle = (f"{ctx.cfg.task} run on {ctx.cfg.data.name}, newest checkpoint step {ctx.checkpoint_step}, "
                f"run folder {ctx.run.resolve()}")
    return PAGE.substitute(title=html.escape(f"difflab report: {ctx.run.name}"), subtitle=html.escape(subtitle),
                           nav="".join(nav), body="\n".join(body))


def write_report(run: str | Path, out: str | Path | None = None, *, sections: Sequence[Section] | None = None,
                 **options: Any) -> Path:
    """Write the report of a run folder, atomically.

    Args:
        run: folder written by ``difflab train``.
        out: the HTML file; default ``RUN/report.html``.
        sections: the section builders, in page order; None = the run's ``report_sections()``.
        options: :class:`~difflab.report_html.ReportContext` fields (samples, seed, device, grids, progress).

    Returns:
        The path written.

    Raises:
        UserError: ``run`` is not a run folder, or has no checkpoint yet.
    """
    out = Path(out) if out is not None else Path(run) / REPORT_FILE
    if out.suffix.lower() not in REPORT_SUFFIXES:
        raise UserError(f"a report is an HTML page, so it cannot be written to {out}: name a .html file")
    files.check_output(out, "report")  # before any sampling
    loaded = load_run(run, options.get("device", "cpu"))
    ctx = load_context(loaded, **options)
    io.write_text_atomic(out, render_report(ctx, loaded.report_sections() if sections is None else sections))
    return out
