"""`defi label captions` on a tiny real corpus (H.264 clips in two shards, one broken, one
rejected; two with an instruction) with tiny random CoCa models, and training reading the
captions by rule (`--data.language instruction|caption|auto`)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from captioning import tiny_captioner
from factories import moving_square, shard_writers, write_clip_sample, write_video

from defi.labelers.captions import CaptionLabeler, middle_frame
from defi.pipelines.captions import CaptionConfig, run_captions
from defi.pipelines.cli import main
from defi.training.data import build_dataset
from defi.pipelines.train_gfdm import clip_language, gfdm_batches, gfdm_run_config, selection_texts
from defi.schemas.corpus import Corpus
from defi.schemas.keys import clip_key
from defi.schemas.records import ClipRecord, clips_table
from defi.schemas.samples import SampleMeta
from defi.training.data import decode_frames

SIZE, FPS = 32, 10.0
# name -> (shard, frames, speed, instruction)
CLIPS = {"a": (0, 9, 1, "push the square"), "b": (0, 11, 2, None), "c": (1, 8, 3, None), "d": (1, 10, 1, "stop")}
KEYS = {n: clip_key(f"{i + 1:016x}", 0, spec[1], {"t": 1}) for i, (n, spec) in enumerate(CLIPS.items())}
BROKEN = clip_key("b" * 16, 0, 9, {"t": 1})
REJECTED = clip_key("c" * 16, 0, 8, {"t": 1})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("captions")
    c = Corpus.create(str(tmp / "corpus"))
    writers = shard_writers(c)
    records, mp4s = [], {}
    for name, (shard, n, speed, lang) in CLIPS.items():
        mp4s[name] = write_video(tmp / f"{name}.mp4", moving_square(n, h=SIZE, w=SIZE, size=8, speed=speed), fps=FPS).read_bytes()
        members = {"lang.txt": lang} if lang else {}
        records.append(
            write_clip_sample(
                writers, shard, KEYS[name], mp4s[name], n, FPS, SIZE, uri=f"file://{name}.mp4", members=members, language=lang
            )
        )
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
    models = {"a": tiny_captioner(tmp / "coca-a", seed=0), "b": tiny_captioner(tmp / "coca-b", seed=1)}
    return str(tmp / "corpus"), models, mp4s


@pytest.fixture
def root(base, tmp_path):
    return str(shutil.copytree(base[0], tmp_path / "corpus"))


def batch_stream_once(dataset):
    from torch.utils.data import DataLoader

    from defi.training.data import collate_items

    yield from DataLoader(dataset, batch_size=4, collate_fn=collate_items)


def local(**kw) -> CaptionConfig:
    return CaptionConfig(runner="local", workers=1, clips_per_batch=3, max_len=8, **kw)


def test_captions_written_versioned_resumed_and_read_by_training(root, base):
    _, models, mp4s = base
    rec = run_captions(root, models["a"], cfg=local(clips_per_unit=3), progress=False)
    name = rec["labeler"]["name"]
    assert rec["status"] == "done" and name.startswith("caption-")
    assert rec["counts"]["selected"] == 5 and rec["counts"]["captioned"] == 4 and rec["counts"]["errors"] == 1
    assert rec["errors"] == {"decode": 1} and rec["counts"]["units"] == 2
    corpus = Corpus.open(root)
    assert corpus.current_captions() == name and corpus.labelers() == []  # captions are not latent actions
    rows = {r["key"]: r for r in corpus.query("SELECT * FROM captions").to_pylist()}
    assert set(rows) == {*KEYS.values(), BROKEN}  # one row per kept clip; the rejected one has none
    assert rows[BROKEN]["caption"] is None and rows[BROKEN]["error"] == "decode"
    lab = CaptionLabeler(models["a"], device="cpu", max_len=8)
    assert lab.name == name
    frame = decode_frames(mp4s["b"], [middle_frame(CLIPS["b"][1])], None)[0]
    assert rows[KEYS["b"]]["caption"] == lab.caption_images([frame])[0]  # the middle frame's caption
    assert all(r["model"] == "coca-a" and r["config_hash"] == lab.config_hash and r["run_id"] == rec["run_id"] for r in rows.values())

    # a re-run captions nothing; another model writes a folder of its own and becomes current
    again = run_captions(root, models["a"], cfg=local(), progress=False)
    assert again["counts"]["skipped_done"] == 5 and again["counts"].get("captioned", 0) == 0
    other = run_captions(root, models["b"], cfg=local(), progress=False, limit=2)["labeler"]["name"]
    assert other != name and Corpus.open(root).current_captions() == other
    assert sorted(n for n in os.listdir(os.path.join(root, "labels")) if n.startswith("caption-")) == sorted([name, other])

    # training: the language rule over instructions and the captions of the named folder
    corpus = Corpus.open(root)
    keys = list(KEYS.values())
    cfg = gfdm_run_config("tiny", {"data": {"language": "auto", "captions": f"labels/{name}", "gap_frames": 1}})
    lang = clip_language(corpus, cfg.data)
    assert lang.source == name
    instr = [CLIPS[n][3] for n in KEYS]
    auto = dict(zip(keys, lang(keys, instr), strict=True))
    assert auto[KEYS["a"]] == "push the square" and auto[KEYS["d"]] == "stop"  # an instruction is kept
    assert auto[KEYS["b"]] == rows[KEYS["b"]]["caption"] and auto[KEYS["c"]] == rows[KEYS["c"]]["caption"]
    only = clip_language(corpus, gfdm_run_config("tiny", {"data": {"language": "caption", "captions": name}}).data)
    assert only(keys, instr) == [rows[k]["caption"] for k in keys]
    assert selection_texts(corpus, keys) == ["push the square", "stop"]
    assert selection_texts(corpus, keys, lang) == sorted(set(auto.values()))
    # the loader's batches carry each item's text by the rule (items read from the real shards)
    seen: list = []

    def sink(langs):
        seen.extend(langs)
        return torch.zeros(len(langs), 4), torch.tensor([bool(t) for t in langs])

    dataset = build_dataset(corpus, "SELECT key FROM clips WHERE kept", cfg.data, 0, 2)
    for batch in gfdm_batches(batch_stream_once(dataset), 1, sink, lang):
        assert batch["has_text"].all()
    assert set(seen) == {auto[k] for k in keys}
    # without --data.captions the last run's folder is read
    assert clip_language(corpus, gfdm_run_config("tiny", {"data": {"language": "auto"}}).data).source == other


def test_bad_model_and_missing_captions_are_one_line(root, base, tmp_path, capsys):
    def fails(argv) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert "no such folder" in fails(["label", "captions", "--root", root, "--model", str(tmp_path / "nope"), "--no-progress"])
    clip = shutil.copytree(base[1]["a"], tmp_path / "clip")
    cfg = json.loads((clip / "open_clip_config.json").read_text())
    del cfg["model_cfg"]["multimodal_cfg"]
    (clip / "open_clip_config.json").write_text(json.dumps(cfg))
    assert "not a captioner" in fails(["label", "captions", "--root", root, "--model", str(clip), "--no-progress"])
    assert not os.path.exists(os.path.join(root, "labels")) and not os.path.exists(os.path.join(root, "runs"))  # nothing written

    out = tmp_path / "run"
    train = ["train", "gfdm", "--root", root, "--select", "SELECT key FROM clips WHERE kept", "--out", str(out), "--steps", "1"]
    msg = fails([*train, "--data.language", "caption"])
    assert "no caption labels" in msg and "defi label captions" in msg and not out.exists()
    assert "valid: instruction, caption, auto" in fails([*train, "--data.language", "subtitles"])


def test_cli_captions_then_resolved_config_records_the_rule(root, base, capsys):
    assert main(["label", "captions", "--root", root, "--model", base[1]["a"], "--local", "--max_len", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 captioned, 1 failed" in out and "error  decode" in out and "view captions" in out
    train = ["train", "gfdm", "--root", root, "--select", "SELECT key FROM clips WHERE kept", "--out", "unused", "--dry-run"]
    assert main([*train, "--data.language", "auto"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["data"]["language"] == "auto" and resolved["data"]["captions"] is None
    assert Corpus.open(root).query("SELECT count(caption) AS n FROM captions").column("n").to_pylist() == [4]


@pytest.mark.slow  # a real (tiny) GFDM run of 2 steps: ~40 s on the shared 2-core box
def test_train_gfdm_under_auto_embeds_captions_and_records_them(root, base, tmp_path, capsys):
    name = run_captions(root, base[1]["a"], cfg=local(), progress=False)["labeler"]["name"]
    out = tmp_path / "run"
    argv = ["train", "gfdm", "--root", root, "--select", "SELECT key FROM clips WHERE kept", "--out", str(out), "--steps", "2"]
    argv += ["--gap-frames", "1", "--size", "32", "--data.language", "auto", "--train.batch_size", "4", "--no-progress"]
    argv += ["--model.block_out_channels", "16,32", "--model.cross_attention_dim", "16", "--model.text_dim", "16", "--text.width", "16"]
    argv += ["--model.down_block_types", "DownBlock2D,CrossAttnDownBlock2D", "--model.up_block_types", "CrossAttnUpBlock2D,UpBlock2D"]
    assert main(argv) == 0
    assert f"language auto: captions from {name}" in capsys.readouterr().out
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["data"]["language"] == "auto" and saved["captions_used"] == name
    assert json.loads((out / "run_record.json").read_text())["captions_used"] == name
    caption = {r["key"]: r["caption"] for r in Corpus.open(root).query("SELECT key, caption FROM captions").to_pylist()}
    embedded = set(Corpus.open(root).query("SELECT text FROM text_embeddings").column("text").to_pylist())
    assert embedded == {"push the square", "stop", caption[KEYS["b"]], caption[KEYS["c"]]}  # instructions kept, captions elsewhere
