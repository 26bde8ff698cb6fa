"""The CLI as a hostile user drives it (issue 34): outputs aimed into a corpus root, output paths
that cannot be written, out-of-range numbers, a misspelt --select, labels that all fail, a
read-only root. Each bad command ends in one line and exit 2 (label: exit 1 when nothing got a
label), and `defi check` plus a byte digest of the root prove nothing in the corpus changed.

One real corpus for the module: three tiny H.264 videos curated by `defi curate --runner local`."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from factories import moving_square, write_video

from defi.pipelines.check import check_corpus
from defi.pipelines.cli import main

DEFI = str(Path(sys.executable).with_name("defi"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _digest(root: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(root, videos folder, digest of the root): a curated corpus with one shard."""
    tmp = tmp_path_factory.mktemp("hostile")
    videos = tmp / "videos"
    videos.mkdir()
    for i in range(3):
        write_video(videos / f"v{i}.mp4", moving_square(30, h=64, w=96, speed=i + 1), fps=10)
    root = str(tmp / "R")
    p = subprocess.run(
        [DEFI, "curate", str(videos), "--root", root, "--runner", "local", "--workers", "1", "--no-progress"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert p.returncode == 0, p.stderr
    assert check_corpus(root)["problems"] == []
    return root, videos, _digest(root)


@pytest.fixture()
def root(made):
    """The module's corpus root; after the test, it must be byte for byte what curate wrote and
    `defi check` must find nothing wrong."""
    yield made[0]
    assert _digest(made[0]) == made[2], "the corpus changed"
    assert check_corpus(made[0])["problems"] == []


def defi(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``defi ARGS`` through the CLI's entry point in this process."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(rc: int, err: str, *needles: str, code: int = 2) -> None:
    assert rc == code, (rc, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def _clips_part(root: str) -> str:
    return str(next(Path(root, "clips").glob("part-*.parquet")))


SQL = "SELECT key FROM clips WHERE kept"


# ---------------------------------------------------------------------------------------------
# 1. an output inside a corpus root is refused, and nothing is lost
# ---------------------------------------------------------------------------------------------
INSIDE = {
    "query over a clips part": lambda r: [
        "query",
        "SELECT * FROM clips WHERE false",
        "--root",
        r,
        "--format",
        "parquet",
        "--out",
        _clips_part(r),
    ],
    "browse over the shard": lambda r: [
        "browse",
        SQL,
        "--root",
        r,
        "--out",
        f"{r}/shards/shard-000000.tar",
        "--no-previews",
        "--no-progress",
    ],
    "browse over corpus.json": lambda r: ["browse", SQL, "--root", r, "--out", f"{r}/corpus.json", "--no-previews", "--no-progress"],
    "browse to a new page in the root": lambda r: ["browse", SQL, "--root", r, "--out", f"{r}/page.html", "--no-previews"],
    "select into clips/": lambda r: ["select", "--root", r, "--out", f"{r}/clips/part-sel.parquet"],
    "export lerobot": lambda r: ["export", "lerobot", "--root", r, "--select", SQL, "--out", f"{r}/export"],
    "train gidm": lambda r: ["train", "gidm", "--root", r, "--select", SQL, "--out", f"{r}/runs/gidm"],
    "train gfdm": lambda r: ["train", "gfdm", "--root", r, "--select", SQL, "--out", f"{r}/gfdm"],
    "train joint": lambda r: ["train", "joint", "--root", r, "--select", SQL, "--out", f"{r}/joint"],
    "train policy": lambda r: ["train", "policy", "--root", r, "--select", SQL, "--out", f"{r}/policy", "--init", "bc"],
    "eval": lambda r: ["eval", "--policy", r, "--tasks", "reach-v3", "--out", f"{r}/eval"],
    "sim generate": lambda r: ["sim", "generate", "--tasks", "reach-v3", "--episodes", "1", "--out", f"{r}/shards/sim"],
    "demo": lambda r: ["demo", "--out", f"{r}/demo"],
    "a new corpus inside": lambda r: ["curate", "/nowhere.mp4", "--root", f"{r}/clips/nested"],
}


@pytest.mark.parametrize("case", INSIDE)
def test_an_output_inside_a_corpus_root_is_refused(root, case, capsys):
    rc, _, err = defi(capsys, *INSIDE[case](root))
    one_line(rc, err, "inside the corpus root", os.path.realpath(root))


def test_an_output_reaching_the_root_through_a_symlink_is_refused(root, tmp_path, capsys):
    (tmp_path / "link").symlink_to(Path(root, "clips"))
    rc, _, err = defi(capsys, "select", "--root", root, "--out", tmp_path / "link" / "part-sel.parquet")
    one_line(rc, err, "inside the corpus root")


def test_query_over_a_part_is_refused_by_the_installed_command(root):
    """The issue's first reproduction, as a user types it (a subprocess of the `defi` script)."""
    p = subprocess.run(
        [DEFI, "query", "SELECT * FROM clips WHERE false", "--root", root, "--format", "parquet", "--out", _clips_part(root)],
        capture_output=True,
        text=True,
        env=ENV,
    )
    one_line(p.returncode, p.stderr, "inside the corpus root")


def test_outputs_beside_the_root_still_work(root, tmp_path, capsys):
    rc, _, err = defi(capsys, "select", "--root", root, "--out", tmp_path / "sel" / "m.parquet")
    assert rc == 0 and (tmp_path / "sel" / "m.parquet").is_file(), err
    rc, _, err = defi(capsys, "browse", SQL, "--root", root, "--out", tmp_path / "b.html", "--no-previews", "--no-progress")
    assert rc == 0 and (tmp_path / "b.html").is_file(), err


# ---------------------------------------------------------------------------------------------
# 5. an output that cannot be: "", an existing folder or file, a path under a file
# ---------------------------------------------------------------------------------------------
OUT_COMMANDS = {
    "select": lambda r, o: ["select", "--root", r, "--out", o],
    "export lerobot": lambda r, o: ["export", "lerobot", "--root", r, "--select", SQL, "--out", o],
    "train gidm": lambda r, o: ["train", "gidm", "--root", r, "--select", SQL, "--out", o],
    "train gfdm": lambda r, o: ["train", "gfdm", "--root", r, "--select", SQL, "--out", o],
    "train joint": lambda r, o: ["train", "joint", "--root", r, "--select", SQL, "--out", o],
    "train policy": lambda r, o: ["train", "policy", "--root", r, "--select", SQL, "--out", o, "--init", "bc"],
    "eval": lambda r, o: ["eval", "--policy", r, "--tasks", "reach-v3", "--out", o],
    "sim generate": lambda _r, o: ["sim", "generate", "--tasks", "reach-v3", "--episodes", "1", "--out", o],
}


BAD_OUTS = ["empty", "under a file", "existing folder", "existing file"]


# (a manifest over an existing file is a plain overwrite: `select` takes it)
@pytest.mark.parametrize(("command", "bad"), [(c, b) for c in OUT_COMMANDS for b in BAD_OUTS if (c, b) != ("select", "existing file")])
def test_an_output_path_that_cannot_be_is_one_line(made, root, command, bad, tmp_path, capsys):
    videos = made[1]
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    out = {
        "empty": "",
        "under a file": str(videos / "v0.mp4" / "x"),
        "existing folder": str(full),
        "existing file": str(full / "notes.txt"),
    }[bad]
    rc, _, err = defi(capsys, *OUT_COMMANDS[command](root, out))
    one_line(rc, err, "--out")
    assert (full / "notes.txt").read_text() == "mine" and sorted(os.listdir(full)) == ["notes.txt"]


# ---------------------------------------------------------------------------------------------
# 8, 9, 12. numbers and lists out of range, a misspelt selection
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["curate", "/nowhere.mp4", "--root", "{tmp}/c", "--limit", "-1"],
        ["curate", "/nowhere.mp4", "--root", "{tmp}/c", "--limit", "0"],
        ["label", "latent-actions", "--root", "{root}", "--ckpt", "{tmp}", "--limit", "-1"],
        ["train", "gidm", "--root", "{root}", "--select", SQL, "--out", "{tmp}/r", "--workers", "0"],
        ["train", "gfdm", "--root", "{root}", "--select", SQL, "--out", "{tmp}/r", "--workers", "-3"],
        ["sim", "generate", "--tasks", "reach-v3", "--episodes", "1", "--out", "{tmp}/s", "--workers", "0"],
        ["sim", "generate", "--tasks", "reach-v3", "--episodes", "1", "--out", "{tmp}/s", "--workers", "-3"],
        ["export", "lerobot", "--root", "{root}", "--select", SQL, "--out", "{tmp}/e", "--crf", "99"],
        ["export", "lerobot", "--root", "{root}", "--select", SQL, "--out", "{tmp}/e", "--crf", "-1"],
    ],
    ids=lambda a: " ".join(a[:2] + a[-2:]),
)
def test_a_number_out_of_range_is_refused(root, tmp_path, args, capsys):
    argv = [a.format(tmp=tmp_path, root=root) for a in args]
    with pytest.raises(SystemExit) as e:  # argparse's one line, exit 2
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and f"argument {args[-2]}" in err, err
    assert not (tmp_path / "c").exists() and not (tmp_path / "s").exists() and not (tmp_path / "e").exists()


def test_eval_refuses_a_task_given_twice(tmp_path, capsys):
    rc, _, err = defi(capsys, "eval", "--policy", tmp_path, "--tasks", "reach-v3,push-v3,reach-v3", "--out", tmp_path / "e")
    one_line(rc, err, "reach-v3 given more than once")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["train", "gidm", "--root", "{root}", "--out", "{tmp}/r", "--select"],
        ["export", "lerobot", "--root", "{root}", "--out", "{tmp}/e", "--select"],
        ["train", "policy", "--root", "{root}", "--out", "{tmp}/p", "--init", "bc", "--select"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_a_misspelt_select_is_reported_as_sql(root, tmp_path, args, capsys):
    rc, _, err = defi(capsys, *[a.format(tmp=tmp_path, root=root) for a in args], "SELEC key FROM clips")
    one_line(rc, err, "SELEC", "syntax error")
    assert "does not exist" not in err


# ---------------------------------------------------------------------------------------------
# 12. label: nothing labeled is an exit code; a rerun retries what failed
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gidm_ckpt(tmp_path_factory):
    import torch

    from defi.training.checkpoint import save_checkpoint
    from defi.training.gidm import gidm_tiny
    from defi.training.gidm.modeling_gidm import GIDM

    torch.manual_seed(0)
    cfg = gidm_tiny(image_size=32, patch_size=8, model_dim=32, num_heads=2, enc_depth=1, dec_depth=1)
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", GIDM(cfg), cfg, step=1))


def test_label_with_its_shard_gone_exits_1_and_a_rerun_retries(made, gidm_ckpt, tmp_path, capsys):
    root = str(tmp_path / "R")
    shutil.copytree(made[0], root)
    shard = Path(root, "shards", "shard-000000.tar")
    aside = tmp_path / "shard.tar"
    shard.rename(aside)
    label = ["label", "latent-actions", "--root", root, "--ckpt", gidm_ckpt, "--local", "--no-progress"]

    rc, out, err = defi(capsys, *label)
    one_line(rc, err, "none of the", "got a label", "missing_sample", code=1)
    assert "run record" in out  # the summary is still printed
    from defi.schemas.corpus import Corpus

    c = Corpus.open(root)
    kept = c.query("SELECT count(*) AS n FROM clips WHERE kept").column("n")[0].as_py()
    rows = c.query("SELECT key, num_steps FROM latent_actions").to_pylist()
    assert len(rows) == kept and all(r["num_steps"] is None for r in rows)

    aside.rename(shard)  # the shard is back: the rerun labels every clip, once
    rc, out, err = defi(capsys, *label)
    assert rc == 0, err
    assert f"{kept} failed before and retried, {kept} labeled" in out
    rows = Corpus.open(root).query("SELECT key, num_steps FROM latent_actions").to_pylist()
    assert len(rows) == kept == len({r["key"] for r in rows}) and all(r["num_steps"] > 0 for r in rows)
    assert check_corpus(root)["problems"] == []
    rc, out, err = defi(capsys, *label)  # nothing pending is not a failure
    assert rc == 0 and f"{kept} already labeled" in out, err


# ---------------------------------------------------------------------------------------------
# 7. training writes its text cache under the writer lock; a read-only root is one line
# ---------------------------------------------------------------------------------------------
HOLD = """
import sys, time
from defi.schemas.corpus import Corpus
from defi.pipelines.lock import WriterLock
lock = WriterLock(Corpus.open(sys.argv[1]), "curate", "holder-run", heartbeat_s=0.2).acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def lang_root(tmp_path_factory):
    """A corpus of four 12-frame 32 px clips with instructions (the GFDM's text input)."""
    import numpy as np
    from factories import shard_writers, write_clip_sample

    from defi.schemas.corpus import Corpus
    from defi.schemas.keys import clip_key
    from defi.schemas.records import clips_table

    tmp = tmp_path_factory.mktemp("lang")
    c = Corpus.create(str(tmp / "L"))
    writers = shard_writers(c, 1)
    records = []
    for i, (dx, dy, lang) in enumerate([(1, 0, "move right"), (0, 1, "move down"), (1, 0, "move right"), (0, 1, "move down")]):
        frames = []
        for t in range(12):
            f = np.full((32, 32, 3), 60, np.uint8)
            x, y = 2 + 4 * i * dy + dx * t, 2 + 4 * i * dx + dy * t
            f[y : y + 6, x : x + 6] = 230
            frames.append(f)
        mp4 = write_video(tmp / f"c{i}.mp4", frames, fps=10).read_bytes()
        key = clip_key(f"{i + 1:016x}", 0, 12, {"t": 1})
        records.append(
            write_clip_sample(writers, 0, key, mp4, 12, 10.0, 32, uri=f"file://c{i}.mp4", members={"lang.txt": lang}, language=lang)
        )
    writers[0].close()
    c.write_part("clips", clips_table(records), part="batch0")
    return str(tmp / "L")


def gfdm_args(root: str, out) -> list[str]:
    """`defi train gfdm` of one step of a tiny GFDM with a 16-wide random text tower."""
    return [
        *("train", "gfdm", "--root", root, "--select", SQL, "--out", str(out), "--gap-frames", "3", "--size", "32", "--steps", "1"),
        *("--model.block_out_channels", "16,32", "--model.down_block_types", "DownBlock2D,CrossAttnDownBlock2D"),
        *("--model.up_block_types", "CrossAttnUpBlock2D,UpBlock2D", "--model.cross_attention_dim", "16", "--model.text_dim", "16"),
        *("--text.width", "16", "--train.batch_size", "4", "--train.ckpt_every", "10", "--train.grid_every", "10"),
        *("--data.shuffle_buffer", "8", "--no-progress"),
    ]


@pytest.mark.slow  # two 1-step GFDM runs: ~30 s on the shared 2-core box
def test_train_gfdm_writes_its_text_cache_only_under_the_writer_lock(lang_root, tmp_path, capsys):
    root = str(tmp_path / "L")
    shutil.copytree(lang_root, root)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, root], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        # another writer holds the root: the run trains on embeddings kept in memory, and says so
        rc, out, err = defi(capsys, *gfdm_args(root, tmp_path / "run1"))
        assert rc == 0, err
        notes = [line for line in err.splitlines() if line.startswith("note: instruction embeddings not cached")]
        assert len(notes) == 1 and f"{root}/text_embeddings" in notes[0] and "is being written by `defi curate`" in notes[0], err
        assert not Path(root, "text_embeddings").exists()
    finally:
        holder.kill()
        holder.wait()
    rc, out, err = defi(capsys, *gfdm_args(root, tmp_path / "run2"))
    assert rc == 0 and "not cached" not in err, err
    assert len(list(Path(root, "text_embeddings").glob("part-*.parquet"))) == 1
    assert not Path(root, "writer.lock").exists()  # taken for the write, given back
    # `check` finds what it found before (this synthetic corpus has no sources part): nothing new
    assert _problems(root) == _problems(lang_root)


def _problems(root: str) -> list[tuple[str, str, str]]:
    return [(kind, os.path.relpath(path, root), detail) for kind, path, detail in check_corpus(root)["problems"]]


def _read_only(root: str, *args: str) -> subprocess.CompletedProcess:
    """``args`` run in a private mount namespace where ``root`` is a read-only bind mount of
    itself (chmod does not stop root; a read-only mount does)."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", root, *args], capture_output=True, text=True, env=ENV)


def _can_mount_read_only(tmp: Path) -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    tmp.mkdir(exist_ok=True)
    p = _read_only(str(tmp), "touch", str(tmp / "x"))
    return p.returncode != 0 and "Read-only file system" in p.stderr and not (tmp / "x").exists()


@pytest.mark.slow  # a dozen processes, each importing the CLI (~40 s on the shared 2-core box)
def test_a_read_only_root_ends_each_writer_in_one_line(made, lang_root, gidm_ckpt, tmp_path):
    if not _can_mount_read_only(tmp_path / "probe"):
        pytest.skip("needs root and unshare to make a read-only bind mount")
    root = made[0]
    label = ["label", "latent-actions", "--root", root, "--ckpt", gidm_ckpt, "--local", "--no-progress"]
    for args in (
        ["index", root],
        ["curate", str(made[1]), "--root", root, "--runner", "local", "--no-progress"],
        label,
        ["browse", SQL, "--root", root, "--out", f"{root}/page.html", "--no-previews"],
    ):
        p = _read_only(root, DEFI, *args)
        one_line(p.returncode, p.stderr, root)
        assert "Read-only file system" in p.stderr or "inside the corpus root" in p.stderr, p.stderr
    p = _read_only(root, DEFI, "query", "SELECT count(*) AS n FROM clips", "--root", root, "--format", "csv")
    assert p.returncode == 0 and p.stdout.split()[0] == "n", p.stderr  # reading still works

    lang = str(tmp_path / "L")
    shutil.copytree(lang_root, lang)
    p = _read_only(lang, DEFI, *gfdm_args(lang, tmp_path / "run"))
    assert p.returncode == 0, p.stderr
    assert f"note: instruction embeddings not cached in {lang}/text_embeddings: cannot write to {lang}: Read-only file system" in p.stderr
    assert (tmp_path / "run" / "run_config.json").is_file() and not Path(lang, "text_embeddings").exists()
    assert _digest(root) == made[2] and check_corpus(root)["problems"] == []
