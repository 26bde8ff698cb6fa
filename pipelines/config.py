"""Nested dataclass configs: load from YAML/TOML, override by flags, validate, print, save.

One mechanism for every run config: a config is a dataclass whose fields are scalars, lists or
nested dataclasses (operators are dataclasses whose fields are their parameters, so a run config
composes the operators themselves). ``add_flags`` generates one ``--section.field`` flag per leaf,
so ``--help`` documents every parameter with its default and no override can be silently dropped:
an unknown key in a file or a bad value names the key and lists the valid ones, all at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

UNSET = object()  # a generated flag's default: the user did not give it


class ConfigError(ValueError):
    """Bad config entries; the message lists every one."""


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _field_types(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _float(value: Any) -> float:
    f = float(value)
    if f != f:  # NaN compares false with everything: as a threshold it would filter nothing
        raise ValueError(f"not a number: {value!r}")
    return f


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a file or flag value to the field's type; raise ConfigError naming the key."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key}: may not be null")
    origin = get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"not an integer: {value!r}")
            return int(value)
        if base is float:
            return _float(value)
        if base is str:
            return str(value)
        if origin in (list, tuple):
            (inner, *_) = get_args(base) or (str,)
            if isinstance(value, str):
                value = [v for v in (s.strip() for s in value.split(",")) if v]
            return [_coerce(v, inner, key) for v in value]
        if origin is dict or base is dict:
            if isinstance(value, str):
                value = json.loads(value)
            return dict(value)
        if get_origin(base) is typing.Literal:
            if value not in get_args(base):
                raise ValueError(f"{value!r} is not one of {list(get_args(base))}")
            return value
    except (TypeError, ValueError, json.JSONDecodeError) as e:
        raise ConfigError(f"{key}: {e}") from None
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build ``cls`` from a (partial) dict; every unknown key or bad value is reported at once."""
    errors: list[str] = []
    cfg = _build(cls, data, prefix, errors)
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg


def renamed_sections(cls: type) -> dict[str, str]:
    """A config class' renamed sections, old name -> new (its ``RENAMED`` class variable)."""
    return dict(getattr(cls, "RENAMED", {}))


def rename_sections(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a ``cls`` layer: file, saved run config) with each renamed section under its new
    name; a layer giving both has them merged, the new name's values winning."""
    if not isinstance(data, dict) or not (renamed := renamed_sections(cls)):
        return data
    out = dict(data)
    for old, new in renamed.items():
        if old in out:
            value = out.pop(old)
            out[new] = merge(value, out[new]) if isinstance(value, dict) and isinstance(out.get(new), dict) else out.get(new, value)
    return out


def _build(cls: type, data: dict[str, Any], prefix: str, errors: list[str]) -> Any:
    data = rename_sections(cls, data)
    types_ = _field_types(cls)
    kwargs = {}
    for k, v in (data or {}).items():
        key = f"{prefix}{k}"
        if k not in types_:
            errors.append(f"unknown key {key!r} (valid: {', '.join(sorted(types_))})")
            continue
        tp = types_[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                errors.append(f"{key}: expected a section, got {v!r}")
                continue
            kwargs[k] = _build(tp, v, key + ".", errors)
        else:
            try:
                kwargs[k] = _coerce(v, tp, key)
            except ConfigError as e:
                errors.append(str(e))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # __post_init__ validation
        errors.append(f"{prefix.rstrip('.') or cls.__name__}: {e}")
        return cls()


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON config file into a dict (a mapping at the
    top level); every problem is a ``ConfigError`` naming the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p}: {e}") from None
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: {str(e).splitlines()[0]}") from None
    elif p.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: {e}") from None
    elif p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: invalid JSON: {e}") from None
    else:
        raise ConfigError(f"config file {p}: unknown extension (use .yaml, .toml or .json)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: the top level must be a mapping of sections and fields, got a {type(data).__name__}")
    return data


def leaves(cls: type, prefix: str = "", default: Any = None) -> list[tuple[str, Any, Any, str]]:
    """(dotted key, type, default, help) for every leaf field of a nested config class. A section's
    defaults are those of the instance its parent builds (a ``default_factory`` may differ from
    the section class's own defaults: the policy trains 2000 steps, ``TrainConfig()`` 1000)."""
    out = []
    default = cls() if default is None else default
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = _field_types(cls)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += leaves(tp, key + ".", getattr(default, f.name))
        else:
            out.append((key, tp, getattr(default, f.name), f.metadata.get("help", "")))
    return out


def flag_name(key: str) -> str:
    """The flag of a config key: a top-level field is kebab-case like every other flag
    (``gidm_model`` -> ``--gidm-model``); a dotted path keeps the config file's spelling
    (``--data.gap_s``), so a flag can be read back as the key it sets."""
    return f"--{key}" if "." in key else "--" + key.replace("_", "-")


def _with_default(help_: str, shown: Any) -> str:
    """The field's help and its default, unless the help already says what the default means."""
    if "default" in help_ or shown == "":  # "(default: )" would say nothing
        return help_
    return f"{help_ + ' ' if help_ else ''}(default: {shown})"


class DeprecatedSpelling(argparse.Action):
    """An old spelling of a flag (the snake_case ``--gidm_model``, a renamed section's
    ``--policy.head``), accepted so that scripts written with it keep working: hidden from --help,
    with a one-line note naming the flag."""

    def __init__(self, *args, new: str, **kwargs):
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        sys.stderr.write(f"{parser.prog}: note: {option_string} is deprecated; use {self.new}\n")
        setattr(namespace, self.dest, values)


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    group_title: str = "config",
    groups: dict[str, str] | None = None,
    hidden: tuple[str, ...] = (),
) -> None:
    """One flag per leaf of ``cls`` (see ``flag_name``); values stay strings until ``apply_flags``.
    ``groups`` (section name -> description) lists a section's flags under a heading of their own;
    the ``hidden`` keys get no flag (a command that sets them itself)."""
    has_file = "--config" in parser._option_string_actions  # eval has none: its help must not mention one
    g = parser.add_argument_group(group_title, "every field of the run config" + ("; flags override the --config file" if has_file else ""))
    sections = {name: parser.add_argument_group(f"--{name}.*", about) for name, about in (groups or {}).items()}
    for key, tp, default, help_ in leaves(cls):
        if key in hidden:
            continue
        g_key = sections.get(key.split(".")[0], g) if "." in key else g
        base, _ = _unwrap_optional(tp)
        meta = "LIST" if get_origin(base) in (list, tuple) else base.__name__.upper() if isinstance(base, type) else "VALUE"
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        flag = flag_name(key)
        g_key.add_argument(flag, dest=f"cfg__{key}", default=UNSET, metavar=meta, help=_with_default(help_, shown))
        old = [f"--{key}"] if flag != f"--{key}" else []
        old += [f"--{o}.{key[len(n) + 1 :]}" for o, n in renamed_sections(cls).items() if key.startswith(n + ".")]
        for spelling in old:
            g_key.add_argument(spelling, dest=f"cfg__{key}", default=UNSET, help=argparse.SUPPRESS, action=DeprecatedSpelling, new=flag)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The nested dict of flags the user actually gave."""
    out: dict[str, Any] = {}
    for name, value in vars(args).items():
        if not name.startswith("cfg__") or value is UNSET:
            continue
        parts = name[len("cfg__") :].split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(cls: type, config_file: str | None, args: argparse.Namespace | None) -> Any:
    """Defaults <- config file <- flags, validated."""
    data = load_file(config_file) if config_file else {}
    if args is not None:
        data = merge(data, flag_overrides(args))
    return from_dict(cls, data)
