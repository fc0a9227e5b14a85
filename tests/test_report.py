"""`difflab report`: a self-contained page that headless Chromium renders with every image loaded,
the evaluation numbers in its table, grids that are exactly the seeded samples, and hints (not
crashes) for what is missing."""

from __future__ import annotations

import base64
import io as bytes_io
import json
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import grids, io
from difflab import report as rp
from difflab import report_html as rh
from difflab.cli import main
from difflab.evaluate.run_eval import update_eval_file
from difflab.tasks import load_run

from difflab.tasks.image import UNCONDITIONAL_ROWS
from difflab.tasks.text_to_image import REPORT_ROWS, default_prompts

from conftest import ROOT, TINY, difflab_cmd

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_TIMEOUT_S = 180
PER_ROW = 2  # --samples of the test report
CLASSES = 10  # digits
# A made-up evaluation in the format `difflab eval` writes. Every float has at most 4 significant
# digits, so the table (4 significant digits) must show each one verbatim.
EVAL = {"checkpoint_step": 4, "data": "digits", "n": 500, "seed": 0, "sampler": "dpmpp-2m", "steps": 20,
        "fid": 12.34, "kid": 0.0123, "kid_std": 0.0045, "precision": 0.812, "recall": 0.655,
        "density": 0.9731, "coverage": 0.884, "real_n": 360, "fid_real_n": 1437, "kid_se": 0.0005,
        "nll": {"bpd": 3.217, "bpd_stderr": 0.0421, "n": 64, "prior_bpd": 0.0012, "decoder_bpd": 1.834,
                "t": [0, 1, 10, 100, 500, 999], "kl_bpd": [1.834, 0.52, 0.31, 0.12, 0.02, 0.0012],
                "variance": "beta_tilde", "strata": 8}}


class _Page(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.images: list[dict[str, str]] = []
        self.cells: list[str] = []
        self.labels: list[str] = []
        self.prompts: list[str] = []
        self._into: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        elif tag == "img":
            self.images.append(a)
        elif tag == "td" or (tag == "span" and a.get("class") == "label") or (tag == "p" and a.get("class") == "prompt"):
            self._into = self.cells if tag == "td" else self.labels if tag == "span" else self.prompts
            self._into.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "span", "p"):
            self._into = None

    def handle_data(self, data):
        if self._into is not None:
            self._into[-1] += data


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "4", "--set", *TINY]) == 0
    update_eval_file(run, EVAL)  # the writer `difflab eval` uses
    return run


@pytest.fixture(scope="module")
def page(tiny_run) -> Path:
    assert main(["report", str(tiny_run), "--samples", str(PER_ROW), "--device", "cpu", "--no-progress"]) == 0
    return tiny_run / rp.REPORT_FILE


def chromium_dom(page: Path, profile: Path) -> str:
    """The DOM of ``page`` after load, as headless Chromium serialises it."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: `make browser` installs it (apt-get install chromium, as root)")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
           page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert res.returncode == 0 and "<body" in res.stdout, res.stderr[-2000:]
    return res.stdout


def test_every_image_loads_in_chromium_and_the_table_holds_the_numbers(page, tmp_path):
    static = _Page(page.read_text())
    expected = 1 + len(rh.DEFAULT_GRIDS) * CLASSES + 1  # training curves, one strip per grid row, ELBO
    assert len(static.images) == expected
    dom = _Page(chromium_dom(page, tmp_path / "profile"))
    assert dom.body.get("data-images-failed") == "0", dom.body
    assert dom.body.get("data-images-ok") == str(expected), dom.body
    cells = [c.strip() for c in dom.cells]
    for value in ("12.34", "0.0123", "0.0045", "0.812", "0.655", "0.9731", "0.884", "3.217", "0.0421", "1.834"):
        assert value in cells, value
    assert cells.count("500 generated vs 360 real") == 5 and "500 generated vs 1437 real" in cells  # FID: whole split
    assert "64 images" in cells
    assert dom.labels == [str(k) for k in range(CLASSES)] * len(rh.DEFAULT_GRIDS)  # class names beside rows


def test_page_is_self_contained(page):
    text = page.read_text()
    assert "default-src 'none'" in text  # the page's CSP forbids every fetch
    assert "<link" not in text and "url(" not in text and "http://" not in text and "https://" not in text
    for img in _Page(text).images:
        assert img["src"].startswith("data:image/png;base64,"), img["src"][:40]
        png = Image.open(bytes_io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        png.load()
        assert png.format == "PNG" and min(png.size) > 0


def _decode(src: str) -> np.ndarray:
    """A data URI's PNG as uint8 (H, W, C)."""
    a = np.asarray(Image.open(bytes_io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
    return a[..., None] if a.ndim == 2 else a


def test_grid_rows_are_the_seeded_samples_of_each_class(page, tiny_run):
    run = load_run(tiny_run, "cpu")
    labels = torch.arange(CLASSES).repeat_interleave(PER_ROW)
    images = run.sample(len(labels), sampler="ddim", steps=20, cond=labels, seed=0, progress=False).data
    strips = {img["alt"]: _decode(img["src"]) for img in _Page(page.read_text()).images}
    for k in range(CLASSES):
        expected = grids.image_grid(rh.upscale(images[k * PER_ROW:(k + 1) * PER_ROW]), ncol=PER_ROW)
        assert np.array_equal(strips[f"ddim, 20 steps, row {k}"], expected), k


def _ctx(run: Path, **options) -> rh.ReportContext:
    """The report context of a run folder, as `difflab report` builds it."""
    return rh.load_context(load_run(run), **options)


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(rp.REPORT_FILE))
    return dest


def test_missing_or_broken_evaluation_is_a_hint(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "run")
    (run / rh.EVAL_FILE).unlink()
    ctx = _ctx(run)
    for section in (rh.metrics_section, rh.elbo_section):
        _, body = section(ctx)
        assert "not computed yet: run `difflab eval" in body and "--data digits" in body and "<img" not in body
    (run / rh.EVAL_FILE).write_text(json.dumps({k: v for k, v in EVAL.items() if k != "nll"}))
    ctx = _ctx(run)
    assert "12.34" in rh.metrics_section(ctx)[1] and "NLL" not in rh.metrics_section(ctx)[1]
    assert "no NLL in metrics.json yet" in rh.elbo_section(ctx)[1]
    (run / rh.EVAL_FILE).write_text('{"fid": 1')  # torn write
    ctx = _ctx(run)
    assert "is not valid JSON" in rh.metrics_section(ctx)[1] and "run `difflab eval` again" in rh.metrics_section(ctx)[1]
    (run / io.METRICS_FILE).unlink()
    assert "no training log" in rh.training_section(_ctx(run))[1]


def test_stale_evaluation_is_flagged(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "run")
    (run / rh.EVAL_FILE).write_text(json.dumps({**EVAL, "checkpoint_step": 2}))
    assert "newest checkpoint is step 4" in rh.metrics_section(_ctx(run))[1]


def test_prompts_go_under_their_rows_and_sections_plug_in(tiny_run, tmp_path):
    rows = [rh.GridStrip("a", np.zeros((2, 8, 8, 1), np.uint8), prompt="a <red> circle"),
            rh.GridStrip("b", np.zeros((2, 8, 8, 3), np.uint8))]
    grid = rh.render_grid("t2i", rows)
    assert grid.count('class="row"') == 2 and grid.count('class="prompt"') == 1
    assert grid.index("a &lt;red&gt; circle") < grid.index(">b<")  # under row a, before row b

    def prompts_section(ctx: rh.ReportContext) -> tuple[str, str]:
        return "Prompts", grid

    out = rp.write_report(tiny_run, tmp_path / "r.html", sections=(rh.config_section, prompts_section))
    text = out.read_text()
    assert ">Prompts</a>" in text and "a &lt;red&gt; circle" in text and "Samples" not in text


def test_unconditional_rows(tiny_run):
    run = load_run(tiny_run)
    assert [r.label for r in run.grid_rows(3, 0)] == [str(k) for k in range(CLASSES)]
    run.config = replace(run.config, model=replace(run.config.model, num_classes=0))
    rows = run.grid_rows(3, 0)
    assert len(rows) == UNCONDITIONAL_ROWS and all(r.cond is None and r.prompt is None for r in rows)


def test_bad_run_folders_are_one_line_errors(tiny_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    nockpt = tmp_path / "nockpt"
    nockpt.mkdir()
    (nockpt / io.CONFIG_FILE).write_text((tiny_run / io.CONFIG_FILE).read_text())
    cases = ((empty, "not a run folder"), (nockpt, "no checkpoints"), (tmp_path / "nope", "does not exist"))
    for folder, words in cases:
        assert main(["report", str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
        assert not (folder / rp.REPORT_FILE).exists()


def test_report_help():
    res = subprocess.run(difflab_cmd("report", "--help"), cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "--samples" in res.stdout


def test_mixture_runs_get_scatter_plots_and_the_bound(tmp_path, capsys):
    """A 2-D mixture run (configs/mixture2d.yaml) has its own sections; image verbs refuse it in one line."""
    run = tmp_path / "mix"
    config = str(ROOT / "configs" / "mixture2d.yaml")
    assert main(["train", config, "--out", str(run), "--no-progress", "--max-steps", "3"]) == 0
    assert main(["report", str(run), "--no-progress"]) == 0
    text = (run / rp.REPORT_FILE).read_text()
    page = _Page(text)
    assert len(page.images) == 2  # training curves, one figure of scatter panels
    assert "Bound against the true entropy" in text and "true entropy H" in page.cells
    assert main(["sample", str(run), "--n", "4", "--steps", "5", "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["points"].shape == (4, 2)
    capsys.readouterr()
    assert main(["fid", str(run), "--n", "4", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "toy2d run" in err[0] and "FID" in err[0]


T2I = ["data.name=shapes", "data.size=64", "data.resolution=16", "model.text_encoder=scratch", "model.text_width=16",
       "model.text_layers=1", "model.text_heads=2", "model.patch_size=2", *TINY]


def test_text_to_image_report_prints_each_rows_prompt_under_it(tmp_path):
    """A text-to-image run's grids: one row per prompt drawn from the data, the prompt under its row, in Chromium."""
    run = tmp_path / "t2i"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "2", "--set", *T2I]) == 0
    assert main(["report", str(run), "--samples", "2", "--no-progress"]) == 0
    prompts = default_prompts(load_run(run).config, REPORT_ROWS, 0)
    dom = _Page(chromium_dom(run / rp.REPORT_FILE, tmp_path / "profile"))
    assert dom.body.get("data-images-failed") == "0", dom.body
    assert [p.strip() for p in dom.prompts] == prompts * len(rh.DEFAULT_GRIDS)
    assert all(p.startswith("a ") for p in prompts) and "#1" in dom.labels
