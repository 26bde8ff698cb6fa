"""The command line's plumbing, in a leaf module so that every command module imports it at the
top (``cli.py`` imports the command modules to register them, so they cannot import ``cli``):
``UsageError`` (a problem the user can fix: one line, exit 2), the parser whose errors are one
line, ``run_args`` (parse, run, turn user errors into that line) and ``run_standalone`` (a
command module's own ``main``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .config import ConfigError

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too; keep it short)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def one_line(e: BaseException) -> str:
    """A multi-line message (config validation lists one bad field per line) as one line."""
    parts = [p.strip() for p in str(e).splitlines() if p.strip()]
    return " ".join(p if p.endswith(":") else p + ";" for p in parts).rstrip(";")


def run_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """Parse ``argv`` and run the chosen command. A user error prints one line,
    ``defi COMMAND [SUBCOMMAND]: error: ...``, and returns 2; Ctrl-C returns 130."""
    # here, not at the top: `defi --help` need not load duckdb and pyarrow
    from defi.schemas.corpus import CorpusError
    from defi.schemas.tables import SchemaError

    args = parser.parse_args(argv)
    args.argv = list(argv)
    try:
        rc = args.func(args)
        # a command returns its exit code; some return their summary (a dict) or None: success
        return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0
    except (UsageError, CorpusError, SchemaError, ConfigError, FileNotFoundError) as e:
        nested = getattr(args, f"{args.command}_command", None)  # e.g. train_command = "gidm"
        name = f"{args.command} {nested}" if nested else args.command
        sys.stderr.write(f"defi {name}: error: {one_line(e)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


def run_standalone(registrars: Sequence[Callable], argv: Sequence[str] | None, prefix: Sequence[str] = ()) -> int:
    """A module's own ``main``: a ``defi`` parser with only the subcommands ``registrars`` add,
    run on ``prefix + argv`` (argv defaults to ``sys.argv[1:]``)."""
    p = Parser(prog="defi")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)
    for register in registrars:
        register(sub)
    return run_args(p, [*prefix, *(sys.argv[1:] if argv is None else argv)])
