"""Configs: YAML round trip, overrides, unknown keys are errors, shipped configs are valid."""

from __future__ import annotations

import pytest
import yaml

from difflab.config import Config, apply_overrides, dump_config, from_dict, load_config, to_dict
from difflab.errors import UserError
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


@pytest.mark.parametrize("name", ["digits.yaml", "fashion_mnist.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert isinstance(cfg, Config)


def test_builtin_default_is_configs_digits():
    """`difflab demo` trains the built-in default; configs/digits.yaml spells it out."""
    assert to_dict(load_config(ROOT / "configs" / "digits.yaml")) == to_dict(resolve(Config()))
