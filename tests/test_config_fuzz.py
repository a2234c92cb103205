"""Config fuzz: random YAML trees and random overrides of every key end in a valid Config or the
project's one-line ConfigError, never another exception. Only loading and validation run (no
model, no data), so the thousand examples take seconds."""
from __future__ import annotations

import dataclasses

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxorder import config as config_lib
from jaxorder.config import Config, ConfigError

# Derandomized: the same examples on every run, so a failure in CI reproduces locally.
FUZZ = settings(max_examples=500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]
KEYS = sorted([f"{sec}.{f.name}" for sec, cls in SECTIONS.items() if sec != "objective"
               for f in dataclasses.fields(cls)]
              + ["objective.name", *(f"objective.{k}" for k in config_lib.declared_objective_options())])
FIELD_NAMES = sorted({k.split(".")[1] for k in KEYS})

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["l2r", "mdm", "bd3", "text", "byte", "bpe", "float32", "auto", "cpu", "-1", "1e-3"]))
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.sampled_from(list(SECTIONS)), st.text(max_size=8),
                 st.integers(), st.booleans(), st.none())
trees = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                         st.dictionaries(keys, children, max_size=5)),
                     max_leaves=20)
# Mostly section -> {field: value} mappings (reaching validation), sometimes anything at all.
configs = st.one_of(
    st.dictionaries(st.sampled_from([*SECTIONS, "include"]),
                    st.dictionaries(st.sampled_from(FIELD_NAMES), trees, max_size=6), max_size=5),
    trees)
values = st.one_of(st.text(max_size=16), scalars.map(lambda v: yaml.safe_dump(v).strip().removesuffix("...")),
                   trees.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))


def loads_or_config_error(load) -> None:
    try:
        cfg = load()
    except ConfigError as e:
        assert str(e).strip() and "\n" not in str(e), repr(str(e))
        return
    assert isinstance(cfg, Config)
    config_lib.validate(cfg)


@FUZZ
@given(tree=configs)
def test_random_yaml_trees(tree, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(yaml.safe_dump(tree))
    loads_or_config_error(lambda: config_lib.load(path))


@FUZZ
@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=4))
def test_random_overrides_of_every_key(overrides):
    loads_or_config_error(lambda: config_lib.load(None, [f"{k}={v}" for k, v in overrides]))
