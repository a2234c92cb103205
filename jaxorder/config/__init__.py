"""Typed experiment configs: YAML files with `include:`, dotted overrides, strict validation.

A config file is a YAML mapping whose top-level keys are the sections of `Config` (``model``,
``objective``, ``data``, ``optimizer``, ``train``, ``eval``, ...) plus an optional ``include:`` list
of other YAML files (paths relative to the including file) that are merged first, later files
and the including file winning. Overrides are ``section.field=value`` strings whose values are
parsed as YAML scalars and then checked against the field's type.

Three modules, imported in this order: `schema` (the dataclasses and allowed values), `checks`
(`validate`), `loading` (read, merge, override, coerce, save). Callers use this package's names.
"""
from jaxorder.config.checks import EMBEDDED_CORPUS_MAX_PARAMS, validate
from jaxorder.config.loading import (
    apply_overrides,
    diff,
    from_dict,
    load,
    load_saved,
    parse_override,
    read_yaml_mapping,
    save,
    settle_query_positions,
    to_dict,
    to_yaml,
)
from jaxorder.config.schema import (
    ATTENTION_IMPLS,
    BACKWARD_REWRITES,
    DATA_SOURCES,
    DATA_TRANSFORMS,
    DEFAULT_RULES,
    DISTRIBUTED_MODES,
    DTYPES,
    MESH_AXES,
    MULTIPLY_MAX_DIGITS,
    POSITION_KINDS,
    QUERY_POSITIONS,
    REMAT_POLICIES,
    TOKENIZERS,
    WANDB_MODES,
    CompileConfig,
    Config,
    DataConfig,
    DistributedConfig,
    EvalConfig,
    LoggingConfig,
    MeshConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimizerConfig,
    ProfileConfig,
    TrainConfig,
    WandbConfig,
    declared_objective_options,
)
from jaxorder.errors import ConfigError  # `from jaxorder.config import ConfigError` is the usual spelling

__all__ = [
    "ATTENTION_IMPLS", "BACKWARD_REWRITES", "DATA_SOURCES", "DATA_TRANSFORMS", "DEFAULT_RULES",
    "DISTRIBUTED_MODES", "DTYPES", "EMBEDDED_CORPUS_MAX_PARAMS", "MESH_AXES", "MULTIPLY_MAX_DIGITS",
    "POSITION_KINDS", "QUERY_POSITIONS", "REMAT_POLICIES", "TOKENIZERS", "WANDB_MODES",
    "CompileConfig", "Config", "ConfigError", "DataConfig", "DistributedConfig", "EvalConfig",
    "LoggingConfig", "MeshConfig", "ModelConfig", "ObjectiveConfig", "OptimizerConfig", "ProfileConfig",
    "TrainConfig", "WandbConfig", "apply_overrides", "declared_objective_options", "diff", "from_dict",
    "load", "load_saved", "parse_override", "read_yaml_mapping", "save", "settle_query_positions",
    "to_dict", "to_yaml", "validate",
]
