"""Policy items from the shard loader: action chunks of H rows at the robot's rate (every row that
curation kept, two per frame for a 20 Hz robot encoded at 10 fps), the end-of-clip mask, history
frames, and the instruction on every item."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from factories import shard_writers, write_clip_sample, write_video

from defi.schemas.records import clips_table
from defi.schemas.corpus import Corpus
from defi.schemas.keys import clip_key
from defi.schemas.shards import ShardReader
from defi.training.data import ActionChunkDataset, ClipDataset, collate_items

SIZE = 16


def npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def grey_clip(n):
    for i in range(n):
        yield np.full((SIZE, SIZE, 3), 20 * i, np.uint8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chunks")
    c = Corpus.create(str(tmp / "corpus"))
    writers = shard_writers(c, 1)
    # "fast": 6 frames at 10 fps over 12 rows at 20 Hz (row r = [r, 1]); frame t shows row 2t
    n = 6
    rows = np.stack([np.arange(2 * n), np.ones(2 * n)], 1).astype(np.float32)
    k1 = clip_key("1" * 16, 0, n, {})
    mp4 = write_video(tmp / "fast.mp4", grey_clip(n), fps=10).read_bytes()
    r1 = write_clip_sample(
        writers,
        0,
        k1,
        mp4,
        n,
        10.0,
        SIZE,
        uri="file://fast.mp4",
        members={"actions.npy": npy(rows[::2]), "rows.actions.npy": npy(rows), "lang.txt": "reach"},
        meta={"action_dim": 2, "row_fps": 20.0, "frame_rows": list(range(0, 2 * n, 2)), "row_times_s": [i / 20 for i in range(2 * n)]},
        has_actions=True,
        language="reach",
    )
    # "old": a format-1.0 sample, one row per frame, no instruction
    k2 = clip_key("2" * 16, 0, 5, {})
    mp4 = write_video(tmp / "old.mp4", grey_clip(5), fps=10).read_bytes()
    old = np.stack([np.arange(5), np.full(5, 2.0)], 1).astype(np.float32)
    r2 = write_clip_sample(
        writers,
        0,
        k2,
        mp4,
        5,
        10.0,
        SIZE,
        uri="file://old.mp4",
        members={"actions.npy": npy(old)},
        meta={"action_dim": 2},
        has_actions=True,
    )
    writers[0].close()
    c.write_part("clips", clips_table([r1, r2]), part="b0")
    return c


def items(corpus, **kw):
    ds = ActionChunkDataset.from_corpus(corpus, "SELECT key FROM clips", size=SIZE, shuffle=False, **kw)
    return sorted(ds, key=lambda it: (float(it["action_chunk"][0, 1]), it["t"]))


def test_chunks_hold_every_row_at_the_robot_rate_with_end_mask(corpus):
    got = items(corpus, horizon=4)
    fast = [it for it in got if it["action_chunk"][0, 1] == 1]
    assert [it["t"] for it in fast] == [0, 1, 2, 3, 4]  # window 2: t + 1 must exist
    for it in fast:
        t = it["t"]
        want = [r for r in range(2 * t, 2 * t + 4)]
        valid = [r < 12 for r in want]
        assert it["action_mask"].tolist() == valid
        np.testing.assert_array_equal(it["action_chunk"][:, 0].numpy(), [r if v else 0 for r, v in zip(want, valid, strict=True)])
        assert it["lang"] == "reach"
    old = [it for it in got if it["action_chunk"][0, 1] == 2]
    assert [it["t"] for it in old] == [0, 1, 2, 3]
    last = old[-1]  # rows 3, 4 then the clip ends
    assert last["action_mask"].tolist() == [True, True, False, False]
    assert last["action_chunk"][:2, 0].tolist() == [3.0, 4.0] and last["lang"] == ""


def test_context_frames_repeat_the_first_before_the_clip(corpus):
    got = items(corpus, horizon=2, context=3)
    it = next(i for i in got if i["t"] == 1 and i["action_chunk"][0, 1] == 1)
    levels = [round(float(f.mean()) * 255 / 20) for f in it["context"]]
    assert levels == [0, 0, 1]  # o_-1 -> o_0, o_0, o_1
    assert torch.equal(it["context"][-1], it["obs"])
    batch = collate_items(got[:3])
    assert batch["action_chunk"].shape == (3, 2, 2) and batch["action_mask"].dtype == torch.bool
    assert batch["context"].shape == (3, 3, 3, SIZE, SIZE)


def test_chunk_skips_clips_without_actions_and_checks_arguments(corpus):
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        ActionChunkDataset.from_corpus(corpus, "SELECT key FROM clips", horizon=0)
    with pytest.raises(ValueError, match="ActionChunkDataset: context must be >= 1"):
        ActionChunkDataset.from_corpus(corpus, "SELECT key FROM clips", horizon=2, context=0)

    # a clip without actions: no chunk items (counted), while the frame-pair dataset still uses it
    chunks = ActionChunkDataset.from_corpus(corpus, "SELECT key FROM clips", size=SIZE, horizon=2, shuffle=False)
    pairs = ClipDataset.from_corpus(corpus, "SELECT key FROM clips", size=SIZE, shuffle=False)
    old = next(s for s in ShardReader(list(chunks.shard_urls.values())) if s.meta.num_frames == 5)
    bare = dataclasses.replace(old, actions=None)
    assert chunks.sample_items(bare) == [] and chunks.stats["skipped:no_actions"] == 1
    assert [it["t"] for it in pairs.sample_items(bare)] == [0, 1, 2, 3] and "action_chunk" not in pairs.sample_items(bare)[0]
