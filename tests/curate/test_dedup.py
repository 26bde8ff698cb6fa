"""pHash and near-duplicate grouping, on real re-encoded H.264 clips."""

from __future__ import annotations

import io
import random
import time

import av
import numpy as np
import pytest
from factories import pan, scenes, write_video

from defi.curate.base import Frames
from defi.curate.encode import fixed_allocations
from defi.curate.dedup import Dedup, DedupItem, clip_phashes, dedup, hamming, hash_pairs, phash
from defi.schemas.records import ClipRecord

H, W, N = 96, 128, 24


def decode_frames(path_or_bytes) -> Frames:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    with av.open(src) as c:
        s = c.streams.video[0]
        fr = [(f.to_ndarray(format="rgb24"), float(f.time)) for f in c.decode(s)]
    return Frames(np.stack([f for f, _ in fr]), np.array([t for _, t in fr]), np.arange(len(fr)))


def encode(frames: list[np.ndarray], path, size: tuple[int, int] | None = None, crf: int = 18):
    """Write frames as H.264 at ``crf``, optionally resized to (w, h) first (a 're-upload')."""
    import cv2

    if size is not None:
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    path = write_video(path, frames, fps=24)
    if crf != 18:  # write_video fixes crf 18; re-encode at the requested quality
        with av.open(str(path)) as c:
            dec = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        with fixed_allocations(), av.open(str(path), "w") as out:
            st = out.add_stream("libx264", rate=24)
            st.height, st.width = dec[0].shape[:2]
            st.pix_fmt, st.options = "yuv420p", {"crf": str(crf)}
            st.codec_context.thread_count = 1
            for f in dec:
                for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(p)
            for p in st.encode():
                out.mux(p)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two contents, each as an original and a smaller low-quality re-encode, plus a third content."""
    d = tmp_path_factory.mktemp("dedup")
    a = list(pan(N, H, W, seed=0))
    b = list(scenes([N], H, W, seed=3))
    c = list(pan(N, H, W, seed=11))
    paths = {
        "a": encode(a, d / "a.mp4"),
        "a_small": encode(a, d / "a_small.mp4", size=(64, 48), crf=36),
        "b": encode(b, d / "b.mp4"),
        "b_crf": encode(b, d / "b_crf.mp4", crf=40),
        "c": encode(c, d / "c.mp4"),
    }
    return {k: decode_frames(p) for k, p in paths.items()}


def test_phash_survives_resize_and_reencode_but_separates_content(clips):
    h = {k: clip_phashes(f)[0] for k, f in clips.items()}
    assert all(len(x) == 16 and int(x, 16) >= 0 for x in h.values())
    limit = Dedup().max_hamming
    assert hamming(h["a"], h["a_small"]) <= limit
    assert hamming(h["b"], h["b_crf"]) <= limit
    for x, y in [("a", "b"), ("a", "c"), ("b", "c"), ("a_small", "b_crf")]:
        assert hamming(h[x], h[y]) > 3 * limit, (x, y, hamming(h[x], h[y]))


def test_phash_known_values():
    # a left-right step has its energy in the first horizontal DCT row; flipping it changes
    # the sign of odd coefficients, so the hashes differ
    img = np.zeros((32, 32), np.uint8)
    img[:, 16:] = 255
    assert phash(img) == phash(np.repeat(img[..., None], 3, -1))  # grey == RGB of the same grey
    assert hamming(phash(img), phash(img[:, ::-1])) > 0
    assert hamming(phash(img), phash(img)) == 0


def test_clip_phashes_positions(clips):
    f = clips["a"]
    first, mid, last = clip_phashes(f, ("first", "middle", "last"))
    assert mid == phash(f.frames[len(f) // 2]) == clip_phashes(f)[0]
    assert first == phash(f.frames[0]) and last == phash(f.frames[-1])
    assert clip_phashes(Frames(np.zeros((0, 4, 4, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64))) == []
    with pytest.raises(ValueError):
        clip_phashes(f, ("centre",))


def test_groups_and_keeper_deterministic_and_order_independent(clips):
    quality = {"a": 0.5, "a_small": 0.9, "b": 0.7, "b_crf": 0.7, "c": 0.1}
    items = [DedupItem(k, clip_phashes(f, ("first", "middle", "last")), None, quality[k]) for k, f in clips.items()]
    expect = {"a": "a_small", "a_small": "a_small", "b": "b", "b_crf": "b", "c": "c"}  # b ties: smaller key
    rng = random.Random(0)
    for _ in range(6):
        rng.shuffle(items)
        res = Dedup(min_cosine=None)(items)
        got = {r.key: r.dup_group for r in res}
        assert got == expect
        assert [r.key for r in res] == [it.key for it in items]  # results follow input order
        assert {r.key for r in res if r.kept} == {"a_small", "b", "c"}
        assert {r.key: r.group_size for r in res}["b_crf"] == 2


def test_embedding_criterion_and_transitivity():
    e = np.eye(4, dtype=np.float32)
    close = e[0] + 0.05 * e[1]  # cosine ~0.9988 with e[0]
    h = "0f0f0f0f0f0f0f0f"
    h_near = f"{int(h, 16) ^ 0b111:016x}"  # 3 bits away
    items = [
        DedupItem("x", [h], None, 1.0),
        DedupItem("y", [h_near], close * 3.0, 2.0),  # embeddings need not be unit norm
        DedupItem("z", [], e[0], 0.5),  # no hash: joins y through its embedding only
        DedupItem("w", ["f0f0f0f0f0f0f0f0"], e[2], None),  # far on both
        DedupItem("v", [], None, 9.0),  # nothing to compare: its own group
    ]
    got = {r.key: r.dup_group for r in dedup(items, max_hamming=6, min_cosine=0.99)}
    assert got == {"x": "y", "y": "y", "z": "y", "w": "w", "v": "v"}
    # without embeddings z separates; without hashes x separates
    assert {r.key: r.dup_group for r in dedup(items, 6, None)}["z"] == "z"
    assert {r.key: r.dup_group for r in dedup(items, None, 0.99)}["x"] == "x"
    # quality None ranks below any number
    assert {r.key: r.dup_group for r in dedup([DedupItem("a", [h]), DedupItem("b", [h], None, -5.0)])}["a"] == "b"
    with pytest.raises(ValueError):
        dedup([DedupItem("a", [h]), DedupItem("a", [h])])


def test_hash_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, size=(60, 2), dtype=np.int64).astype(np.uint64)
    # plant near copies: flip up to 5 random bits per position
    near = base[:30].copy()
    for i in range(30):
        for p in range(2):
            for b in rng.choice(64, size=rng.integers(0, 6), replace=False):
                near[i, p] ^= np.uint64(1) << np.uint64(b)
    hashes = np.concatenate([base, near])
    want = {
        (i, j)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if max(bin(int(hashes[i, p] ^ hashes[j, p])).count("1") for p in range(2)) <= 5
    }
    got = {tuple(map(int, p)) for p in hash_pairs(hashes, 5, block=7)}  # small block: many blocks
    assert got == want and len(want) >= 30


def test_apply_to_records_skips_rejected(clips):
    recs = []
    for k, q in [("a", 0.2), ("a_small", 0.1), ("b", 0.3), ("b_crf", 0.4), ("c", 0.0)]:
        r = ClipRecord(key=k, source_id="s", start_frame=0, end_frame=N, start_s=0, end_s=1)
        r.phash = clip_phashes(clips[k])[0]
        r.clip_score_max = q
        recs.append(r)
    recs[3].reject("low_motion")  # b_crf is out already: b has no duplicate left
    counts = Dedup(min_cosine=None).apply(recs)
    by = {r.key: r for r in recs}
    assert counts == {"groups": 3, "duplicates": 1}
    assert by["a_small"].reject_reason == "duplicate" and by["a_small"].dup_group == "a"
    assert by["a"].kept and by["a"].dup_group == "a"
    assert by["b"].kept and by["b_crf"].reject_reason == "low_motion" and by["b_crf"].dup_group is None


def test_scales_to_10k_clips():
    rng = np.random.default_rng(2)
    n, planted = 10_000, 200
    vals = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    for i in range(planted):  # clip n-1-i is clip i with 2 bits flipped
        vals[n - 1 - i] = vals[i] ^ np.uint64(0b101 << (i % 60))
    emb = rng.normal(size=(n, 64)).astype(np.float32)
    items = [DedupItem(f"k{i:05d}", [f"{int(v):016x}"], emb[i], float(i)) for i, v in enumerate(vals)]
    t = time.perf_counter()
    res = dedup(items, max_hamming=6, min_cosine=0.95)
    elapsed = time.perf_counter() - t
    dups = [r for r in res if not r.kept]
    assert len(dups) == planted
    assert all(r.dup_group == f"k{n - 1 - int(r.key[1:]):05d}" for r in dups)  # higher quality kept
    assert elapsed < 5.0, elapsed  # ~0.5 s on 2 idle cores; generous for a loaded CI box


def test_operator_validates_and_has_lineage():
    with pytest.raises(ValueError):
        Dedup(max_hamming=65)
    with pytest.raises(ValueError):
        Dedup(min_cosine=1.5)
    lin = Dedup(max_hamming=4).lineage()
    assert lin["name"] == "dedup" and lin["params"]["max_hamming"] == 4
