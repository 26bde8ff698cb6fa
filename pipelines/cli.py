"""The ``defi`` command line. Every subcommand has ``--help``; user errors (bad flag, bad SQL,
missing root) print one line naming the problem and exit with code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from .command import CommandSpec, add_dry_run_flag, layered, print_run_record, run_command
from .usage import (
    EXIT_USAGE,
    UsageError,
    check_out_file,
    corpus_root_of,
    int_at_least,
    one_line,
    run_args,
    run_standalone,
)
from .usage import Parser as _Parser

__all__ = ["EXIT_USAGE", "UsageError", "build_parser", "check_out_file", "main", "one_line", "run_args", "run_standalone"]


# ---------------------------------------------------------------------------------------------
# query / info / index
# ---------------------------------------------------------------------------------------------
def _open(root: str):
    from defi.schemas.corpus import Corpus

    return Corpus.open(root)


def _identifies(column: str) -> bool:
    """A column whose values are copied into the next command (``key``, ``clip_key``, ``run_id``):
    shown whole, since a shortened key names no clip."""
    return column == "key" or column.endswith(("_key", "_id"))


def format_table(table, max_rows: int = 50, max_width: int = 40) -> str:
    """Plain-text table of an Arrow table (first ``max_rows`` rows); cells longer than
    ``max_width`` are shortened with "…", except in key and id columns."""
    cols = table.column_names
    rows = table.slice(0, max_rows).to_pylist()

    def cell(v, whole: bool) -> str:
        if isinstance(v, float):
            s = f"{v:.6g}"
        elif v is None:
            s = "NULL"
        else:
            s = str(v)
        return s if whole or len(s) <= max_width else s[: max_width - 1] + "…"

    cells = [[cell(r[c], _identifies(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=False)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) for r in cells]
    more = table.num_rows - len(rows)
    lines.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}" + (f", {more} not shown)" if more > 0 else ")"))
    return "\n".join(lines)


def write_result(table, fmt: str, out: str | None) -> None:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if fmt == "table":
        print(format_table(table))
        return
    if fmt == "parquet":
        if not out:
            raise UsageError("--format parquet needs --out FILE")
        pq.write_table(table, out)
        return
    if fmt == "csv":
        # quote the header only where a name needs it (pyarrow's "needed" quotes every name)
        plain = all(not any(ch in c for ch in ',"\n') for c in table.column_names)
        opts = pcsv.WriteOptions(quoting_style="needed", quoting_header="none" if plain else "all_valid")
        if out:
            pcsv.write_csv(table, out, opts)
        else:
            import io

            buf = io.BytesIO()
            pcsv.write_csv(table, buf, opts)
            sys.stdout.write(buf.getvalue().decode())
        return
    if fmt == "json":
        text = "\n".join(json.dumps(r, default=str) for r in table.to_pylist())
        if out:
            with open(out, "w") as f:
                f.write(text + "\n")
        else:
            print(text)
        return
    raise UsageError(f"unknown format {fmt!r}; valid: table, csv, json, parquet")


def cmd_query(args) -> int:
    from defi.pipelines.text_search import DEFAULT_SQL, search_tables

    if args.out is not None:
        check_out_file(args.out, root=args.root)
    if args.sql is None and args.text is None:
        raise UsageError("give SQL to run (or --text to rank clips by a text)")
    corpus = _open(args.root)
    tables = search_tables(args.root, args.text, args.clip_model, args.clip_pretrained)  # --text: the text_scores table
    table = corpus.query(args.sql or DEFAULT_SQL, threads=args.threads, tables=tables)
    try:
        write_result(table, args.format, args.out)
    except OSError as e:  # permission denied, disk full ...
        raise UsageError(f"cannot write {args.out}: {e}") from None
    if args.out:
        print(f"wrote {table.num_rows} rows to {args.out}", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    s = _open(args.root).summary()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"corpus   {s['root']}  (format {s['format_version']})")
    print(f"videos   {s['videos']} ({s['videos_ok']} readable), {s['hours_in']:.3f} h in")
    for k, v in s["video_errors"].items():
        print(f"  error  {k}: {v}")
    print(f"clips    {s['clips_kept']} kept, {s['clips_rejected']} rejected, {s['hours_out']:.3f} h out")
    for k, v in s["reject_reasons"].items():
        print(f"  reject {k}: {v}")
    print(f"shards   {s['shards']} ({s['shard_bytes'] / 1e6:.1f} MB)")
    for k, v in s["labels"].items():
        print(f"labels   {k}: {v} clips")
    return 0


def cmd_index(args) -> int:
    import uuid

    from defi.pipelines.lock import WriterLock

    corpus = _open(args.root)
    with WriterLock(corpus, "index", f"index-{uuid.uuid4().hex[:6]}"):  # one writer per root
        path = corpus.build_index()
    print(f"wrote {path}")
    return 0


def _curate_build(args, *layers):
    from defi.pipelines.curate_config import CurateConfig

    return layered(CurateConfig)(args, *layers)


def _curate_check(args, _cfg) -> None:
    if not args.sources:
        raise UsageError("no SOURCES given")
    outer = None if "://" in args.root else corpus_root_of(os.path.dirname(os.path.abspath(args.root)))
    if outer:  # its parts would land in another corpus' folders
        raise UsageError(f"--root {args.root} is inside the corpus root {outer}; put a new corpus outside it")


def _curate_run(args, cfg):
    from defi.pipelines.curate import run_curate

    return run_curate(args.sources, args.root, cfg, progress=not args.no_progress, limit=args.limit, repair=args.repair)


def _curate_summary(args, rec) -> None:
    from defi.pipelines.curate import summary_text

    print(summary_text(rec))
    print_run_record(args, rec)


CURATE_SPEC = CommandSpec(
    name="curate",
    build=_curate_build,
    shortcuts={"address": "ray.address", "num_cpus": "ray.num_cpus"},
    requires=("root",),
    check=_curate_check,
    run=_curate_run,
    summary=_curate_summary,
    errors=("defi.pipelines.config.ConfigError", "defi.pipelines.sources.SourceError"),
)


def cmd_curate(args) -> int:
    return run_command(CURATE_SPEC, args)


def cmd_demo(args) -> int:
    from defi.pipelines.demo import DEMO_SPEC

    return run_command(DEMO_SPEC, args)


# ---------------------------------------------------------------------------------------------
# the parser: one place that maps subcommands to functions
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="defi", description="Curate video into a latent-action-labeled corpus, query it, train on it.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    q = sub.add_parser(
        "query",
        help="run read-only SQL over a corpus index",
        description="Run read-only SQL over the views sources, clips, shards, latent_actions "
        "(and labels_<labeler> per labeler, captions). Only SELECT/EXPLAIN are accepted. With --text, the table "
        "text_scores(key, text_score) holds each clip's CLIP similarity to the text.",
    )
    q.add_argument(
        "sql", nargs="?", help='SQL, e.g. "SELECT reject_reason, count(*) FROM clips GROUP BY 1" (with --text: default the 20 best matches)'
    )
    q.add_argument("--root", required=True, help="corpus root (local folder or fsspec URL)")
    q.add_argument(
        "--format", default="table", choices=["table", "csv", "json", "parquet"], help="output format (parquet needs --out; default: table)"
    )
    q.add_argument("--out", help="write the result to this file instead of stdout")
    q.add_argument("--threads", type=int, help="threads DuckDB may use for the query (default: all cores)")
    from defi.pipelines.text_search import add_text_flags

    add_text_flags(q, "for the SQL to join")
    q.set_defaults(func=cmd_query)

    i = sub.add_parser(
        "info", help="summarise a corpus", description="Videos, hours in and out, clips kept and rejected by reason, shards, labels."
    )
    i.add_argument("root", help="corpus root (local folder or fsspec URL)")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.set_defaults(func=cmd_info)

    x = sub.add_parser(
        "index",
        help="rebuild ROOT/index.duckdb",
        description="Write index.duckdb with the corpus views, for DuckDB's own clients (local roots).",
    )
    x.add_argument("root", help="local corpus root whose index.duckdb to (re)write")
    x.set_defaults(func=cmd_index)

    c = sub.add_parser(
        "curate",
        help="turn videos into indexed WebDataset shards",
        description="Probe, split into shots and clips, score, filter, encode and shard videos into a "
        "corpus. SOURCES are files, folders, globs, fsspec URLs, manifests (.csv/.jsonl/.parquet with a "
        "'uri' column), LeRobot v3 dataset folders or episode.mp4+episode.npz pairs. Re-running skips "
        "videos already committed; a killed run resumes where it stopped.",
    )
    c.add_argument(
        "sources", nargs="*", metavar="SOURCES", help="video files, folders, globs, fsspec URLs, manifests or LeRobot dataset folders"
    )
    c.add_argument("--root", help="corpus root (local folder or fsspec URL)")
    c.add_argument("--config", help="YAML/TOML/JSON file with any of the config fields below")
    add_dry_run_flag(c)
    c.add_argument("--address", help="join this Ray cluster (same as --ray.address)")
    c.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (same as --ray.num_cpus)")
    c.add_argument("--limit", type=int_at_least(1), help="process at most this many pending videos")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument(
        "--repair",
        action="store_true",
        help="move what no commit explains (parts of a unit whose sources or shards part was deleted or renamed, "
        "unreadable parts, the shards they name) to ROOT/quarantine/<run_id>/, print each, and curate those "
        "videos again; without it such a corpus is refused",
    )
    from defi.pipelines.config import add_flags
    from defi.pipelines.curate_config import CurateConfig

    add_flags(c, CurateConfig)
    c.set_defaults(func=cmd_curate)

    d = sub.add_parser(
        "demo",
        help="run the whole recipe on an embedded default (curate, GIDM, label, GFDM, policy, eval, report)",
        description="Generate inputs (videos, bad files, Meta-World episodes), curate them, train a tiny "
        "GIDM on the action-free clips, label every clip, run the latent-action queries of docs/models.md, probe "
        "the latent against true robot actions, train a tiny GFDM, finetune the DeFI policy and a scratch one on the "
        "held-out robot clips, evaluate both in Meta-World and write OUT/report.html. Re-running resumes.",
    )
    from defi.pipelines.demo import add_demo_arguments

    add_demo_arguments(d)
    d.set_defaults(func=cmd_demo)

    for register in _EXTRA_COMMANDS:
        register(sub)
    for register in _CORPUS_STEPS:
        register(sub)
    return p


# Extra subcommands register here explicitly, one line each (no registration by import side effect).
def _extra_commands() -> list[Callable]:
    from defi.pipelines.views.browse import add_browse_parser
    from defi.pipelines.eval import add_eval_parser
    from defi.pipelines.export import add_export_parser
    from defi.pipelines.label import add_label_parser, add_select_parser
    from defi.pipelines.train import add_train_parser
    from defi.training.sim.cli import add_sim_parser

    from defi.pipelines.check import add_check_parser

    return [
        add_sim_parser,
        add_train_parser,
        add_label_parser,
        add_select_parser,
        add_export_parser,
        add_browse_parser,
        add_check_parser,
        add_eval_parser,
    ]


_EXTRA_COMMANDS = _extra_commands()


# Corpus-level steps over every kept clip (they write labels/<name>-<config hash>/ sidecars).
def _corpus_steps() -> list[Callable]:
    from defi.pipelines.dedup import add_dedup_parser

    return [add_dedup_parser]


_CORPUS_STEPS = _corpus_steps()


def main(argv: Sequence[str] | None = None) -> int:
    return run_args(build_parser(), list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    # run the imported module's main, not __main__'s copy: one copy of the registered commands
    from defi.pipelines.cli import main as _main

    raise SystemExit(_main())
