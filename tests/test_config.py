"""Configs: YAML round trip, overrides, unknown keys and out-of-range values are errors, shipped configs are valid."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import pytest
import yaml

from difflab.config import (EXAMPLE, RULE, TEXT_METHODS, Config, DiffusionConfig, apply_overrides, default_beta_end,
                            dump_config, from_dict, load_config, to_dict)
from difflab.errors import UserError
from difflab.models.unet import check_resolution
from difflab.tasks import resolve

from conftest import ROOT


def test_yaml_round_trip_is_identity():
    cfg = apply_overrides(Config(), ["train.lr=1e-3", "model.channel_mult=[1,2,4]", "data.path=/x"])
    assert from_dict(Config, yaml.safe_load(dump_config(cfg))) == cfg
    assert cfg.train.lr == 1e-3 and cfg.model.channel_mult == (1, 2, 4)


@pytest.mark.parametrize("override, words", [
    (["model.widht=3"], "unknown config key model.widht"),
    (["nope.x=1"], "unknown config key nope.x"),
    (["train.lr=fast"], "train.lr must be float"),
    (["train.max_steps=1.5"], "train.max_steps must be int"),
    (["train.lr"], "key=value"),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(UserError, match=words):
        apply_overrides(Config(), override)


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match="unknown config key train.learning_rate"):
        load_config(p)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert isinstance(cfg, Config)


def test_the_text_configs_share_the_network_and_the_budget():
    """BENCHMARKS.md compares the text methods at the same parameter count and budget: their configs say so."""
    from difflab.tasks.text_methods import text_method

    configs = {p.stem: load_config(p) for p in (ROOT / "configs").glob("text_*.yaml")}
    assert sorted(c.text.method for c in configs.values()) == sorted(TEXT_METHODS)
    V = 73  # the Bible's characters
    sizes = {name: sum(q.numel() for q in text_method(c, V).build().parameters()) for name, c in configs.items()}
    assert max(sizes.values()) / min(sizes.values()) < 1.05, sizes
    assert {(c.text.length, c.train.max_minutes, c.train.batch_size) for c in configs.values()} == {(256, 20, 32)}


def test_builtin_default_is_configs_digits():
    """`difflab demo` trains the built-in default; configs/digits.yaml spells it out."""
    assert to_dict(load_config(ROOT / "configs" / "digits.yaml")) == to_dict(resolve(Config()))


# -- value rules: every source of a config is checked where it is read ------------------------------
@pytest.mark.parametrize("override, key, fix", [
    ("train.lr=-1", "train.lr must be positive", "--set train.lr=0.001"),  # positive
    ("clip.temperature=0", "clip.temperature must be positive", "--set clip.temperature=0.07"),
    ("train.weight_decay=-0.1", "train.weight_decay must be zero or more", "--set train.weight_decay=0.0"),  # >= 0
    ("train.keep_checkpoints=-1", "train.keep_checkpoints must be zero or more", "--set train.keep_checkpoints=2"),
    ("train.batch_size=0", "train.batch_size must be at least 1", "--set train.batch_size=128"),  # at_least(n)
    ("model.num_res_blocks=0", "model.num_res_blocks must be at least 1", "--set model.num_res_blocks=2"),
    ("diffusion.timesteps=1", "diffusion.timesteps must be at least 2", "--set diffusion.timesteps=1000"),
    ("train.ema_decay=1", r"train.ema_decay must be in \[0, 1\)", "--set train.ema_decay=0.995"),  # half open
    ("model.dropout=1.0", r"model.dropout must be in \[0, 1\)", "--set model.dropout=0.0"),
    ("model.cond_drop_prob=1.5", r"model.cond_drop_prob must be in \[0, 1\]", "--set model.cond_drop_prob=0.1"),
    ("diffusion.beta_end=1", r"diffusion.beta_end must be in \(0, 1\)", "--set diffusion.beta_end=0.02"),
    ("data.channels=2", "data.channels must be one of 1, 3, 4", "--set data.channels=3"),  # one_of
    ("data.resolution=0", "data.resolution must be positive", "--set data.resolution=32"),  # example for a None default
    ("model.channel_mult=[]", "model.channel_mult must be a non-empty list", r"--set model.channel_mult=\[1,2\]"),
    ("model.attention_levels=[-1]", "model.attention_levels must be a list", r"--set model.attention_levels=\[1\]"),
    ("train.lr=.nan", "train.lr must be finite and positive", "--set train.lr=0.001"),
    ("train.max_minutes=0", "train.max_minutes must be positive", "--set train.max_minutes=5.0"),
])
def test_out_of_range_values_name_the_key_and_a_fix(override, key, fix):
    with pytest.raises(UserError, match=f"config key {key}.*, got .*: fix it with {fix}$"):
        apply_overrides(Config(), [override])


def test_boundary_values_that_mean_something_are_accepted():
    """0 = keep every checkpoint (io.save_checkpoint), no clipping, no warm-up; null = no minute budget."""
    cfg = apply_overrides(Config(), ["train.keep_checkpoints=0", "train.grad_clip=0", "train.warmup_steps=0",
                                     "train.max_minutes=null", "train.max_steps=0", "train.ema_decay=0",
                                     "model.cond_drop_prob=1", "sample.guidance=0", "diffusion.timesteps=21"])
    assert cfg.train.keep_checkpoints == 0 and cfg.train.max_minutes is None


def test_every_default_satisfies_its_rule():
    """The defaults are the examples the errors suggest, so each must pass its own rule."""
    cfg = Config()
    for section in (getattr(cfg, f.name) for f in fields(cfg) if is_dataclass(getattr(cfg, f.name))):
        for f in fields(section):
            rule = f.metadata.get(RULE)
            if rule is not None:
                example = f.default if f.default is not None else f.metadata[EXAMPLE]
                assert rule.test(example), f"{type(section).__name__}.{f.name}"


@pytest.mark.parametrize("overrides, words", [
    (["model.attention_levels=[2]"], r"model.attention_levels=\[2\] names levels .*fix it with --set "
                                     r"model.attention_levels=\[\]"),
    (["model.base_channels=12"], "model.norm_groups=8 does not divide the level widths .*--set model.norm_groups=6 "
                                 "or --set model.base_channels=16"),
    (["model.num_heads=3"], "model.num_heads=3 does not divide the attention widths .*--set model.num_heads=2"),
    (["model.text_heads=3"], "model.text_heads=3 does not divide model.text_width=128: fix it with --set "
                             "model.text_heads=2"),
    (["clip.text_width=30"], "clip.text_heads=4 does not divide clip.text_width=30: fix it with --set "
                             "clip.text_heads=3"),
    (["diffusion.timesteps=10"], "diffusion.timesteps=10 makes the linear schedule's last beta 2 >= 1.*"
                                 "--set diffusion.timesteps=1000, or give the range: --set diffusion.beta_start="),
    (["diffusion.beta_start=0.1", "diffusion.beta_end=0.01"], "beta_start=0.1 is above diffusion.beta_end=0.01: "
                                                              "fix it with --set diffusion.beta_start="),
    (["diffusion.beta_end=0.05"], r"diffusion.beta_start \(null\) and diffusion.beta_end \(0.05\) go together"),
])
def test_cross_field_rules_name_the_keys_and_a_fix(overrides, words):
    with pytest.raises(UserError, match=words):
        apply_overrides(Config(), overrides)


def test_small_linear_T_is_fine_with_an_explicit_range_or_the_cosine_schedule():
    """T = 20 scales DDPM's range to beta_T = 1; its own beta range or the cosine schedule keeps beta_T < 1."""
    apply_overrides(Config(), ["diffusion.timesteps=20", "diffusion.beta_start=1e-4", "diffusion.beta_end=0.05"])
    apply_overrides(Config(), ["diffusion.timesteps=10", "diffusion.schedule=cosine"])


@pytest.mark.parametrize("T", [20, 21, 40, 1000])
def test_default_beta_end_is_the_schedules(T):
    """config repeats DDPM's beta_T (difflab.schedules imports config): the two must agree."""
    from difflab.schedules import schedule_from_config

    assert default_beta_end(T) == pytest.approx(float(schedule_from_config(DiffusionConfig(timesteps=T)).betas[-1]))


def test_rules_apply_to_yaml_files_and_saved_run_configs(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: -1\n")
    with pytest.raises(UserError, match="config key train.lr must be positive"):
        load_config(p)
    p.write_text(dump_config(Config()).replace("norm_groups: 8", "norm_groups: 5"))  # as a run's config.yaml
    with pytest.raises(UserError, match="model.norm_groups=5 does not divide"):
        load_config(p)


def test_resolution_check_names_a_valid_resolution():
    check_resolution(28, (1, 2), 2)
    check_resolution(32, (1, 2, 2), 2)
    with pytest.raises(UserError, match="data.resolution 28 is not a positive multiple of 8.*data.resolution=24 or 32"):
        check_resolution(28, (1, 2, 2), 2)
    with pytest.raises(UserError, match="data.resolution=4,"):
        check_resolution(3, (1, 2), 2)


def test_cli_bad_value_is_one_line_and_exit_2(tmp_path, capsys):
    from difflab.cli import main

    assert main(["train", "--out", str(tmp_path / "run"), "--set", "train.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.lr must be positive" in err and "--set train.lr=" in err
    assert "Traceback" not in err
