"""Reading, merging, overriding, coercing and writing configs (YAML, local or gs://)."""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from jaxorder.config.checks import validate
from jaxorder.config.schema import (
    MESH_AXES,
    Config,
    ObjectiveConfig,
    closest_key_hint,
    declared_objective_options,
)
from jaxorder.errors import ConfigError
from jaxorder.paths import as_path, is_url
from jaxorder.registry import OBJECTIVES


def _read_yaml(path: Any, seen: tuple[Any, ...] = ()) -> dict:
    """Reads one YAML file (local or gs://) and merges its ``include:`` files underneath it."""
    path = as_path(path) if is_url(path) else Path(path).resolve()
    if path in seen:
        raise ConfigError(f"config include cycle: {' -> '.join(str(p) for p in seen + (path,))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (check the path)")
    raw = read_yaml_mapping(path, "a config")
    includes = raw.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(inc, str) for inc in includes):
        raise ConfigError(f"{path}: include must be a file name or a list of file names, got {includes!r}")
    merged: dict = {}
    for inc in includes:
        merged = _deep_merge(merged, _read_yaml(path.parent / inc, seen + (path,)))
    return _deep_merge(merged, raw)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parses ``section.field=value`` into (dotted key, YAML-parsed value)."""
    if not isinstance(text, str):  # e.g. a YAML flow list split an unquoted value at its commas
        raise ConfigError(f"override {text!r} is not a string section.field=value; in a YAML list, quote "
                          f"values that contain commas (e.g. 'objective.candidate_orders=perm:5,1,0,2-')")
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.field=value (e.g. train.steps=500)")
    key, value = text.split("=", 1)
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(f"override key '{key}' must name section.field (e.g. model.n_layers)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for ov in overrides:
        key, value = parse_override(ov)
        section, name = key.split(".")
        sec = out.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"config section '{section}' must be a mapping")
        sec[name] = value
    return out


def _coerce_rules(value: Any, where: str) -> tuple:
    """[[logical, mesh | [mesh, ...] | null], ...] -> tuple of (logical, mesh spec) pairs."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list of [logical_axis, mesh_axes] pairs")
    rules = []
    for rule in value:
        if not (isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ConfigError(f"{where}: rule {rule!r} must be [logical_axis, mesh_axis "
                              f"| [mesh_axes] | null]")
        logical, target = rule
        targets = [target] if isinstance(target, str) else list(target or [])
        unknown = [t for t in targets if t not in MESH_AXES]
        if unknown:
            raise ConfigError(f"{where}: unknown mesh axis {unknown[0]!r} in rule for '{logical}'; "
                              f"mesh axes are {', '.join(MESH_AXES)}")
        rules.append((logical, tuple(targets) if isinstance(target, (list, tuple)) else target))
    return tuple(rules)


def _coerce_mapping(value: Any, cls: Any, where: str) -> Any:
    """A nested config mapping (e.g. logging.wandb: {project: P}) -> its frozen dataclass."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, e.g. {{{dataclasses.fields(cls)[0].name}: ...}}, "
                          f"got {value!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in value:
        if k not in names:
            raise ConfigError(f"unknown config key '{where}.{k}'{closest_key_hint(str(k), names)}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in value.items()})


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if dataclasses.is_dataclass(typ):
        return _coerce_mapping(value, typ, where)
    if typ is tuple:
        return _coerce_rules(value, where)
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # no setting means anything at nan or inf
                raise ConfigError(f"{where} must be a finite number, got {value!r}")
            return number
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    tname = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{where} must be {tname}, got {value!r} ({type(value).__name__})")


def from_dict(raw: dict) -> Config:
    """Builds a validated Config from a nested mapping (unknown keys are errors)."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    kwargs = {}
    for sec_name, sec_val in raw.items():
        if sec_name not in sections:
            hint = closest_key_hint(sec_name, list(sections))
            raise ConfigError(f"unknown config section '{sec_name}'{hint}")
        if sec_val is None:
            sec_val = {}
        if not isinstance(sec_val, dict):
            raise ConfigError(f"config section '{sec_name}' must be a mapping, got {sec_val!r}")
        cls = sections[sec_name].default_factory  # type: ignore[misc]
        if cls is ObjectiveConfig:
            kwargs[sec_name] = _objective_section(sec_val)
            continue
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for k, v in sec_val.items():
            if k not in fields:
                raise ConfigError(f"unknown config key '{sec_name}.{k}'{closest_key_hint(k, sorted(fields))}")
            values[k] = _coerce(v, hints[k], f"{sec_name}.{k}")
        kwargs[sec_name] = cls(**values)
    cfg = Config(**kwargs)
    validate(cfg)
    return settle_query_positions(cfg)


def settle_query_positions(cfg: Config) -> Config:
    """`cfg` with model.query_positions=auto replaced by its objective's registered choice, so a saved
    run config names the mode its network was trained in."""
    if cfg.model.query_positions != "auto":
        return cfg
    mode = OBJECTIVES.get(cfg.objective.name).query_positions
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, query_positions=mode))


def _objective_section(raw: dict) -> ObjectiveConfig:
    """The objective section: `name` and the declared options, each coerced to its default's type."""
    declared = declared_objective_options()
    options = []
    for k, v in raw.items():
        if k == "name":
            continue
        if k not in declared:
            hint = closest_key_hint(k, ["name", *sorted(declared)])
            raise ConfigError(f"unknown config key 'objective.{k}'{hint}")
        listed = isinstance(v, list) and all(isinstance(x, str) for x in v)
        if listed and isinstance(declared[k].default, str):
            v = ",".join(v)  # a comma-list option written as a YAML list (objective.candidate_orders)
        options.append((k, _coerce(v, type(declared[k].default), f"objective.{k}")))
    name = _coerce(raw.get("name", ObjectiveConfig.name), str, "objective.name")
    return ObjectiveConfig(name=name, options=tuple(options))


def load(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    raw = _read_yaml(path) if path else {}
    return from_dict(apply_overrides(raw, overrides))


def read_yaml_mapping(path: Any, what: str) -> dict:
    """`yaml.safe_load` of a local or remote (gs://) file that must hold a mapping; one-line errors."""
    from etils import epath

    path = epath.Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          f"save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e}); check the path") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {what} must be a YAML mapping, got {type(raw).__name__}")
    return raw


def load_saved(path: Any) -> Config:
    """A resolved config saved by `save` (no includes), from a local or remote (gs://) path.

    A config saved before model.query_positions existed is read with `current`: the only mode
    its run can have been trained in."""
    raw = read_yaml_mapping(path, "a saved config")
    if isinstance(raw.get("model"), dict) and "query_positions" not in raw["model"]:
        raw = {**raw, "model": {**raw["model"], "query_positions": "current"}}
    return from_dict(raw)


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists), suitable for YAML/JSON."""
    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v
    out = {sec: {k: plain(v) for k, v in vals.items()} for sec, vals in dataclasses.asdict(cfg).items()}
    out["objective"] = {"name": cfg.objective.name, **dict(cfg.objective.options)}  # options as flat keys
    return out


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save(cfg: Config, path: Any) -> None:
    """Writes the resolved config (local or gs:// path)."""
    from etils import epath

    epath.Path(path).write_text(to_yaml(cfg))


def diff(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ, as 'key: a -> b'."""
    out = []
    da, db = to_dict(a), to_dict(b)
    for sec in da:
        for k in da[sec]:
            if da[sec][k] != db[sec][k]:
                out.append(f"{sec}.{k}: {da[sec][k]!r} -> {db[sec][k]!r}")
    return out
