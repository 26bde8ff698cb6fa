"""One path from a command line to a config-driven run: ``CommandSpec`` and ``run_command``.

Every command whose work is described by a config class (``defi curate``, ``dedup``, ``label
latent-actions|captions``, ``train gidm|gfdm|joint|policy``, ``eval``, ``demo``) declares a
``CommandSpec`` and its ``cmd_*`` is ``run_command(SPEC, args)``, which:

1. resolves the config from layers, lowest first: the preset's defaults (the spec's ``build``) <-
   ``--config`` file <- the generated ``--section.field`` flags <- the command's shortcut flags
   (its ``shortcuts`` table, read by ``shortcut_layer``); a bad entry is one ``UsageError`` line;
2. ``--dry-run``: prints the resolved config as the JSON of ``to_dict(cfg)`` and exits 0;
3. refuses a run without the inputs it ``requires`` (the parser cannot mark them required, since
   ``--dry-run`` needs none), then ``check``s the output folder;
4. relaunches itself under torchrun for ``--workers N`` where the spec says so;
5. ``run(args, cfg)``; the ``errors`` it names become one ``UsageError`` line;
6. ``summary(args, result)`` prints what the run did and gives the exit code (None: 0).

Torch-free: ``defi --help`` imports this module.
"""

from __future__ import annotations

import argparse
import builtins
import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import UNSET, ConfigError, flag_overrides, from_dict, load_file, merge, to_dict
from .usage import UsageError, one_line

# a shortcut's value, where the table says to put the flag's value (``VALUE``) rather than a constant
VALUE = object()

# A shortcut table maps a flag's argparse dest to what it sets when given (a flag not given, None
# or False, sets nothing): a dotted config key (the flag's value goes there), or a mapping of
# dotted keys to values (``VALUE``: the flag's value; anything else: that constant). Within the
# layer, a key a flag sets to its value wins over a constant another flag implies (``--gap-s``
# clears the file's ``data.gap_frames``, but with ``--gap-frames`` too both stay and are refused).
Shortcuts = Mapping[str, "str | Mapping[str, Any]"]

# the gap in either unit replaces the other unit's gap from a lower layer (a --config file)
GAP_SHORTCUTS: dict[str, dict[str, Any]] = {
    "gap_s": {"data.gap_s": VALUE, "data.gap_frames": None},
    "gap_frames": {"data.gap_frames": VALUE, "data.gap_s": None},
}
# --local and --address of the corpus-level commands (dedup, label) and curate's --address
RUNNER_SHORTCUTS: dict[str, Any] = {"local": {"runner": "local"}, "address": "ray.address"}


def _put(layer: dict[str, Any], dotted: str, value: Any) -> None:
    *path, leaf = dotted.split(".")
    for part in path:
        layer = layer.setdefault(part, {})
    layer[leaf] = value


def _given(value: Any) -> bool:
    """A flag the user gave: not None, not a store_true left False, not an untouched generated flag."""
    return value is not None and value is not False and value is not UNSET


def shortcut_layer(args: argparse.Namespace, shortcuts: Shortcuts) -> dict[str, Any]:
    """The config layer of the shortcut flags in ``shortcuts`` that the user gave (see ``Shortcuts``)."""
    implied: dict[str, Any] = {}
    explicit: dict[str, Any] = {}
    for dest, target in shortcuts.items():
        value = getattr(args, dest, None)
        if not _given(value):
            continue
        for dotted, v in ({target: VALUE} if isinstance(target, str) else target).items():
            if v is VALUE:
                explicit[dotted] = value
            else:
                implied[dotted] = v
    layer: dict[str, Any] = {}
    for dotted, v in {**implied, **explicit}.items():
        _put(layer, dotted, v)
    return layer


def cli_layers(args: argparse.Namespace, shortcuts: Shortcuts) -> list[dict[str, Any]]:
    """The layers a command line gives, lowest first: ``--config`` file, generated flags, shortcut flags."""
    config = getattr(args, "config", None)
    return [load_file(config) if config else {}, flag_overrides(args), shortcut_layer(args, shortcuts)]


def print_config(cfg: Any) -> None:
    """What ``--dry-run`` prints, for every command: the resolved config as JSON."""
    print(json.dumps(to_dict(cfg), indent=2))


def require(args: argparse.Namespace, names: tuple[str, ...], cfg: Any = None) -> None:
    """Refuse a run without the inputs it needs: each of ``names`` given as a flag (or, for a
    config that holds its inputs, as the config's field). ``--dry-run`` needs none of them."""
    missing = [f"--{n.replace('_', '-')}" for n in names if not (getattr(args, n, None) or getattr(cfg, n, None))]
    if missing:
        raise UsageError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (only --dry-run runs without)")


def _exceptions(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    out = []
    for name in names:
        module, _, attr = name.rpartition(".")
        out.append(getattr(importlib.import_module(module) if module else builtins, attr))
    return tuple(out)


@dataclass(frozen=True)
class CommandSpec:
    """A config-driven command, declared once (see the module docstring).

    - ``name``: as typed after ``defi`` (``"train gidm"``); its last word is the torchrun relaunch's.
    - ``build(args, *layers) -> cfg``: the config of the preset the flags pick with ``layers``
      (nested dicts, lowest first) over it; raises ``ConfigError``.
    - ``shortcuts``: the command's shortcut flags (``Shortcuts``).
    - ``requires``: the inputs a run needs (argparse dests, or the config's own fields).
    - ``check(args, cfg)``: refuses an output the run cannot write (None: nothing to check).
    - ``run(args, cfg) -> result`` and ``summary(args, result) -> exit code or None`` (prints).
    - ``errors``: dotted names of the exceptions ``run`` raises for bad input (one line, exit 2);
      imported when the command runs, so that ``--help`` loads none of their modules.
    - ``relaunch``: ``--workers N`` runs the command as N processes under torchrun.
    """

    name: str
    build: Callable[..., Any]
    run: Callable[[argparse.Namespace, Any], Any]
    summary: Callable[[argparse.Namespace, Any], int | None]
    shortcuts: Shortcuts = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    check: Callable[[argparse.Namespace, Any], None] | None = None
    errors: tuple[str, ...] = ("ValueError",)
    relaunch: bool = False

    def make_config(self, args: argparse.Namespace) -> Any:
        """The resolved config of a command line; raises ``ConfigError``."""
        return self.build(args, *cli_layers(args, self.shortcuts))


def run_command(spec: CommandSpec, args: argparse.Namespace) -> int:
    """Resolve, ``--dry-run`` print, require, check, relaunch, run and summarise (module docstring)."""
    try:
        cfg = spec.make_config(args)
    except (ConfigError, ValueError) as e:
        raise UsageError(one_line(e)) from None
    if getattr(args, "dry_run", False):
        print_config(cfg)
        return 0
    require(args, spec.requires, cfg)
    errors = _exceptions(spec.errors)
    try:
        if spec.check is not None:
            spec.check(args, cfg)
        if spec.relaunch:
            from .train_common import relaunch

            rc = relaunch(args, spec.name.split()[-1])
            if rc is not None:
                return rc
        result = spec.run(args, cfg)
    except errors as e:
        raise UsageError(one_line(e)) from None
    rc = spec.summary(args, result)
    return 0 if rc is None else rc


def layered(cls: type) -> Callable[..., Any]:
    """A spec's ``build`` for a config without presets: ``cls``'s defaults <- each layer."""

    def build(_args: argparse.Namespace, *layers: dict[str, Any]) -> Any:
        data: dict[str, Any] = {}
        for layer in layers:
            data = merge(data, layer)
        return from_dict(cls, data)

    return build


def add_dry_run_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit (needs no inputs)")


def print_run_record(args: argparse.Namespace, rec: dict[str, Any]) -> None:
    """The line naming a corpus-level run's record, ``ROOT/runs/<run_id>.json``."""
    print(f"run record: {args.root.rstrip('/')}/runs/{rec['run_id']}.json")
