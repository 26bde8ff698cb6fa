"""`defi train gfdm` end to end: clips of a square moving right ("move right") or down ("move
down"), one without language and one too short for the gap, written as real H.264 in real shards
with a clips table; a small GFDM trained through the command's parser: instructions embedded once
into ROOT/text_embeddings, grids and checkpoints on disk, run record counts, resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from factories import shard_writers, write_clip_sample, write_video

from defi.pipelines.train import main
from defi.schemas.corpus import Corpus
from defi.schemas.keys import clip_key
from defi.schemas.records import clips_table
from defi.training.checkpoint import load_model
from defi.training.gfdm.text import TextEncoder, embed_instructions
from defi.training.gfdm.loading import load_text_config

SELECT = "SELECT key FROM clips WHERE kept"
SIZE = 32


def square_clip(n: int, dx: int, dy: int, x0: int, y0: int):
    for i in range(n):
        f = np.full((SIZE, SIZE, 3), 60, np.uint8)
        x, y = x0 + dx * i, y0 + dy * i
        f[y : y + 6, x : x + 6] = 230
        yield f


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gfdm")
    c = Corpus.create(str(tmp / "corpus"))
    writers = shard_writers(c, 1)
    specs = [  # (frames, dx, dy, x0, y0, language)
        (12, 1, 0, 2, 4, "move right"),
        (12, 1, 0, 4, 16, "move right"),
        (12, 0, 1, 6, 2, "move down"),
        (12, 0, 1, 20, 4, "move down"),
        (12, 1, 0, 8, 24, None),
        (2, 1, 0, 2, 2, "move right"),
    ]
    records = []
    for i, (n, dx, dy, x0, y0, lang) in enumerate(specs):
        mp4 = write_video(tmp / f"c{i}.mp4", square_clip(n, dx, dy, x0, y0), fps=10).read_bytes()
        key = clip_key(f"{i + 1:016x}", 0, n, {"t": 1})
        members = {"lang.txt": lang} if lang else {}
        records.append(write_clip_sample(writers, 0, key, mp4, n, 10.0, SIZE, uri=f"file://c{i}.mp4", members=members, language=lang))
    writers[0].close()
    c.write_part("clips", clips_table(records), part="batch0")
    return str(tmp / "corpus")


def _args(root, out, *extra):
    return [
        "gfdm",
        "--root",
        root,
        "--select",
        SELECT,
        "--out",
        str(out),
        "--gap-frames",
        "3",
        "--size",
        str(SIZE),
        "--model.block_out_channels",
        "16,32",
        "--model.down_block_types",
        "DownBlock2D,CrossAttnDownBlock2D",
        "--model.up_block_types",
        "CrossAttnUpBlock2D,UpBlock2D",
        "--model.cross_attention_dim",
        "16",
        "--model.text_dim",
        "16",
        "--text.width",
        "16",
        "--train.batch_size",
        "8",
        "--train.lr",
        "2e-3",
        "--train.warmup_steps",
        "2",
        "--train.log_every",
        "1",
        "--train.ckpt_every",
        "10",
        "--train.grid_every",
        "10",
        "--data.shuffle_buffer",
        "32",
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow  # ~2 min on the shared 2-core box
def test_train_gfdm_embeds_texts_writes_grids_checkpoints_and_resumes(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "20")) == 0
    printed = capsys.readouterr().out
    assert "steps    1..20 of 20" in printed and "6 clips selected, 2 distinct instructions" in printed
    assert "grid" in printed and "parameters" in printed

    # each distinct instruction embedded once, into the corpus
    rows = Corpus.open(corpus).query("SELECT text, text_model FROM text_embeddings ORDER BY text")
    assert rows.column("text").to_pylist() == ["move down", "move right"]
    assert set(rows.column("text_model").to_pylist()) == {"open_clip:tiny-random:w16-l1-seed0"}

    record = json.loads((out / "run_record.json").read_text())
    assert record["clips_skipped_too_short"] >= 1 and record["texts"] == 2
    grids = sorted((out / "grids").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-00000010.png", "step-00000020.png"]
    from PIL import Image

    img = np.asarray(Image.open(grids[-1]))
    assert img.shape[1] == 3 * SIZE + 4 * 2  # o_t | predicted | true, 2-px padding
    assert (out / "tb").is_dir() and len((out / "metrics.jsonl").read_text().splitlines()) == 20

    model, cfg, _ = load_model(out, expect="gfdm")
    assert cfg.image_size == SIZE and cfg.text_dim == 16
    text_cfg = load_text_config(out)
    assert text_cfg.name == "tiny" and text_cfg.width == 16
    np.testing.assert_array_equal(embed_instructions(corpus, ["move down"], text_cfg)[0], TextEncoder(text_cfg).encode(["move down"])[0])
    state = json.loads((out / "checkpoints" / "step-00000020" / "state.json").read_text())
    assert state["extra"]["data"]["gap_frames"] == 3
    with torch.no_grad():
        feats = model.extract_features(torch.rand(2, 3, SIZE, SIZE), None)
    assert [f.shape[2] for f in feats.features] == model.feature_channels

    # resume: the same command with more steps continues from step 20; texts are not re-embedded
    parts = Corpus.open(corpus).parts("text_embeddings")
    assert main(_args(corpus, out, "--steps", "25")) == 0
    printed = capsys.readouterr().out
    assert "resumed  from" in printed and "steps    21..25 of 25" in printed
    assert Corpus.open(corpus).parts("text_embeddings") == parts
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 26))


def test_bad_input_is_one_line(corpus, tmp_path, capsys):
    def err_of(args):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    args = _args(corpus, tmp_path / "r1", "--steps", "2")
    args[args.index("--select") + 1] = "SELECT key FROM clips WHERE false"
    assert "selection is empty" in err_of(args)
    # every selected clip shorter than the gap: no usable clip
    args = _args(corpus, tmp_path / "r2", "--steps", "2", "--gap-frames", "20")
    assert "fewer than batch_size" in err_of(args)
    missing = tmp_path / "no-svd"
    assert f"pretrained SVD weights not found: {missing}" in err_of(
        ["gfdm", "--root", corpus, "--select", SELECT, "--out", str(tmp_path / "r3"), "--model", "svd", "--pretrained", str(missing)]
    )
    assert "objective='magic'" in err_of(_args(corpus, tmp_path / "r4", "--model.objective", "magic"))
    assert "backbone='nope'" in err_of(
        [
            "gfdm",
            "--root",
            corpus,
            "--select",
            SELECT,
            "--out",
            str(tmp_path / "r5"),
            "--config",
            str(_write(tmp_path, {"model": {"backbone": "nope"}})),
        ]
    )


def _write(tmp_path, obj):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(obj))
    return p
