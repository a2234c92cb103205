"""Config parsing, includes, overrides and validation errors."""
from pathlib import Path

import pytest

from jaxorder import config as config_lib
from jaxorder.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = config_lib.load(None)
    config_lib.save(cfg, tmp_path / "c.yaml")
    assert config_lib.load(tmp_path / "c.yaml") == cfg


def test_include_then_file_then_overrides(tmp_path):
    (tmp_path / "model.yaml").write_text("model: {d_model: 64, n_heads: 4, n_layers: 3}\n")
    (tmp_path / "exp.yaml").write_text("include: [model.yaml]\nmodel: {n_layers: 5}\ntrain: {steps: 7}\n")
    cfg = config_lib.load(tmp_path / "exp.yaml", ["train.steps=9", "optimizer.lr=1e-4", "objective.name=mdm"])
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.train.steps) == (64, 5, 9)
    assert cfg.optimizer.lr == pytest.approx(1e-4) and isinstance(cfg.optimizer.lr, float)
    assert cfg.objective.name == "mdm"


def test_repo_configs_load():
    for path in (REPO / "configs" / "experiments").glob("*.yaml"):
        required = ["data.path=gs://bucket/prepared"] if path.stem in ("1b", "8b") else []  # no default
        config_lib.load(path, required)
    cfg = config_lib.load(REPO / "configs" / "experiments" / "l2r_tiny.yaml")
    assert cfg.model.d_model == 128 and cfg.objective.name == "l2r"


@pytest.mark.parametrize("overrides, message", [
    (["model.n_layer=2"], "did you mean 'n_layers'"),
    (["modle.n_layers=2"], "did you mean 'model'"),
    (["train.steps=abc"], "train.steps must be int"),
    (["train.steps=1.5"], "train.steps must be int"),
    (["model.d_model=130"], "not divisible by model.n_heads"),
    (["data.seq_len=1024"], "longer than model.max_len"),
    (["objective.name=foo"], "objective.name='foo' is not one of"),
    (["model.backward_rewrites=fast"], "model.backward_rewrites='fast' is not one of: auto, cpu, none"),
    (["data.source=text"], "needs data.path"),
    (["train.max_to_keep=1"], "max_to_keep must be >= 2"),
    (["steps=3"], "section.field"),
    (["train.steps"], "section.field=value"),
    ([5], "override 5 is not a string section.field=value; in a YAML list, quote"),  # a flow list split
    (["train.antithetic=true"], "unknown config key"),
    # each family's own checks, reached through its registered Objective
    (["objective.name=bd3", "objective.block_size=5"], "block_size=5 must divide data.seq_len=128"),
    (["objective.name=bd3", "model.max_len=200"], "bd3 trains on 2 x data.seq_len=256"),
    (["objective.name=bd3", "objective.noise_min=0.9", "objective.noise_max=0.5"],
     "noise_min < objective.noise_max"),
    (["objective.name=ao_ar", "objective.l2r_fraction=0.7", "objective.r2l_fraction=0.5"], "sum to <= 1"),
    (["objective.name=latent_order", "objective.num_orders=1"], "num_orders=1 must be >= 1"),
])
def test_bad_overrides_raise_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        config_lib.load(None, overrides)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_lib.load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        config_lib.load(tmp_path / "list.yaml")
    (tmp_path / "a.yaml").write_text("include: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        config_lib.load(tmp_path / "a.yaml")


def test_diff_lists_changed_fields():
    a = config_lib.load(None)
    b = config_lib.load(None, ["model.d_model=64", "train.steps=5"])
    assert config_lib.diff(a, b) == ["model.d_model: 128 -> 64", "train.steps: 300 -> 5"]
