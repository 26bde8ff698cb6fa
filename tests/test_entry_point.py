"""Every `defi` subcommand through the installed entry point (`.venv/bin/defi`, a subprocess), not
only the functions behind it: `--help` of each exits 0, a real cheap invocation of most exits 0
with its summary, and user errors are one line with exit 2 (the list of issue 18)."""

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from factories import moving_square, write_video

from defi.pipelines.cli import build_parser
from defi.schemas.shards import Sample, write_shard
from defi.schemas.corpus import Corpus
from defi.schemas.records import ClipRecord, SourceRecord, clips_table, sources_table
from defi.schemas.samples import SampleMeta
from defi.schemas.tables import SHARDS, table_from_rows

DEFI = str(Path(sys.executable).with_name("defi"))


def subcommands() -> list[list[str]]:
    out = []

    def walk(p, path):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append(path)
        for a in subs:
            for name, sp in a.choices.items():
                walk(sp, [*path, name])

    walk(build_parser(), [])
    return out


def _run_all(argvs: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start every command at once (each spends most of its time importing), then collect."""
    procs = [subprocess.Popen([DEFI, *a], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    out = []
    for a, p in zip(argvs, procs, strict=True):
        so, se = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(a, p.returncode, so, se))
    return out


@pytest.mark.slow  # ~15 interpreter starts: 20-70 s on 2 shared cores
def test_every_subcommand_has_help(tmp_path):
    cmds = subcommands()
    names = {" ".join(c) for c in cmds}
    assert {
        "query",
        "info",
        "index",
        "curate",
        "check",
        "browse",
        "select",
        "sim generate",
        "label latent-actions",
        "train gidm",
        "export lerobot",
        "demo",
    } <= names
    for r in _run_all([[*c, "--help"] for c in cmds] + [["--help"]], tmp_path):
        assert r.returncode == 0 and "usage:" in r.stdout, (r.args, r.stderr)


def _corpus(root: Path, tmp: Path) -> Corpus:
    c = Corpus.create(str(root))
    mp4 = write_video(tmp / "v.mp4", moving_square(8, h=32, w=32, size=8), fps=8).read_bytes()
    key = "0" * 32
    meta = SampleMeta(
        key=key,
        source_id="a" * 32,
        uri="/v.mp4",
        start_frame=0,
        end_frame=8,
        start_s=0.0,
        end_s=1.0,
        fps=8.0,
        width=32,
        height=32,
        num_frames=8,
    )
    info = write_shard(c, "shard-000000.tar", [Sample(key, {"mp4": mp4, "json": meta.to_json()})])
    c.write_part(
        "clips",
        clips_table(
            [
                ClipRecord(
                    key=key,
                    source_id="a" * 32,
                    uri="/v.mp4",
                    start_frame=0,
                    end_frame=8,
                    start_s=0.0,
                    end_s=1.0,
                    shard=info.shard,
                    out_fps=8.0,
                    out_frames=8,
                    out_width=32,
                    out_height=32,
                )
            ]
        ),
        part="u",
    )
    c.write_part(
        "shards",
        table_from_rows(
            [
                {
                    "shard": info.shard,
                    "num_samples": 1,
                    "size_bytes": info.size_bytes,
                    "sha256": info.sha256,
                    "run_id": "r",
                    "created_at": dt.datetime.now(dt.timezone.utc),
                }
            ],
            SHARDS,
            "shards",
        ),
        part="u",
    )
    c.write_part("sources", sources_table([SourceRecord(source_id="a" * 32, uri="/v.mp4", duration_s=1.0)]), part="u")
    return c


@pytest.mark.slow
def test_cheap_real_invocations(tmp_path):
    c = _corpus(tmp_path / "c", tmp_path)
    argvs = [
        ["query", "SELECT count(*) AS n FROM clips WHERE kept", "--root", c.root, "--format", "csv"],
        ["info", c.root],
        ["index", c.root],
        ["check", c.root, "--no-progress"],
        ["select", "--root", c.root, "--out", str(tmp_path / "sel.parquet")],
        ["browse", "SELECT key FROM clips", "--root", c.root, "--out", str(tmp_path / "b.html")],
        [
            "sim",
            "generate",
            "--env",
            "metaworld",
            "--tasks",
            "reach-v3",
            "--episodes",
            "1",
            "--max-steps",
            "4",
            "--size",
            "32",
            "--out",
            str(tmp_path / "sim"),
            "--no-progress",
        ],
        ["curate", str(tmp_path), "--root", str(tmp_path / "dry"), "--dry-run"],
    ]
    rs = _run_all(argvs, tmp_path)
    for r in rs:
        assert r.returncode == 0 and "Traceback" not in r.stderr, (r.args, r.stdout, r.stderr)
    assert rs[0].stdout.splitlines() == ["n", "1"]
    assert (tmp_path / "c" / "index.duckdb").exists() and (tmp_path / "sel.parquet").exists()
    assert (tmp_path / "b.html").exists() and (tmp_path / "sim" / "meta" / "info.json").exists()
    assert "no problems" in rs[3].stdout and "wrote 1/1 episodes" in rs[6].stdout
    assert not (tmp_path / "dry").exists()  # --dry-run creates nothing


def test_user_errors_are_one_line(tmp_path):
    c = _corpus(tmp_path / "c", tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "cfg.yaml").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "corpus.json").mkdir()
    q = ["query", "SELECT 1", "--root", c.root, "--format", "csv"]
    b = ["browse", "SELECT key FROM clips", "--root", c.root, "--no-previews"]
    cur = ["curate", str(tmp_path / "adir"), "--root", str(tmp_path / "new")]
    cases = {
        "is a folder": [q + ["--out", "adir"], b + ["--out", "adir"]],
        "is a file, not a folder": [q + ["--out", "afile/x.csv"], b + ["--out", "afile/x.html"]],
        "--out is empty": [q + ["--out", ""], b + ["--out", ""]],
        "top level must be a mapping": [cur + ["--config", "list.yaml"]],
        "invalid JSON": [cur + ["--config", "bad.json"]],
        "cfg.yaml is a folder": [cur + ["--config", "cfg.yaml"]],
        "threads must be a positive integer": [["query", "SELECT 1", "--root", c.root, "--threads", "-1"]],
        "corpus.json is a folder": [["info", str(tmp_path / "broken")], ["curate", "adir", "--root", str(tmp_path / "broken")]],
        "not a number": [cur + ["--motion.min_frame_diff", "nan"]],
        "must be a finite number >= 0": [cur + ["--motion.min_frame_diff", "-1"], cur + ["--blur.min_blur", "-0.5"]],
        "does not exist": [["curate", str(tmp_path / "no_such_folder"), "--root", str(tmp_path / "new")]],
        "unknown or expert-less": [
            [
                "sim",
                "generate",
                "--env",
                "metaworld",
                "--tasks",
                "nope-v3",
                "--episodes",
                "1",
                "--out",
                str(tmp_path / "sim2"),
                "--no-progress",
            ]
        ],
    }
    argvs = [a for group in cases.values() for a in group]
    before = sorted(p.name for p in tmp_path.iterdir())
    rs = iter(_run_all(argvs, tmp_path))
    for needle, group in cases.items():
        for _ in group:
            r = next(rs)
            assert r.returncode == 2, (r.args, r.stdout, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, (r.args, r.stderr)
    # nothing left behind: no corpus for a refused curate, no stray .tmp, no sim output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in (tmp_path / "adir").iterdir()) == []


@pytest.mark.slow
def test_curate_and_label_through_the_entry_point(tmp_path):
    """The commands that start Ray or a model: a one-video curate, then a local label."""
    import torch

    from defi.training.checkpoint import save_checkpoint
    from defi.training.gidm.modeling_gidm import GIDM
    from defi.training.gidm import gidm_tiny

    (tmp_path / "in").mkdir()
    write_video(tmp_path / "in" / "a.mp4", moving_square(24, h=48, w=64), fps=12)
    root = str(tmp_path / "c")
    r = subprocess.run(
        [
            DEFI,
            "curate",
            str(tmp_path / "in"),
            "--root",
            root,
            "--no-progress",
            "--ray.num_cpus",
            "1",
            "--windows.min_clip_s",
            "0.5",
            "--encode.short_side",
            "32",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "1 listed" in r.stdout, r.stderr
    torch.manual_seed(0)
    cfg = gidm_tiny(image_size=32, patch_size=8, model_dim=32, num_heads=2, enc_depth=1, dec_depth=1)
    ckpt = str(save_checkpoint(tmp_path / "ckpt", GIDM(cfg), cfg, step=1))
    r = subprocess.run(
        [DEFI, "label", "latent-actions", "--root", root, "--ckpt", ckpt, "--local", "--no-progress"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert Corpus.open(root).query("SELECT count(*) AS n FROM latent_actions").to_pylist()[0]["n"] >= 1
