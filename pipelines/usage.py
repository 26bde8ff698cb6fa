"""The command line's plumbing, in a leaf module so that every command module imports it at the
top (``cli.py`` imports the command modules to register them, so they cannot import ``cli``):
``UsageError`` (a problem the user can fix: one line, exit 2), the parser whose errors are one
line, ``run_args`` (parse, run, turn user errors into that line) and ``run_standalone`` (a
command module's own ``main``)."""

from __future__ import annotations

import argparse
import errno
import os
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


# ---------------------------------------------------------------------------------------------
# checks of the values users type, before anything runs
# ---------------------------------------------------------------------------------------------
def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low`` (``--limit -1`` is refused, not taken as "all
    but the last")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def int_in_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer in [``low``, ``high``] (e.g. x264's CRF, 0-51)."""

    def parse(text: str) -> int:
        value = int_at_least(low)(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    parse.__name__ = f"int in [{low}, {high}]"
    return parse


def _local(path: str) -> str | None:
    """``path`` as a local absolute real path, or None for a remote URL (s3://, gs://, ...)."""
    if "://" in path:
        if not path.startswith("file://"):
            return None
        path = path[len("file://") :]
    return os.path.realpath(os.path.abspath(path))


def corpus_root_of(path: str) -> str | None:
    """``defi.schemas.corpus.corpus_root_of``, imported when used (``defi --help`` loads no duckdb)."""
    from defi.schemas.corpus import corpus_root_of as find

    return find(path)


def refuse_inside_corpus(path: str, flag: str = "--out", root: str | None = None) -> None:
    """Refuse an output ``path`` that is a corpus root or lies inside one (found by walking up
    from it, or the command's ``--root``): what a command writes goes outside every root, except
    the parts a command writes in its own place there (curate, label, index)."""
    inside = corpus_root_of(path)
    if inside is None and root:
        r, p = _local(root), _local(path)
        if r and p and (p == r or p.startswith(r.rstrip(os.sep) + os.sep)):
            inside = r
    if inside is not None:
        raise UsageError(f"{flag} {path} is inside the corpus root {inside}; write outputs outside it")


def _parent_file(path: str) -> str | None:
    """The nearest existing ancestor of ``path`` when it is a file (so ``path`` cannot be made)."""
    p = os.path.dirname(os.path.abspath(path))
    while p and not os.path.exists(p):
        parent = os.path.dirname(p)
        p = "" if parent == p else parent
    return p if p and not os.path.isdir(p) else None


def check_out_file(out: str, flag: str = "--out", make_parents: bool = False, root: str | None = None) -> str:
    """Refuse an output path that cannot be a file: empty, an existing folder, under a file,
    inside a corpus root, or (unless ``make_parents``) in a folder that does not exist. Returns it
    unchanged."""
    if not out or not out.strip():
        raise UsageError(f"{flag} is empty; give a file name")
    if os.path.isdir(out) or out.endswith(("/", os.sep)):
        raise UsageError(f"{flag} {out} is a folder; give a file name")
    blocker = _parent_file(out)
    if blocker:
        raise UsageError(f"{flag} {out}: {blocker} is a file, not a folder")
    parent = os.path.dirname(os.path.abspath(out))
    if not make_parents and not os.path.isdir(parent):
        raise UsageError(f"{flag} {out}: folder {parent} does not exist")
    refuse_inside_corpus(out, flag, root)
    return out


def check_out_dir(out: str, flag: str = "--out", root: str | None = None, reuse: Callable[[str], bool] | None = None) -> str:
    """Refuse an output folder that cannot be one: empty, a file, under a file, inside a corpus
    root, or an existing non-empty folder, unless ``reuse(out)`` says this command may write into
    it again (a training run it resumes, an evaluation it redoes). Returns it unchanged."""
    if not out or not out.strip():
        raise UsageError(f"{flag} is empty; give a folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"{flag} {out} is a file, not a folder")
    blocker = _parent_file(out)
    if blocker:
        raise UsageError(f"{flag} {out}: {blocker} is a file, not a folder")
    refuse_inside_corpus(out, flag, root)
    if os.path.isdir(out) and any(os.scandir(out)) and not (reuse and reuse(out)):
        raise UsageError(f"{flag} {out} is not an empty folder; give a new or empty one")
    return out


# an OSError with one of these is the machine's answer to a write, not a bug: one line, exit 2
_WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


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
    nested = getattr(args, f"{args.command}_command", None)  # e.g. train_command = "gidm"
    name = f"{args.command} {nested}" if nested else args.command
    try:
        rc = args.func(args)
        # a command returns its exit code; some return their summary (a dict) or None: success
        return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0
    except (UsageError, CorpusError, SchemaError, ConfigError, FileNotFoundError) as e:
        sys.stderr.write(f"defi {name}: error: {one_line(e)}\n")
        return EXIT_USAGE
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        sys.stderr.write(f"defi {name}: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else "") + "\n")
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
