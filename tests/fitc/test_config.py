"""Config loader: defaults < YAML < flags, unknown keys with the nearest valid key, bad values."""

from __future__ import annotations

import pytest

from fitc.artifacts import Budget
from fitc.config import RunConfig, load_config
from fitc.errors import ConfigError


def test_defaults_are_the_documented_main_job():
    cfg = load_config(None)
    assert cfg.model == "digits-mlp"
    assert cfg.budgets() == []  # the pipeline's default budget, size=1/16, applies
    assert str(cfg.run_dir()) == "runs/digits-mlp_size-1-16"
    assert cfg.until == "estimate"


def test_yaml_then_flags_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "model: digits-cnn\nfinetune_epochs: 3\nweight_bits: [8, 4]\nbudget: [size=1/32]\n"
    )
    cfg = load_config(f, finetune_epochs=5, seed=None)
    assert cfg.model == "digits-cnn"
    assert cfg.finetune_epochs == 5  # flag wins
    assert cfg.weight_bits == (8, 4)
    assert cfg.budgets() == [Budget("size", 1 / 32)]


def test_base_is_below_file_and_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\n")
    cfg = load_config(f, base={"seed": 1, "model": "digits-cnn"}, out="x")
    assert (cfg.seed, cfg.model, cfg.out) == (3, "digits-cnn", "x")


@pytest.mark.parametrize(
    "text, match",
    [
        ("budjet: [size=1/16]\n", "did you mean 'budget'"),
        ("finetune_epoch: 3\n", "did you mean 'finetune_epochs'"),
        ("model: [1, 2]\n", "key 'model' must be a string"),
        ("seed: abc\n", "key 'seed' must be an integer"),
        ("progress: maybe\n", "key 'progress' must be true or false"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("a: [\n", "not valid YAML"),
        ("algorithm: dijkstra\n", "algorithm='dijkstra' is not valid"),
        ("budget: [size=2]\n", "fraction of the float model"),
        ("budget: [size]\n", "must look like KIND=VALUE"),
        ("budget: [foo=3]\n", "unknown budget kind 'foo'"),
        ("device: xc7z020\n", "device and fraction go together"),
        ("weight_bits: [8, 1]\n", "bit widths in 2..16"),
        ("strategy: Fast\n", "strategy must be"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_budget_parsing_round_trip():
    assert Budget.parse("size=1/16") == Budget.parse("size=0.0625")
    assert str(Budget.parse("lut=20000")) == "lut=20000"
    assert Budget.from_dict(Budget.parse("bops=0.02").to_dict()) == Budget("bops", 0.02)


def test_config_round_trips_through_dict():
    cfg = RunConfig(model="digits-cnn", budget=("size=1/32", "dsp=0"))
    assert load_config(None, base=cfg.to_dict()) == cfg
