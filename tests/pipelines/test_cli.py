"""The CLI as users run it: a real subprocess, real corpus files."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from defi.schemas.corpus import Corpus
from defi.schemas.records import ClipRecord, SourceRecord, clips_table, sources_table


def defi(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "defi.pipelines.cli", *args], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture()
def corpus(tmp_path):
    c = Corpus.create(str(tmp_path / "c"))
    c.write_part(
        "sources",
        sources_table(
            [
                SourceRecord(source_id="a" * 32, uri="/a.mp4", duration_s=7200.0),
                SourceRecord(source_id="b" * 32, uri="/b.mp4", error="truncated"),
            ]
        ),
        part="x",
    )
    c.write_part(
        "clips",
        clips_table(
            [
                ClipRecord(
                    key=f"k{i}",
                    source_id="a" * 32,
                    start_frame=0,
                    end_frame=10,
                    start_s=0,
                    end_s=1800.0,
                    kept=i < 2,
                    reject_reason=None if i < 2 else "low_motion",
                    motion_mean=float(i),
                )
                for i in range(3)
            ]
        ),
        part="x",
    )
    return c


def test_query_prints_a_table_and_writes_files(corpus, tmp_path):
    out = defi("query", "SELECT key, motion_mean FROM clips WHERE kept ORDER BY key", "--root", corpus.root).stdout
    assert "k0" in out and "k1" in out and "k2" not in out and "(2 rows)" in out
    defi("query", "SELECT key FROM clips ORDER BY key", "--root", corpus.root, "--format", "parquet", "--out", str(tmp_path / "r.parquet"))
    assert pq.read_table(tmp_path / "r.parquet").column("key").to_pylist() == ["k0", "k1", "k2"]
    rows = [
        json.loads(l)
        for l in defi("query", "SELECT key FROM clips ORDER BY key", "--root", corpus.root, "--format", "json").stdout.splitlines()
    ]
    assert rows == [{"key": "k0"}, {"key": "k1"}, {"key": "k2"}]
    csv = defi("query", "SELECT count(*) AS n FROM clips", "--root", corpus.root, "--format", "csv").stdout
    assert csv.split() == ["n", "3"]


@pytest.mark.parametrize("sql", ["DELETE FROM clips", "DROP VIEW clips", "COPY (SELECT 1) TO 'x.csv'"])
def test_query_refuses_writes_with_exit_2(corpus, sql):
    p = defi("query", sql, "--root", corpus.root, check=False)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "read-only" in p.stderr and "Traceback" not in p.stderr


def test_bad_sql_missing_root_bad_flag_exit_2(corpus, tmp_path):
    p = defi("query", "SELECT nope FROM clips", "--root", corpus.root, check=False)
    assert p.returncode == 2 and "nope" in p.stderr and p.stderr.count("\n") == 1
    p = defi("query", "SELECT 1", "--root", str(tmp_path / "missing"), check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr
    p = defi("query", "SELECT 1", "--root", corpus.root, "--format", "xml", check=False)
    assert p.returncode == 2 and "xml" in p.stderr


def test_info_summarises(corpus):
    s = json.loads(defi("info", corpus.root, "--json").stdout)
    assert s["videos"] == 2 and s["videos_ok"] == 1 and s["video_errors"] == {"truncated": 1}
    assert s["hours_in"] == pytest.approx(2.0) and s["hours_out"] == pytest.approx(1.0)
    assert s["clips_kept"] == 2 and s["reject_reasons"] == {"low_motion": 1}
    text = defi("info", corpus.root).stdout
    assert "reject low_motion: 1" in text


def test_index_and_help(corpus):
    assert "index.duckdb" in defi("index", corpus.root).stdout
    for cmd in ["query", "info", "index", "demo"]:
        assert "usage:" in defi(cmd, "--help").stdout


def _commands(parser, path=("defi",)):
    """(command path, parser) for `defi` and every nested sub-command."""
    import argparse

    parser.format_help()  # a LazyFlagsParser (defi train MODEL) adds its generated flags on first use
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _own_sentence(help_: str | None) -> bool:
    """A help text that says something besides its default: "(default: 8)" alone is not one."""
    import re

    text = re.sub(r"\(default:[^)]*\)", "", help_ or "").strip()
    return len(re.findall(r"[A-Za-z]+", text)) >= 2


def test_a_help_of_only_its_default_is_not_a_sentence():
    assert not _own_sentence("(default: 8)") and not _own_sentence("  (default: a, b) ") and not _own_sentence(None)
    assert _own_sentence("frames per decode chunk (default: 64)")


def test_every_flag_of_every_command_has_a_help_sentence():
    from defi.pipelines.cli import build_parser

    seen, missing, commands = 0, [], set()
    for path, parser in _commands(build_parser()):
        commands.add(" ".join(path[1:]))
        for action in parser._actions:
            if action.help == "==SUPPRESS==" or action.dest == "help" or action.__class__.__name__ == "_SubParsersAction":
                continue
            seen += 1
            if not _own_sentence(action.help) or "(default: )" in action.help:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}: {action.help!r}")
    assert {"curate", "label", "train gidm", "train gfdm", "train policy", "eval", "demo", "query", "browse", "select"} <= commands
    assert {"export", "index", "check", "info", "sim generate"} <= commands
    assert seen > 200  # the generated --model.* / --train.* / --probe.* flags are in the walk
    assert not missing, missing


def test_flags_are_kebab_case_outside_dotted_config_paths():
    from defi.pipelines.cli import build_parser

    snake = [
        f"{' '.join(path)} {o}"
        for path, parser in _commands(build_parser())
        for action in parser._actions
        if action.help != "==SUPPRESS=="
        for o in action.option_strings
        if "_" in o and "." not in o
    ]
    assert not snake, snake


def test_the_old_snake_case_spelling_still_works_with_a_note():
    p = defi("curate", "--use_clip", "true", "--dry-run")
    assert json.loads(p.stdout)["use_clip"] is True and "--use_clip is deprecated; use --use-clip" in p.stderr
    assert json.loads(defi("curate", "--use-clip", "true", "--dry-run").stdout)["use_clip"] is True


def test_help_defaults_are_the_defaults_a_run_uses():
    import re

    help_ = " ".join(defi("train", "policy", "--help").stdout.split())
    steps = json.loads(defi("train", "policy", "--dry-run").stdout)["train"]["steps"]
    assert re.search(r"--train\.steps INT total optimizer steps \(default: (\d+)\)", help_).group(1) == str(steps)


def test_eval_help_names_only_flags_it_has():
    help_ = defi("eval", "--help").stdout
    assert "--config" not in help_ and "%%" not in help_ and "95% interval" in " ".join(help_.split())


@pytest.mark.parametrize("model", ["gidm", "gfdm", "policy"])
def test_train_dry_run_needs_no_inputs_but_a_run_does(model):
    assert json.loads(defi("train", model, "--dry-run").stdout)["train"]["steps"] > 0
    p = defi("train", model, "--steps", "1", check=False)
    assert p.returncode == 2 and "--root" in p.stderr and "required" in p.stderr and "Traceback" not in p.stderr


def test_query_table_shows_keys_whole(corpus):
    long_key = "clip_" + "0123456789abcdef" * 4
    out = defi("query", f"SELECT '{long_key}' AS key, '{long_key}' AS note", "--root", corpus.root).stdout
    assert long_key in out and "…" in out  # the key column whole, another long column cut


def test_label_summary_prints_the_gap_as_text():
    from defi.pipelines.label import gap_text, summary_text

    assert gap_text({"frames": 5}) == "5 frames" and gap_text({"seconds": 0.5}) == "0.5 s"
    lab = {"name": "gidm-0123", "bottleneck": "vq", "num_action_tokens": 1, "gap": {"frames": 5}}
    text = summary_text({"counts": {}, "labeler": lab, "run_id": "r", "status": "done", "wall_s": 1.0, "errors": {}})
    assert "gap 5 frames)" in text and "{" not in text


def test_a_label_gap_flag_replaces_the_files_gap_in_either_unit(tmp_path):
    from defi.pipelines.cli import build_parser
    from defi.pipelines.config import ConfigError
    from defi.pipelines.label import LABEL_SPEC

    resolve_label_config = LABEL_SPEC.make_config

    (tmp_path / "l.yaml").write_text("gap_frames: 3\n")
    base = ["label", "latent-actions", "--root", "r", "--ckpt", "c", "--config", str(tmp_path / "l.yaml")]
    cfg = resolve_label_config(build_parser().parse_args([*base, "--gap-s", "0.5"]))
    assert (cfg.gap_s, cfg.gap_frames) == (0.5, None)
    assert resolve_label_config(build_parser().parse_args(base)).gap_frames == 3
    with pytest.raises(ConfigError, match="not both"):
        resolve_label_config(build_parser().parse_args([*base, "--gap-s", "0.5", "--gap-frames", "2"]))
