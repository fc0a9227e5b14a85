"""The command line: sampling outputs, and one-line errors (exit 2, no traceback) on bad input."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image

from difflab import io
from difflab.cli import main
from difflab.tasks import load_run

from conftest import ROOT, TINY, difflab_cmd


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "3", "--set", *TINY]) == 0
    return run


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sample_writes_npz_png_and_folder(tiny_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", str(tiny_run), "--n", "12", "--steps", "3", "--out", str(tmp_path / "s.npz"))
    assert code == 0, err
    z = np.load(tmp_path / "s.npz")
    assert z["images"].shape == (12, 8, 8, 1) and z["images"].dtype == np.uint8
    assert list(z["labels"]) == [i % 10 for i in range(12)]
    code, _, _ = run_cli(capsys, "sample", str(tiny_run), "--n", "5", "--class", "7", "--sampler", "heun",
                         "--steps", "2", "--out", str(tmp_path / "g.png"))
    assert code == 0 and Image.open(tmp_path / "g.png").size[0] > 8
    code, _, _ = run_cli(capsys, "sample", str(tiny_run), "--n", "3", "--sampler", "ddim", "--eta", "1",
                         "--steps", "2", "--out", str(tmp_path / "d"))
    assert code == 0 and len(list((tmp_path / "d").glob("*.png"))) == 3


def test_same_seed_same_samples(tiny_run, tmp_path, capsys):
    for name in ("a", "b"):
        run_cli(capsys, "sample", str(tiny_run), "--n", "4", "--steps", "3", "--sampler", "ddpm", "--seed", "5",
                "--out", str(tmp_path / f"{name}.npz"))
    assert np.array_equal(np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"])


def bad_inputs(run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "checkpoints").mkdir()
    cfg = yaml.safe_load((run / io.CONFIG_FILE).read_text())
    cfg["model"]["base_channels"] = 24
    (wrong / io.CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    ckpt = io.latest_checkpoint(run)
    (wrong / "checkpoints" / ckpt.name).symlink_to(ckpt)
    nockpt = tmp_path / "nockpt"
    nockpt.mkdir()
    (nockpt / io.CONFIG_FILE).write_text((run / io.CONFIG_FILE).read_text())
    clip = tmp_path / "clip"  # a CLIP run folder (its checkpoint is another run's: the kind is refused first)
    clip.mkdir()
    cfg["task"] = "clip"
    (clip / io.CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    (clip / "checkpoints").mkdir()
    (clip / "checkpoints" / ckpt.name).symlink_to(ckpt)
    weights = tmp_path / "extractor.safetensors"
    weights.write_bytes(b"not really")
    return {
        "missing data folder": (["train", "--out", str(tmp_path / "r1"), "--set", "data.name=image-folder",
                                 f"data.path={tmp_path / 'nope'}"], "does not exist"),
        "empty data folder": (["train", "--out", str(tmp_path / "r2"), "--set", "data.name=image-folder",
                               f"data.path={empty}"], "no images"),
        "unknown config key": (["train", "--out", str(tmp_path / "r3"), "--set", "model.widht=3"], "unknown config key"),
        "negative steps": (["train", "--out", str(tmp_path / "r4"), "--max-steps", "-5"], "must be zero or positive"),
        "negative sampling steps": (["sample", str(run), "--steps", "-3"], "must be positive"),
        "unknown sampler": (["sample", str(run), "--sampler", "fastest"], "unknown sampler"),
        "no checkpoints": (["sample", str(nockpt)], "no checkpoints"),
        "not a run folder": (["sample", str(empty)], "not a run folder"),
        "other architecture": (["sample", str(wrong)], "does not fit the model"),
        "unknown verb": (["paint"], "invalid choice"),
        "unknown task": (["train", "--out", str(tmp_path / "r5"), "--set", "task=segmentation"],
                         "unknown task 'segmentation': set task to one of image, text-to-image, toy2d, clip"),
        "image task with a text encoder": (["train", "--out", str(tmp_path / "r6"), "--set", "task=image",
                                            "model.text_encoder=scratch"], "set task=text-to-image"),
        "a CLIP run cannot sample": (["sample", str(clip)], "is a clip run, which cannot sample"),
        "a weights file is not a run": (["sample", str(weights)], "is a weights file"),
        "a prompt for a class run": (["sample", str(run), "--prompt", "a cat"],
                                     "is an image run, so --prompt cannot be used: its condition flags are --class"),
    }


def test_bad_input_is_one_line_exit_2(tiny_run, tmp_path, capsys):
    for case, (args, words) in bad_inputs(tiny_run, tmp_path).items():
        code, _, err = run_cli(capsys, *args)
        assert code == 2, case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (case, err)


def test_errors_have_no_traceback_in_a_real_process(tmp_path):
    res = subprocess.run(difflab_cmd("sample", str(tmp_path)), cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.parametrize("verb", ["train", "distill", "sample", "fid", "eval", "features", "demo", "report", "clip",
                                  "data"])
def test_help_for_every_verb(verb):
    res = subprocess.run(difflab_cmd(verb, "--help"), cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "usage: difflab" in res.stdout


def test_run_folders_of_the_previous_main_still_sample(tiny_run, tmp_path, capsys):
    """Configs saved before `task` named the kind said `task: diffusion`: mapped once, to the same kind."""
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    cfg = yaml.safe_load((old / io.CONFIG_FILE).read_text())
    assert cfg["task"] == "image"
    cfg["task"] = "diffusion"
    del cfg["diffusion"]["beta_start"], cfg["diffusion"]["beta_end"]  # keys the previous main did not have
    (old / io.CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    for run in (tiny_run, old):
        assert main(["sample", str(run), "--n", "4", "--steps", "3", "--out", str(tmp_path / f"{run.name}.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "old.npz")["images"], np.load(tmp_path / "run.npz")["images"])


def test_a_50_step_schedule_with_diffwaves_betas_trains_and_samples(tmp_path):
    run = tmp_path / "run"
    betas = ["diffusion.timesteps=50", "diffusion.beta_start=1e-4", "diffusion.beta_end=0.05"]
    assert main(["train", "--out", str(run), "--no-progress", "--max-steps", "2", "--set", *TINY, *betas]) == 0
    assert main(["sample", str(run), "--n", "4", "--steps", "50", "--sampler", "ddpm",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["images"].shape == (4, 8, 8, 1)
    schedule = load_run(run).schedule
    assert schedule.T == 50 and float(schedule.betas[0]) == 1e-4 and float(schedule.betas[-1]) == 0.05
