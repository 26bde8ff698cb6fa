"""`defi label latent-actions` and `defi select` on a tiny real corpus: H.264 clips of squares
moving at known speeds in two webdataset shards, a real clips table, tiny GIDM checkpoints."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from defi.pipelines.label import QUERIES, LabelConfig, balanced_weights, main, nearest_clips_sql, run_label, run_select
from defi.schemas.corpus import Corpus, label_view_name
from defi.schemas.keys import clip_key
from defi.schemas.records import ClipRecord, clips_table
from defi.schemas.samples import SampleMeta
from defi.schemas.selection import read_selection, selection_sql
from defi.training.checkpoint import save_checkpoint
from defi.training.data import ClipDataset
from defi.training.gidm.modeling_gidm import GIDM
from defi.training.gidm import gidm_tiny
from factories import moving_square, shard_writers, write_clip_sample, write_video

SIZE = 32
FPS = 10.0
# name -> (shard, frames, square speed px/frame, motion_mean written to clips)
CLIPS = {"a": (0, 12, 0, 0.0), "b": (0, 16, 1, 1.0), "c": (0, 10, 3, 3.0), "d": (1, 14, 2, 2.0), "e": (1, 12, 4, 4.0)}
KEYS = {n: clip_key(f"{i + 1:016x}", 0, spec[1], {"t": 1}) for i, (n, spec) in enumerate(CLIPS.items())}
BROKEN = clip_key("b" * 16, 0, 9, {"t": 1})  # kept, in shard 1, but its mp4 is garbage
REJECTED = clip_key("c" * 16, 0, 8, {"t": 1})


def make_ckpt(path, seed, **overrides):
    torch.manual_seed(seed)
    cfg = gidm_tiny(image_size=SIZE, patch_size=8, model_dim=32, num_heads=2, enc_depth=1, dec_depth=1, **overrides)
    return str(save_checkpoint(path, GIDM(cfg), cfg, step=1))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(corpus root, {vq, cont} checkpoints), built once; tests work on copies of the root."""
    tmp = tmp_path_factory.mktemp("label")
    c = Corpus.create(str(tmp / "corpus"))
    writers = shard_writers(c)
    records = []
    for name, (shard, n, speed, motion) in CLIPS.items():
        mp4 = write_video(tmp / f"{name}.mp4", moving_square(n, h=SIZE, w=SIZE, size=8, speed=speed), fps=FPS).read_bytes()
        records.append(write_clip_sample(writers, shard, KEYS[name], mp4, n, FPS, SIZE, uri=f"file://{name}.mp4", motion_mean=motion))
    meta = SampleMeta(
        key=BROKEN,
        source_id="b" * 16,
        uri="file://broken.mp4",
        start_frame=0,
        end_frame=9,
        start_s=0.0,
        end_s=0.9,
        fps=FPS,
        width=SIZE,
        height=SIZE,
        num_frames=9,
    )
    writers[1].write({"__key__": BROKEN, "mp4": b"\x00\x00\x00\x18ftypmp42 not really a video", "json": meta.to_json()})
    records.append(
        ClipRecord(
            key=BROKEN,
            source_id="b" * 16,
            start_frame=0,
            end_frame=9,
            start_s=0.0,
            end_s=0.9,
            motion_mean=1.5,
            shard="shard-000001.tar",
            out_fps=FPS,
            out_frames=9,
        )
    )
    for w in writers:
        w.close()
    rejected = ClipRecord(key=REJECTED, source_id="c" * 16, start_frame=0, end_frame=8, start_s=0.0, end_s=0.8)
    rejected.reject("too_static")
    c.write_part("clips", clips_table([*records, rejected]), part="batch0")
    ckpts = {
        "vq": make_ckpt(tmp / "ckpt-vq", 0, bottleneck="vq", codebook_size=4, num_action_tokens=2, latent_dim=4),
        "cont": make_ckpt(tmp / "ckpt-cont", 1),
    }
    return str(tmp / "corpus"), ckpts


@pytest.fixture
def root(base, tmp_path):
    dst = tmp_path / "corpus"
    shutil.copytree(base[0], dst)
    return str(dst)


def local(**kw) -> LabelConfig:
    return LabelConfig(runner="local", clips_per_batch=2, batch_size=8, **kw)


def part_state(root: str) -> dict[str, float]:
    out = {}
    for d, _, files in os.walk(os.path.join(root, "labels")):
        for f in files:
            out[os.path.join(d, f)] = os.stat(os.path.join(d, f)).st_mtime_ns
    return out


def test_label_rows_round_trip_and_resume(root, base):
    rec = run_label(root, base[1]["vq"], cfg=local(clips_per_unit=4), progress=False)
    name = rec["labeler"]["name"]
    assert rec["status"] == "done" and name.startswith("gidm-")
    assert rec["counts"]["selected"] == 6 and rec["counts"]["labeled"] == 5 and rec["counts"]["errors"] == 1
    assert rec["errors"] == {"decode": 1} and BROKEN in rec["error_examples"]
    assert rec["counts"]["units"] == 2 and rec["counts"]["steps"] == sum(n - 1 for _, n, _, _ in CLIPS.values())
    saved = json.loads(open(os.path.join(root, "runs", f"{rec['run_id']}.json")).read())
    assert saved["status"] == "done" and saved["counts"] == rec["counts"]

    corpus = Corpus.open(root)
    view = label_view_name(name)
    rows = {r["key"]: r for r in corpus.query(f"SELECT * FROM {view}").to_pylist()}
    assert set(rows) == {*KEYS.values(), BROKEN}  # the rejected clip is not labeled
    for n, (_, frames, _, _) in CLIPS.items():
        r = rows[KEYS[n]]
        assert r["num_steps"] == frames - 1 and len(r["codes"]) == frames - 1 and len(r["codes"][0]) == 2
        assert len(r["code_hist"]) == 4 and sum(r["code_hist"]) == (frames - 1) * 2
        assert len(r["vectors"][0]) == 2 * 4 and r["labeler"] == name and r["run_id"] == rec["run_id"]
    broken = rows[BROKEN]
    assert broken["num_steps"] is None and broken["vectors"] is None and broken["norm_mean"] is None
    # the union view holds the same rows; a query joins them with clips
    joined = corpus.query(
        "SELECT c.key, c.motion_mean, l.num_steps, c.out_frames FROM latent_actions l JOIN clips c USING (key) "
        "WHERE c.kept AND l.num_steps IS NOT NULL ORDER BY c.motion_mean"
    ).to_pylist()
    assert [r["key"] for r in joined] == [KEYS[n] for n in "abdce"]
    assert all(r["num_steps"] == r["out_frames"] - 1 for r in joined)
    assert corpus.query(QUERIES["failed"].format(labels=view)).column("key").to_pylist() == [BROKEN]

    # a second run retries the broken clip only; it fails again, so nothing is written
    before = part_state(root)
    again = run_label(root, base[1]["vq"], cfg=local(clips_per_unit=4), progress=False)
    assert again["counts"]["skipped_done"] == 5 and again["counts"]["retried"] == 1 and again["counts"].get("labeled", 0) == 0
    assert again["counts"].get("units", 0) == 0 and part_state(root) == before


def test_interrupted_run_resumes_without_duplicates(root, base):
    first = run_label(root, base[1]["cont"], cfg=local(clips_per_unit=1), progress=False, limit=2)
    assert first["counts"]["labeled"] + first["counts"].get("errors", 0) == 2 and first["counts"]["units"] == 2
    rest = run_label(root, base[1]["cont"], cfg=local(clips_per_unit=3), progress=False)
    assert rest["counts"]["skipped_done"] == 2 and rest["counts"]["pending"] == 4
    keys = Corpus.open(root).query("SELECT key FROM latent_actions").column("key").to_pylist()
    assert sorted(keys) == sorted([*KEYS.values(), BROKEN])  # each clip once
    # continuous bottleneck: no codes; a select over a manifest labels only its keys
    row = Corpus.open(root).query(f"SELECT * FROM latent_actions WHERE key = '{KEYS['d']}'").to_pylist()[0]
    assert row["codes"] is None and row["code_hist"] is None and len(row["vectors"]) == 13


def test_two_checkpoints_side_by_side_and_queries(root, base):
    vq = run_label(root, base[1]["vq"], cfg=local(), progress=False)["labeler"]["name"]
    cont = run_label(root, base[1]["cont"], cfg=local(), progress=False, select=f"SELECT key FROM clips WHERE kept AND key <> '{BROKEN}'")[
        "labeler"
    ]["name"]
    corpus = Corpus.open(root)
    assert vq != cont and corpus.labelers() == sorted([vq, cont])
    per = {r["labeler"]: r["n"] for r in corpus.query("SELECT labeler, count(*) AS n FROM latent_actions GROUP BY 1").to_pylist()}
    assert per == {vq: 6, cont: 5}
    V, C = label_view_name(vq), label_view_name(cont)
    assert corpus.query(f"SELECT count(*) AS n FROM {C}").column("n")[0].as_py() == 5

    # every documented query runs and returns what it says
    mag = corpus.query(QUERIES["by_magnitude"].format(labels=C)).to_pylist()
    assert len(mag) == 5 and [r["norm_mean"] for r in mag] == sorted((r["norm_mean"] for r in mag), reverse=True)
    dom = corpus.query(QUERIES["by_dominant_code"].format(labels=V)).to_pylist()
    assert sum(r["clips"] for r in dom) == 5 and all(0 <= r["dominant_code"] < 4 for r in dom)
    ent = corpus.query(QUERIES["by_code_entropy"].format(labels=V)).to_pylist()
    assert {r["key"] for r in ent} == {KEYS[n] for n in "bcde"}  # motion_mean > 0.5
    assert all(0 <= r["code_entropy"] <= np.log(4 * 1.0) + 1e-6 for r in ent)
    assert corpus.query(QUERIES["by_magnitude"].format(labels=f"(SELECT * FROM latent_actions WHERE labeler = '{cont}')")).num_rows == 5

    # nearest neighbours by latent cosine: the clip itself first, at similarity 1
    for n in "bd":
        near = corpus.query(nearest_clips_sql(KEYS[n], C, limit=3)).to_pylist()
        assert near[0]["key"] == KEYS[n] and near[0]["cosine"] == pytest.approx(1.0, abs=1e-5)
        assert len(near) == 3 and near[1]["cosine"] <= near[0]["cosine"] + 1e-6
    # raw: the fixed-size array form agrees (D = latent width, 8 for the continuous tiny model)
    arr = corpus.query(
        f"SELECT l.key, array_cosine_similarity(l.mean_vector::FLOAT[8], "
        f"(SELECT mean_vector FROM {C} WHERE key = '{KEYS['b']}')::FLOAT[8]) AS cos FROM {C} l ORDER BY cos DESC"
    ).to_pylist()
    lst = {r["key"]: r["cosine"] for r in corpus.query(nearest_clips_sql(KEYS["b"], C, limit=10, centred=False)).to_pylist()}
    assert arr[0]["key"] == KEYS["b"] and all(r["cos"] == pytest.approx(lst[r["key"]], abs=1e-5) for r in arr)
    # centred (the default): the cosine of each mean vector minus the mean of the view's
    rows = corpus.query(f"SELECT key, mean_vector FROM {C}").to_pylist()
    X = np.array([r["mean_vector"] for r in rows], dtype=np.float64)
    X -= X.mean(0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    want = dict(zip([r["key"] for r in rows], X @ X[[r["key"] for r in rows].index(KEYS["b"])], strict=True))
    got = corpus.query(nearest_clips_sql(KEYS["b"], C, limit=10)).to_pylist()
    assert [r["key"] for r in got] == sorted(want, key=lambda k: -want[k])
    assert all(r["cosine"] == pytest.approx(want[r["key"]], abs=1e-5) for r in got)
    assert min(want.values()) < 0 < max(want.values())  # centred cosines spread over both signs


def test_balanced_weights_equalise_groups():
    w = balanced_weights(["x", "x", "x", "y", None, None])
    tot = defaultdict(float)
    for g, wi in zip(["x", "x", "x", "y", None, None], w, strict=False):
        tot[g] += wi
    assert tot == pytest.approx({"x": 2.0, "y": 2.0, None: 2.0}) and w.sum() == pytest.approx(6.0)


def test_select_balanced_manifest_is_read_by_training(root, base, tmp_path, capsys):
    name = run_label(root, base[1]["vq"], cfg=local(), progress=False)["labeler"]["name"]
    out = str(tmp_path / "sel.parquet")
    assert (
        main(["select", "--root", root, "--where", "num_steps > 0 AND motion_mean >= 0", "--balance-by", "dominant_code", "--out", out])
        == 0
    )
    assert "wrote 5 clips" in capsys.readouterr().out
    sel = read_selection(out)
    assert sorted(sel.column("key").to_pylist()) == sorted(KEYS.values())
    assert "dominant_code" in selection_sql(sel) and name.replace("-", "_") in selection_sql(sel)
    dom = dict(
        (r["key"], r["dominant_code"])
        for r in Corpus.open(root).query(f"SELECT key, dominant_code FROM {label_view_name(name)}").to_pylist()
    )
    totals = Counter()
    for k, w in zip(sel.column("key").to_pylist(), sel.column("weight").to_pylist(), strict=False):
        totals[dom[k]] += w
    groups = len(set(dom[k] for k in KEYS.values()))
    assert all(v == pytest.approx(5 / groups) for v in totals.values())
    # training reads it: only those clips, sampled by weight
    ds = ClipDataset.from_corpus(Corpus.open(root), out, gap_frames=1, size=16, shuffle=False, samples_per_epoch=20)
    items = list(ds)
    assert items and {i["key"] for i in items} <= set(KEYS.values())

    # balance by an SQL expression over clips columns: 3 fast clips vs 2 slow ones, each side 2.5
    s = run_select(root, "num_steps IS NOT NULL", str(tmp_path / "fast_slow.parquet"), balance_by="motion_mean >= 2")
    assert s["labeler"] == name and s["groups"] == {
        "True": {"clips": 3, "weight_each": pytest.approx(2.5 / 3)},
        "False": {"clips": 2, "weight_each": pytest.approx(1.25)},
    }
    w = dict(zip(*[read_selection(s["out"]).column(c).to_pylist() for c in ("key", "weight")], strict=False))
    assert w[KEYS["e"]] == pytest.approx(2.5 / 3) and w[KEYS["a"]] == pytest.approx(1.25)

    # a full SELECT as --where, no balancing: weights 1
    out2 = str(tmp_path / "fast.parquet")
    assert main(["select", "--root", root, "--where", "SELECT key FROM clips WHERE motion_mean >= 3", "--out", out2]) == 0
    sel2 = read_selection(out2)
    assert sorted(sel2.column("key").to_pylist()) == sorted([KEYS["c"], KEYS["e"]])
    assert sel2.column("weight").to_pylist() == [1.0, 1.0]
    # user errors: one line, exit 2
    assert main(["select", "--root", root, "--labeler", "nope", "--out", out2]) == 2
    assert main(["select", "--root", root, "--where", "motion_mean > 100", "--out", out2]) == 2
    assert "empty" in capsys.readouterr().err


@pytest.mark.slow  # ~25 s: Ray start, workers importing torch, actor start
def test_cli_on_ray_matches_local(root, base, capsys):
    """The one Ray run: the CLI on a local Ray with 2 CPUs gives the rows the in-process engine gives."""
    assert (
        main(
            [
                "label",
                "latent-actions",
                "--root",
                root,
                "--ckpt",
                base[1]["vq"],
                "--ray.num_cpus",
                "2",
                "--clips-per-unit",
                "3",
                "--batch-size",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "5 labeled" in out and "1 failed" in out and "decode" in out
    corpus = Corpus.open(root)
    name = corpus.labelers()[0]
    ray_rows = {r["key"]: r for r in corpus.query(f"SELECT * FROM {label_view_name(name)}").to_pylist()}
    # the local engine on a fresh copy of the corpus
    other = root + "-local"
    shutil.copytree(base[0], other)
    run_label(other, base[1]["vq"], cfg=local(), progress=False)
    local_rows = {r["key"]: r for r in Corpus.open(other).query(f"SELECT * FROM {label_view_name(name)}").to_pylist()}
    assert set(ray_rows) == set(local_rows) == {*KEYS.values(), BROKEN}
    for k, r in local_rows.items():
        assert ray_rows[k]["codes"] == r["codes"] and ray_rows[k]["num_steps"] == r["num_steps"]
        if r["norm_mean"] is not None:
            assert ray_rows[k]["norm_mean"] == pytest.approx(r["norm_mean"], rel=1e-5)
    # a bad checkpoint is a one-line user error
    assert main(["label", "latent-actions", "--root", root, "--ckpt", root, "--local"]) == 2
    assert "neither a checkpoint" in capsys.readouterr().err


def test_label_refuses_a_checkpoint_of_another_model_in_one_line(root, tmp_path, capsys):
    from defi.training.gfdm.modeling_gfdm import GFDM
    from defi.training.gfdm import gfdm_tiny

    cfg = gfdm_tiny(
        image_size=32,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        text_dim=16,
    )
    save_checkpoint(tmp_path / "gfdm-run" / "checkpoints" / "step-00000001", GFDM(cfg), cfg, step=1)
    before = part_state(root)
    assert main(["label", "latent-actions", "--root", root, "--ckpt", str(tmp_path / "gfdm-run"), "--local"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "a 'gfdm' checkpoint where a 'gidm' checkpoint is expected (GFDMConfig, not GIDMConfig)" in err
    assert part_state(root) == before  # nothing written
