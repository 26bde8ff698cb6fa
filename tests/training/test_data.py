"""The shard data loader, on a tiny real corpus: H.264 clips whose frame i is uniformly grey at
level 10*i, written with webdataset's TarWriter into two shards, indexed by a real clips table.
A pair's grey levels tell which frames it came from."""

from __future__ import annotations

import io
from collections import Counter

import fsspec
import numpy as np
import pyarrow as pa
import pytest
import torch
import webdataset as wds

from defi.schemas.corpus import Corpus
from defi.schemas.keys import clip_key
from defi.schemas.records import ClipRecord, clips_table
from defi.schemas.samples import SampleMeta
from defi.schemas.selection import resolve_selection, write_selection
from defi.training.data import (
    ClipDataset,
    DecodeError,
    ShardReader,
    collate_items,
    decode_frames,
    make_loader,
)
from factories import shard_writers, write_clip_sample, write_video

SIZE = 32  # encoded frames are SIZE x SIZE
OUT = 16  # the loader resizes to OUT x OUT
ACTION_DIM = 2

# name -> (shard index, fps, frames, has actions, language)
CLIPS = {
    "a": (0, 10.0, 12, True, None),
    "b": (0, 10.0, 16, True, None),
    "c": (0, 20.0, 24, True, None),
    "d": (1, 20.0, 20, False, "pick up the cup"),
    "e": (1, 10.0, 10, True, None),
}
KEYS = {name: clip_key(f"{i + 1:016x}", 0, spec[2], {"t": 1}) for i, (name, spec) in enumerate(CLIPS.items())}
NAME = {v: k for k, v in KEYS.items()}


def grey_clip(n: int):
    for i in range(n):
        yield np.full((SIZE, SIZE, 3), 10 * i, np.uint8)


def actions_for(name: str, n: int) -> np.ndarray:
    """Row i = [i, 100*clip_index + i], so a row names its frame and its clip."""
    c = list(CLIPS).index(name)
    i = np.arange(n, dtype=np.float32)
    return np.stack([i, 100 * c + i], axis=1)


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    c = Corpus.create(str(tmp / "corpus"))
    writers = shard_writers(c)
    records = []
    for name, (shard, fps, n, has_actions, lang) in CLIPS.items():
        mp4 = write_video(tmp / f"{name}.mp4", grey_clip(n), fps=fps).read_bytes()
        members = {"actions.npy": npy(actions_for(name, n))} if has_actions else {}
        if lang:
            members["lang.txt"] = lang
        records.append(
            write_clip_sample(
                writers,
                shard,
                KEYS[name],
                mp4,
                n,
                fps,
                SIZE,
                uri=f"file://{name}.mp4",
                members=members,
                meta={"action_dim": ACTION_DIM if has_actions else None},
                has_actions=has_actions,
                language=lang,
            )
        )
    for w in writers:
        w.close()
    rejected = ClipRecord(key=clip_key("f" * 16, 0, 8, {}), source_id="f" * 16, start_frame=0, end_frame=8, start_s=0.0, end_s=1.0)
    rejected.reject("too_static")
    c.write_part("clips", clips_table([*records, rejected]), part="batch0")
    return c


def dataset(corpus, select="SELECT key FROM clips WHERE kept", **kw) -> ClipDataset:
    kw.setdefault("size", OUT)
    return ClipDataset.from_corpus(corpus, select, **kw)


def grey(x: torch.Tensor) -> float:
    """Mean grey level of a [3, H, W] item on the 0..255 scale."""
    return float(x.mean()) * 255


def test_pairs_come_from_frames_t_and_t_plus_gap(corpus):
    items = list(dataset(corpus, gap_frames=3, shuffle=False))
    per_key = Counter(i["key"] for i in items)
    assert per_key == {KEYS[n]: CLIPS[n][2] - 3 for n in CLIPS}  # every valid t, once
    for it in items:
        assert it["obs"].shape == (3, OUT, OUT) and it["obs"].dtype == torch.float32
        assert 0.0 <= float(it["obs"].min()) and float(it["next_obs"].max()) <= 1.0
        assert it["k"] == 3
        # limited-range YUV round trip: within 3 grey levels of the encoded value
        assert abs(grey(it["obs"]) - 10 * it["t"]) < 3, (it["key"], it["t"], grey(it["obs"]))
        assert abs(grey(it["next_obs"]) - 10 * (it["t"] + 3)) < 3
    ts = sorted(i["t"] for i in items if i["key"] == KEYS["a"])
    assert ts == list(range(12 - 3))


def test_gap_s_converts_per_clip_fps(corpus):
    items = list(dataset(corpus, gap_s=0.2, shuffle=False))
    for it in items:
        fps = CLIPS[NAME[it["key"]]][1]
        k = {10.0: 2, 20.0: 4}[fps]  # round(0.2 s * fps)
        assert it["k"] == k and it["fps"] == fps
        assert abs(grey(it["next_obs"]) - 10 * (it["t"] + k)) < 3
    assert Counter(i["key"] for i in items)[KEYS["c"]] == 24 - 4
    # a gap shorter than a frame still moves one frame forward
    tiny = list(dataset(corpus, "SELECT key FROM clips WHERE out_fps = 10", gap_s=0.01, shuffle=False))
    assert {i["k"] for i in tiny} == {1}


def test_actions_line_up_with_t(corpus):
    items = list(dataset(corpus, gap_frames=3, shuffle=False))
    with_actions = [i for i in items if "actions" in i]
    assert {i["key"] for i in with_actions} == {KEYS[n] for n in CLIPS if CLIPS[n][3]}
    for it in with_actions:
        t, c = it["t"], list(CLIPS).index(NAME[it["key"]])
        assert it["actions"].tolist() == [t, 100 * c + t]
        assert it["actions_window"].shape == (3, ACTION_DIM)
        assert it["actions_window"][:, 0].tolist() == [t, t + 1, t + 2]
        assert it["actions_sum"].tolist() == [3 * t + 3, 3 * (100 * c + t) + 3]
    d = [i for i in items if i["key"] == KEYS["d"]]
    assert d and all("actions" not in i and i["lang"] == "pick up the cup" for i in d)


def test_window_of_three_frames(corpus):
    items = list(dataset(corpus, "SELECT key FROM clips WHERE out_fps = 20", gap_frames=2, window=3, shuffle=False))
    assert Counter(i["key"] for i in items) == {KEYS["c"]: 24 - 4, KEYS["d"]: 20 - 4}
    for it in items:
        assert it["frames"].shape == (3, 3, OUT, OUT)
        levels = [grey(f) for f in it["frames"]]
        assert np.allclose(levels, [10 * it["t"], 10 * (it["t"] + 2), 10 * (it["t"] + 4)], atol=3)
        assert torch.equal(it["frames"][1], it["next_obs"])


def test_pairs_per_clip_draws_distinct_subset_deterministically(corpus):
    ds = dataset(corpus, gap_frames=1, pairs_per_clip=4, shuffle=False, seed=3)
    items = list(ds)
    per_key = Counter(i["key"] for i in items)
    assert per_key == {KEYS[n]: 4 for n in CLIPS}
    t_of = lambda its: {k: sorted(i["t"] for i in its if i["key"] == k) for k in KEYS.values()}  # noqa: E731
    first = t_of(items)
    assert all(len(set(ts)) == 4 for ts in first.values())
    assert t_of(list(ds)) == first  # same seed and epoch: same subset
    ds.set_epoch(1)
    assert t_of(list(ds)) != first  # a new epoch draws new pairs


def test_selection_by_sql_and_by_manifest_choose_exactly_those_keys(corpus, tmp_path):
    items = list(dataset(corpus, "SELECT key FROM clips WHERE kept AND out_fps = 10"))
    assert {i["key"] for i in items} == {KEYS[n] for n in "abe"}
    path = write_selection(str(tmp_path / "m.parquet"), [KEYS["c"], KEYS["e"]])
    ds = dataset(corpus, path)
    assert set(ds.shard_urls) == {"shard-000000.tar", "shard-000001.tar"}
    reader_items = list(ds)
    assert {i["key"] for i in reader_items} == {KEYS["c"], KEYS["e"]}
    # only shards holding selected keys are opened
    ds = dataset(corpus, write_selection(str(tmp_path / "one.parquet"), [KEYS["d"]]))
    assert list(ds.shard_urls) == ["shard-000001.tar"]
    assert {i["key"] for i in ds} == {KEYS["d"]}


def test_unselected_samples_are_skipped_unread(corpus):
    url = corpus.shard_url("shard-000000.tar")
    reader = ShardReader(url, keys={KEYS["b"]})
    samples = list(reader)
    assert [s.key for s in samples] == [KEYS["b"]]
    assert reader.stats == {"samples": 1, "not_selected": 2}
    s = samples[0]
    assert s.meta.num_frames == 16 and s.meta.fps == 10.0 and s.actions.shape == (16, ACTION_DIM)
    assert decode_frames(s.mp4).shape == (16, SIZE, SIZE, 3)
    # all samples, in tar order
    all_keys = [s.key for s in ShardReader([url, corpus.shard_url("shard-000001.tar")])]
    assert all_keys == [KEYS[n] for n in "abcde"]


def split_items(corpus, world_size, num_workers, **kw):
    """(key, t) of every item each (rank, worker) consumer yields, through real DataLoaders."""
    out = {}
    for rank in range(world_size):
        loader = make_loader(
            corpus.root,
            "SELECT key FROM clips WHERE kept",
            batch_size=4,
            num_workers=num_workers,
            size=OUT,
            gap_frames=2,
            rank=rank,
            world_size=world_size,
            **kw,
        )
        out[rank] = [(k, int(t)) for b in loader for k, t in zip(b["key"], b["t"], strict=False)]
    return out


@pytest.mark.parametrize("world_size,num_workers", [(2, 0), (2, 2)])
def test_rank_and_worker_splits_are_disjoint_and_cover_the_selection(corpus, world_size, num_workers):
    # (2, 0): 2 consumers, 2 shards -> whole shards per rank; (2, 2): 4 consumers > 2 shards -> clips
    full = {(KEYS[n], t) for n in CLIPS for t in range(CLIPS[n][2] - 2)}
    got = split_items(corpus, world_size, num_workers)
    seen = [set(v) for v in got.values()]
    assert all(len(set(v)) == len(v) for v in got.values())  # no item twice within a rank
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == full
    # and the keys are disjoint too (a clip is read by one consumer only)
    assert not {k for k, _ in seen[0]} & {k for k, _ in seen[1]}


def test_worker_assignment_partitions_shards_or_clips(corpus):
    ds = dataset(corpus)
    for n in (1, 2, 3, 4, 7):
        parts = [ds.assignment(c, n) for c in range(n)]
        keys = [k for p in parts for k in p.counts]
        assert sorted(keys) == sorted(KEYS.values()), n
        if n <= 2:  # whole shards: no shard opened by two consumers
            shards = [s for p in parts for s in p.shards]
            assert len(shards) == len(set(shards)) == 2
        for p in parts:
            assert all(ds.shard_of[ds.keys.index(k)] in p.shards for k in p.counts)


def test_same_seed_same_order_different_seed_different_order(corpus):
    order = lambda seed: [(i["key"], i["t"]) for i in dataset(corpus, gap_frames=2, seed=seed, shuffle_buffer=16)]  # noqa: E731
    a, b, c = order(1), order(1), order(2)
    assert a == b
    assert a != c and sorted(a) == sorted(c)
    # shuffling actually mixes clips: not grouped by key as the tar order is
    assert [k for k, _ in a] != [k for k, _ in sorted(a, key=lambda x: list(KEYS.values()).index(x[0]))]


def test_weights_bias_sampling(corpus, tmp_path):
    keys = [KEYS[n] for n in CLIPS]
    path = write_selection(str(tmp_path / "w.parquet"), keys, [10.0 if n == "a" else 1.0 for n in CLIPS])
    ds = dataset(corpus, path, gap_frames=1, pairs_per_clip=1, samples_per_epoch=300, seed=0)
    assert ds.weighted
    counts = Counter(i["key"] for i in ds)
    assert sum(counts.values()) == 300
    # expected 300 * 10/14 = 214 for "a", 21 for each other clip
    assert counts[KEYS["a"]] > 170
    assert all(counts[KEYS[n]] < 45 for n in "bcde")
    # deterministic given seed and epoch; a new epoch redraws
    assert Counter(i["key"] for i in ds) == counts
    ds.set_epoch(1)
    assert Counter(i["key"] for i in ds) != counts


def test_bad_samples_are_counted_not_raised(corpus, tmp_path):
    path = tmp_path / "bad.tar"
    w = wds.TarWriter(str(path))
    good = next(iter(ShardReader(corpus.shard_url("shard-000000.tar"), keys={KEYS["a"]})))
    bad_meta = SampleMeta.from_json(good.meta.to_json())
    bad_meta.key = "broken-video"
    w.write({"__key__": "broken-video", "mp4": b"not an mp4 at all" * 10, "json": bad_meta.to_json()})
    w.write({"__key__": "no-json", "mp4": good.mp4})
    w.write({"__key__": good.key, "mp4": good.mp4, "json": good.meta.to_json()})
    w.close()
    reader = ShardReader(str(path))
    assert [s.key for s in reader] == ["broken-video", good.key]
    assert reader.stats["error:missing_json"] == 1
    with pytest.raises(DecodeError):
        decode_frames(b"not an mp4 at all" * 10, [0])
    sel = pa.table({"key": ["broken-video", good.key], "shard": ["bad.tar"] * 2, "weight": [1.0, 1.0]})
    ds = ClipDataset(sel, {"bad.tar": str(path)}, size=OUT, gap_frames=1, shuffle=False)
    items = list(ds)
    assert {i["key"] for i in items} == {good.key} and len(items) == 11
    assert ds.stats["error:decode"] == 1
    # a truncated shard yields what it can and counts the rest
    data = corpus.fs.cat_file(corpus.path("shards", "shard-000000.tar"))
    trunc = tmp_path / "trunc.tar"
    trunc.write_bytes(data[: len(data) // 2])
    reader = ShardReader(str(trunc))
    keys = [s.key for s in reader]
    assert keys and keys == [KEYS[n] for n in "abc"][: len(keys)]
    assert reader.stats["error:bad_shard"] == 1


def test_make_loader_with_two_workers_collates_batches(corpus):
    loader = make_loader(corpus.root, "SELECT key FROM clips WHERE kept", batch_size=8, num_workers=2, size=(OUT, 24), gap_s=0.1, seed=5)
    batches = list(loader)
    total = sum(len(b["key"]) for b in batches)
    # k = 1 for 10 fps clips, 2 for 20 fps
    assert total == sum(n - (1 if fps == 10 else 2) for _, fps, n, _, _ in CLIPS.values())
    b = batches[0]
    assert b["obs"].shape == (len(b["key"]), 3, OUT, 24) and b["t"].dtype == torch.int64
    for batch in batches:
        for i, t in enumerate(batch["t"].tolist()):
            assert abs(float(batch["next_obs"][i].mean()) * 255 - 10 * (t + int(batch["k"][i]))) < 3
    # same seed, same worker count: same stream
    again = list(
        make_loader(corpus.root, "SELECT key FROM clips WHERE kept", batch_size=8, num_workers=2, size=(OUT, 24), gap_s=0.1, seed=5)
    )
    assert [b["key"] for b in again] == [b["key"] for b in batches]


def test_collate_mixed_fields():
    a = {"obs": torch.zeros(3, 2, 2), "key": "x", "t": 1, "fps": 10.0, "actions_window": torch.zeros(2, 2), "actions": torch.ones(2)}
    b = {"obs": torch.ones(3, 2, 2), "key": "y", "t": 2, "fps": 20.0, "actions_window": torch.zeros(4, 2)}
    out = collate_items([a, b])
    assert out["obs"].shape == (2, 3, 2, 2) and out["t"].tolist() == [1, 2] and out["key"] == ["x", "y"]
    assert isinstance(out["actions_window"], list) and out["actions"][1] is None


def test_bad_config_names_every_problem(corpus):
    sel = resolve_selection(corpus, "SELECT key FROM clips WHERE kept")
    with pytest.raises(ValueError) as err:
        ClipDataset(sel, corpus.shard_url, gap_frames=2, gap_s=0.5, window=1, rank=3, world_size=2)
    msg = str(err.value)
    assert "not both" in msg and "window must be >= 2" in msg and "rank must be in [0, world_size=2)" in msg


class CountingFile(io.FileIO):
    """A real file that counts the bytes read from it."""

    bytes_read = 0

    def read(self, n=-1):
        data = super().read(n)
        self.bytes_read += len(data)
        return data

    def readinto(self, b):
        n = super().readinto(b)
        self.bytes_read += n or 0
        return n


def test_unselected_sample_bytes_are_not_read(corpus, tmp_path):
    small = next(iter(ShardReader(corpus.shard_url("shard-000001.tar"), keys={KEYS["e"]})))
    path = tmp_path / "big.tar"
    w = wds.TarWriter(str(path))
    # a 4 MB sample nobody selects, then the small one
    w.write({"__key__": "big", "mp4": np.random.default_rng(0).bytes(4 << 20), "json": small.meta.to_json()})
    w.write({"__key__": small.key, "mp4": small.mp4, "json": small.meta.to_json()})
    w.close()
    with CountingFile(str(path)) as f:
        got = list(ShardReader([], keys={small.key}).read_fileobj(f, str(path)))
        assert [s.key for s in got] == [small.key] and got[0].mp4 == small.mp4
        assert f.bytes_read < 256 << 10, f.bytes_read  # headers and the small sample only


def test_reads_fsspec_urls_and_counts_missing_shards(corpus):
    mem = fsspec.filesystem("memory")
    mem.pipe("/defi-test/shard-000000.tar", corpus.fs.cat_file(corpus.path("shards", "shard-000000.tar")))
    reader = ShardReader(["memory://defi-test/shard-000000.tar", "memory://defi-test/missing.tar"])
    assert [s.key for s in reader] == [KEYS[n] for n in "abc"]
    assert reader.stats["error:bad_shard"] == 1 and reader.stats["samples"] == 3
    mem.rm("/defi-test", recursive=True)


def test_items_per_consumer_equalises_rank_lengths(corpus):
    # 2 ranks over 2 shards of unequal size (3 clips vs 2): without a cap lengths differ
    lengths = {r: len(v) for r, v in split_items(corpus, 2, 0).items()}
    assert lengths[0] != lengths[1]
    capped = split_items(corpus, 2, 0, items_per_consumer=60)
    assert {r: len(v) for r, v in capped.items()} == {0: 60, 1: 60}
    # the smaller share was re-read to fill its quota; the ranks still read disjoint clips
    assert not {k for k, _ in capped[0]} & {k for k, _ in capped[1]}
