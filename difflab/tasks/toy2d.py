"""2-D data of known density: mixture -> residual MLP -> loss for training (:class:`Toy2DTask`); a trained
run -> points, scatter plots and its variational bound against the exact entropy (:class:`Toy2DRun`).

The known-density check itself (bound - entropy = floor + excess) is
:mod:`difflab.evaluate.known_density`; ``bench/known_density.py`` measures it over training.
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from difflab import report_html
from difflab.config import Config
from difflab.data.mixture import GaussianMixture, load_mixture
from difflab.denoisers import Denoiser, NetworkDenoiser
from difflab.errors import UserError
from difflab.evaluate.known_density import bound_vs_entropy
from difflab.models.mlp import ResidualMLP
from difflab.paths import atomic_path
from difflab.schedules import Schedule, schedule_from_config
from difflab.tasks.base import SampleRequest, Samples, Section, a_run
from difflab.tasks.gaussian import GaussianRunBase, algorithm1

MIXTURE_POINTS = 2000  # samples in the report's scatter plots
MIXTURE_BOUND_SAMPLES = 2048  # samples of the report's bound against the entropy


def build_mlp(cfg: Config, data_dim: int) -> ResidualMLP:
    """The residual MLP described by ``cfg.model.mlp_*`` for samples of ``data_dim`` numbers."""
    return ResidualMLP(data_dim, width=cfg.model.mlp_width, num_blocks=cfg.model.mlp_blocks)


class Toy2DTask:
    """Unconditional diffusion on a Gaussian mixture; every batch is a fresh draw from p."""

    name = "toy2d"

    def __init__(self, cfg: Config) -> None:
        self.mixture: GaussianMixture = load_mixture(cfg.data.name)
        self.config = replace(cfg, task=self.name)
        self.schedule: Schedule = schedule_from_config(cfg.diffusion)
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> None:
        """Draw batches on the training device."""
        self.device = device

    def run_files(self) -> dict[str, str]:
        return {}

    def preview(self, model: nn.Module) -> None:
        return None

    def build_model(self) -> nn.Module:
        return build_mlp(self.config, self.mixture.dim)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """A fresh batch x0 (B, D) from the mixture drawn with ``generator``; no condition."""
        return self.mixture.sample(batch_size, generator, self.device), {}

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> Tensor:
        """Algorithm 1 on a fresh batch from the mixture drawn with ``generator``."""
        x0, cond = self.batch(batch_size, generator)
        return algorithm1(model, x0, cond, self.schedule, self.config, generator)


class Toy2DRun(GaussianRunBase):
    """A trained mixture run: unconditional points (n, D)."""

    task = "toy2d"

    def __init__(self, folder: Path, config: Config, model: nn.Module, checkpoint: Path) -> None:
        super().__init__(folder, config, model, checkpoint)
        self.mixture = load_mixture(config.data.name)

    @classmethod
    def build(cls, cfg: Config, folder: Path) -> nn.Module:
        return build_mlp(cfg, load_mixture(cfg.data.name).dim)

    def denoiser(self, guidance: float | None = None, dynamic_threshold: float | None = None) -> Denoiser:
        """The network as a denoiser, never clamped or thresholded (mixture data are not in [-1, 1]) nor guided."""
        return NetworkDenoiser(self.model, self.schedule, self.config.diffusion.prediction)

    def sample(self, n: int, *, cond: Any = None, sampler: str | None = None, steps: int | None = None,
               seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
               progress: bool = True, **options: Any) -> Samples:
        """``n`` points float32 (n, D)."""
        if cond is not None:
            raise UserError("a 2-D mixture run is unconditional: sample it without a condition")
        batches = self.draw(n, (self.mixture.dim,), lambda start, stop: None, sampler=sampler, steps=steps,
                            seed=seed, batch_size=batch_size, progress=progress, unit="point", **options)
        return Samples(torch.cat(batches).float().cpu().numpy())

    def save(self, samples: Samples, out: Path) -> Path:
        """``.npz`` (``points`` (n, D)) or ``.png`` (a scatter plot beside the data's)."""
        out = Path(out)
        if out.suffix == ".npz":
            with atomic_path(out) as tmp, open(tmp, "wb") as f:
                np.savez(f, points=samples.data)
        elif out.suffix == ".png":
            fig = scatter_figure([("samples", samples.data), ("data", self._data_points(0))])
            with atomic_path(out) as tmp:
                fig.savefig(tmp, format="png", dpi=report_html.PLOT_DPI, bbox_inches="tight")
        else:
            raise UserError(f"cannot write 2-D samples to {out}: use a .npz or .png file")
        return out

    outputs: ClassVar[dict[str, str]] = {".png": "a .png scatter plot", ".npz": "a .npz of points"}

    def default_output(self, sampler: str, steps: int) -> Path:
        return self.folder / "samples" / f"{sampler}-{steps}.png"

    def _data_points(self, seed: int) -> np.ndarray:
        return self.mixture.sample(MIXTURE_POINTS, generator=torch.Generator().manual_seed(seed)).numpy()

    def metrics(self, samples: Samples, **_: Any) -> dict[str, Any]:
        """The samples' mean negative log-density under the true mixture, beside its entropy H (equal for
        a perfect model; a model that collapses onto the modes scores below H, one that spreads, above)."""
        log_p = self.mixture.log_prob(torch.as_tensor(samples.data, dtype=torch.float64))
        return {"data": self.config.data.name, "n": len(samples), "data_nll": float(-log_p.mean()),
                "entropy": self.mixture.entropy()}

    def report_sections(self) -> Sequence[Section]:
        h = report_html
        return (h.config_section, h.training_section, mixture_samples_section, mixture_bound_section,
                h.environment_section)

    def request(self, args: argparse.Namespace, n: int | None, default_n: int) -> SampleRequest:
        return SampleRequest(n or MIXTURE_POINTS)


def load_toy_denoiser(run: str | Path, ckpt: Path | None = None, ema: bool = True) -> tuple[Config, Denoiser]:
    """The config and the denoiser of a mixture run at checkpoint ``ckpt`` (default: the newest), on the CPU."""
    from difflab.tasks import load_run

    loaded = load_run(run, ema=ema, checkpoint=ckpt)
    if not isinstance(loaded, Toy2DRun):
        raise UserError(f"{run} is {a_run(loaded.task)}, not a 2-D mixture run: pass the --out folder of "
                        f"`difflab train configs/mixture2d.yaml`")
    return loaded.config, loaded.denoiser()


# -- report sections -------------------------------------------------------------------------------
def scatter_figure(panels: Sequence[tuple[str, np.ndarray]]) -> Any:
    """Side-by-side scatter plots of (title, points (N, 2)), on the extent of the last panel (the data's)."""
    fig, axes = report_html._figure(len(panels))
    lim = 1.2 * float(np.abs(panels[-1][1]).max())
    for ax, (title, x) in zip(axes, panels):
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    return fig


def mixture_samples_section(ctx: Any) -> tuple[str, str]:
    """Scatter plots of model samples per (sampler, steps) beside samples of the true mixture."""
    run: Toy2DRun = ctx.loaded
    panels = [(f"{sampler}, {steps} steps", run.sample(MIXTURE_POINTS, sampler=sampler, steps=steps,
                                                       seed=ctx.seed, progress=False).data)
              for sampler, steps in ctx.grids]
    fig = scatter_figure([*panels, ("data", run._data_points(ctx.seed))])
    note = f"{MIXTURE_POINTS} points each, checkpoint step {ctx.checkpoint_step} (EMA weights), seed {ctx.seed}"
    return "Samples", f'<p class="note">{html.escape(note)}</p>' + report_html._img(
        report_html.figure_data_uri(fig), "samples")


def mixture_bound_section(ctx: Any) -> tuple[str, str]:
    """The variational bound of the run against the mixture's exact entropy (nats per sample)."""
    run: Toy2DRun = ctx.loaded
    c = bound_vs_entropy(run.denoiser(), run.mixture, run.schedule, n=MIXTURE_BOUND_SAMPLES, seed=ctx.seed)
    f = report_html._fmt
    rows = [["true entropy H", f(c.entropy)], ["bound (-ELBO)", f(c.bound)],
            ["bound - H", f"{f(c.gap)} ± {f(c.gap_se)}"],
            ["of which the exact denoiser's floor", f"{f(c.floor.mean)} ± {f(c.floor.se)}"],
            ["of which the network's excess", f"{f(c.excess.mean)} ± {f(c.excess.se)}"]]
    note = f"{MIXTURE_BOUND_SAMPLES} samples (bench/known_density.py measures with more)"
    return "Bound against the true entropy", f'<p class="note">{note}</p>' + report_html._table(
        ["nats", "value"], rows, (1,))


TASK = Toy2DTask
RUN = Toy2DRun
