"""Perceptual clip signatures and near-duplicate search across a whole corpus (`defi dedup`).

A clip's signature is a set of keyframe vectors: keyframes are taken at ``keyframes_per_s`` by
timestamp (so a copy at another frame rate gives the same moments), each reduced to the
low-frequency DCT of its grey picture after letterbox bars are trimmed and the centre kept:

    grey -> trim bars darker than ``bar_level`` (per clip) -> centre ``centre_crop`` ->
    area-resize to ``hash_size`` squared -> grey levels replaced by their ranks (``rank``) ->
    2-D DCT -> the ``coeffs`` x ``coeffs`` lowest frequencies without the DC term -> unit L2 norm

This is pHash's input before the median threshold (``curate.dedup.phash``), kept as a float
vector: the cosine of two vectors is a graded keyframe similarity, indifferent to brightness and
contrast (ranks, no DC, unit norm), to re-encoding and resizing (low frequencies only), and mostly to
small crops and overlaid text (which move a few low-frequency coefficients a little).

Two clips are compared by ``clip_similarity``: each keyframe of one clip takes its best cosine
in the other; a clip's score is the ``ceil(min_match_frac * its keyframes)``-th best of those,
and the pair's similarity is the larger of the two clips' scores. So a trimmed copy (whose
keyframes all lie inside the original) scores as high as a full copy, while two moments of one
video that do not overlap score low.

Search (``near_pairs``): every keyframe vector goes into a faiss inner-product index (exact
``IndexFlatIP`` up to ``FLAT_MAX`` vectors, else an IVF index whose k-means is trained on an
evenly spaced sample); each vector's ``k`` nearest neighbours at cosine >= the threshold name the
candidate clip pairs, which ``clip_similarity`` then checks exactly. Pairs are joined transitively
(union-find); each group keeps one clip by ``keeper_rank``. Inputs are sorted by key first, so the
result depends only on the set of clips, never on the order they were curated in.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from .base import Frames

FLAT_MAX = 100_000  # vectors searched exactly (all pairs: seconds at this size); above, an IVF index


class SignatureError(RuntimeError):
    """A clip has no signature: ``reason`` is a short name (decode, flat), ``detail`` says more."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class SignatureConfig:
    """How keyframes are chosen and reduced to vectors. ``key()`` names a config: signatures
    made under one config are cached under that name and reused by every later run."""

    version: ClassVar[str] = "1"

    keyframes_per_s: float = field(default=2.0, metadata={"help": "keyframes per second of clip, chosen by timestamp"})
    max_keyframes: int = field(default=32, metadata={"help": "at most this many keyframes per clip (evenly spaced beyond)"})
    decode_size: int = field(default=96, metadata={"help": "short side, px, the keyframes are decoded at"})
    hash_size: int = field(default=32, metadata={"help": "side, px, of the square grey picture the DCT reads"})
    coeffs: int = field(default=6, metadata={"help": "the coeffs x coeffs lowest DCT frequencies form the vector (minus DC)"})
    centre_crop: float = field(default=0.9, metadata={"help": "fraction of each side kept around the centre (after bars)"})
    bar_level: int = field(default=40, metadata={"help": "luma under which a border row/column counts as a letterbox bar"})
    min_texture: float = field(default=2.0, metadata={"help": "grey levels RMS under which a keyframe is flat and left out"})
    rank: bool = field(default=True, metadata={"help": "replace grey levels by their ranks before the DCT (robust to bright overlays)"})

    def __post_init__(self) -> None:
        errors = []
        if not self.keyframes_per_s > 0:
            errors.append(f"keyframes_per_s={self.keyframes_per_s!r}: must be > 0")
        if int(self.max_keyframes) < 1:
            errors.append(f"max_keyframes={self.max_keyframes!r}: must be >= 1")
        if int(self.decode_size) < 16:
            errors.append(f"decode_size={self.decode_size!r}: must be >= 16 px")
        if not 2 <= int(self.coeffs) <= int(self.hash_size):
            errors.append(f"coeffs={self.coeffs!r}: must be in [2, hash_size={self.hash_size}]")
        if not 0.3 <= self.centre_crop <= 1.0:
            errors.append(f"centre_crop={self.centre_crop!r}: must be in [0.3, 1]")
        if not 0 <= int(self.bar_level) <= 255:
            errors.append(f"bar_level={self.bar_level!r}: must be in [0, 255]")
        if errors:
            raise ValueError("invalid SignatureConfig:\n  " + "\n  ".join(errors))

    @property
    def dim(self) -> int:
        return self.coeffs * self.coeffs - 1

    def key(self) -> str:
        """A short hash of the fields and the version: same key, same vectors."""
        blob = json.dumps({"version": self.version, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# signatures
# ----------------------------------------------------------------------------------------------
def grey_frames(frames: Frames) -> np.ndarray:
    """uint8 [T, H, W] luma of RGB or i420 ``Frames`` (i420: the Y plane as stored, 16..235)."""
    if frames.layout == "i420":
        h = frames.frames.shape[1] * 2 // 3
        return frames.frames[:, :h, :]
    import cv2

    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames.frames])


def content_box(grey: np.ndarray, bar_level: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), half-open, of the picture inside letterbox/pillarbox bars:
    border rows and columns whose median (over the row and every frame) stays under ``bar_level``
    (a median, so a caption drawn over a bar leaves it a bar). At most a third of each side is trimmed (dark content is not a bar)."""
    t, h, w = grey.shape
    rows = np.percentile(grey.transpose(1, 0, 2).reshape(h, -1), 50, axis=1)
    cols = np.percentile(grey.transpose(2, 0, 1).reshape(w, -1), 50, axis=1)

    def span(v: np.ndarray) -> tuple[int, int]:
        n, cap = len(v), len(v) // 3
        lo = 0
        while lo < cap and v[lo] < bar_level:
            lo += 1
        hi = n
        while n - hi < cap and v[hi - 1] < bar_level:
            hi -= 1
        return lo, hi

    top, bottom = span(rows)
    left, right = span(cols)
    return top, bottom, left, right


def keyframe_vectors(grey: np.ndarray, cfg: SignatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Vectors float32 [K, cfg.dim] (unit norm) of the keyframes ``grey`` uint8 [T, H, W], and
    a bool [T] mask of which frames gave one (a flat frame, whose 32x32 picture varies by less
    than ``min_texture`` grey levels RMS, gives none: its direction would be noise)."""
    import cv2

    top, bottom, left, right = content_box(grey, cfg.bar_level)
    h, w = bottom - top, right - left
    ch, cw = max(1, round(h * cfg.centre_crop)), max(1, round(w * cfg.centre_crop))
    y0, x0 = top + (h - ch) // 2, left + (w - cw) // 2
    n = cfg.hash_size
    out, ok = [], np.zeros(len(grey), bool)
    for i, g in enumerate(grey):
        small = cv2.resize(np.ascontiguousarray(g[y0 : y0 + ch, x0 : x0 + cw]), (n, n), interpolation=cv2.INTER_AREA)
        if float(small.std()) < cfg.min_texture:
            continue
        if cfg.rank:
            small = _ranks(small)
        low = cv2.dct(small.astype(np.float32))[: cfg.coeffs, : cfg.coeffs].ravel()[1:]
        norm = float(np.linalg.norm(low))
        if norm < 1e-3:  # texture only in the high frequencies: no direction to compare
            continue
        out.append(low / norm)
        ok[i] = True
    return (np.stack(out).astype(np.float32) if out else np.zeros((0, cfg.dim), np.float32)), ok


def _ranks(img: np.ndarray) -> np.ndarray:
    """Each pixel replaced by its rank among the picture's pixels, scaled to 0..255 (ties share
    their mean rank): the grey levels become uniform, so a small bright overlay (a caption, a
    logo) weighs by its area, not by how far its brightness is from the scene's."""
    flat = img.ravel().astype(np.float32)
    order = np.argsort(flat, kind="stable")
    ranks = np.empty(len(flat), np.float32)
    ranks[order] = np.arange(len(flat), dtype=np.float32)
    # ties: the mean rank of each grey level, so a flat region stays flat
    _, inv, counts = np.unique(flat, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    return (ranks * (255.0 / max(1, len(flat) - 1))).reshape(img.shape).astype(np.float32)


def pick_keyframes(frames: Frames, max_keyframes: int) -> Frames:
    """At most ``max_keyframes`` of ``frames``, evenly spaced (all when there are fewer)."""
    if len(frames) <= max_keyframes:
        return frames
    idx = np.unique(np.linspace(0, len(frames) - 1, max_keyframes).round().astype(int))
    return Frames(frames.frames[idx], frames.pts_s[idx], frames.indices[idx], frames.layout)


def clip_signature(frames: Frames, cfg: SignatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 [K, dim], times_s float32 [K]) of a clip's keyframes (``frames``: the
    clip decoded at ``cfg.keyframes_per_s``). Raises ``SignatureError("flat")`` when no keyframe
    has texture, ``SignatureError("empty")`` when there is no frame."""
    if len(frames) == 0:
        raise SignatureError("empty", "the clip decoded to no frames")
    frames = pick_keyframes(frames, cfg.max_keyframes)
    vecs, ok = keyframe_vectors(grey_frames(frames), cfg)
    if not len(vecs):
        raise SignatureError("flat", f"none of {len(frames)} keyframes has texture above {cfg.min_texture} grey levels")
    t0 = float(frames.pts_s[0])
    return vecs, (frames.pts_s[ok] - t0).astype(np.float32)


def mp4_signature(path: str | os.PathLike, cfg: SignatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """``clip_signature`` of a video file (decoded by ``curate.decode`` at the keyframe rate, short
    side ``decode_size``, luma only). Raises ``SignatureError("decode")`` when it cannot be read."""
    from .decode import DecodeError, decode_all

    try:
        frames = decode_all(path, fps=cfg.keyframes_per_s, size=cfg.decode_size, pix_fmt="yuv420p", threads=1)
    except DecodeError as e:
        raise SignatureError("decode", str(e)) from None
    return clip_signature(frames, cfg)


# ----------------------------------------------------------------------------------------------
# comparing and searching
# ----------------------------------------------------------------------------------------------
def _score(best: np.ndarray, min_match_frac: float) -> float:
    q = max(1, math.ceil(min_match_frac * len(best) - 1e-9))
    return float(np.sort(best)[::-1][q - 1])


def clip_similarity(a: np.ndarray, b: np.ndarray, min_match_frac: float = 0.5) -> float:
    """Similarity in [-1, 1] of two signatures (unit vectors [m, D] and [n, D]): for each clip,
    the ``ceil(min_match_frac * keyframes)``-th best of its keyframes' best cosines in the other;
    the larger of the two. Symmetric."""
    s = a @ b.T
    return max(_score(s.max(axis=1), min_match_frac), _score(s.max(axis=0), min_match_frac))


def build_index(vectors: np.ndarray, nlist: int | None = None, nprobe: int = 16, seed: int = 0, sq8: bool = False, pca: int | None = None):
    """A faiss inner-product index holding ``vectors`` (float32 [N, D], searched in the order
    given). Up to ``FLAT_MAX`` vectors: exact (``IndexFlatIP``); above, ``IndexIVFFlat`` with
    ``nlist`` k-means cells (default 4 sqrt(N)) trained (10 iterations) on an evenly spaced
    sample of 32 vectors per cell, ``nprobe`` cells searched per query. ``sq8``: store 8-bit
    scalar-quantised vectors (``IndexIVFScalarQuantizer``, a quarter of the memory). ``pca``:
    search the cosines of the first ``pca`` principal components (``IndexPreTransform``: PCA,
    then unit norm): a fraction of the memory and time for long vectors such as 512-d
    embeddings. Both give approximate similarities: search with a lower ``search_min`` in
    ``near_pairs``, which checks every hit on the vectors themselves."""
    import faiss

    x = np.ascontiguousarray(vectors, np.float32)
    n, d = x.shape
    if n <= FLAT_MAX and nlist is None and not sq8 and pca is None:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = nlist or max(1, int(4 * math.sqrt(n)))
        e = pca or d
        if sq8:
            ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(e), e, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        else:
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(e), e, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = seed
        ivf.cp.niter = 10  # k-means iterations: the cells need only be roughly balanced
        ivf.nprobe = min(nprobe, nlist)
        if pca:  # project, then re-normalise: the search compares directions in the projection
            index = faiss.IndexPreTransform(faiss.NormalizationTransform(e), ivf)
            index.prepend_transform(faiss.PCAMatrix(d, e))
        else:
            index = ivf
        index.train(x[np.linspace(0, n - 1, min(n, 32 * nlist)).astype(np.int64)])
    for s in range(0, n, 262144):  # in blocks: a pre-transform copies what it adds
        index.add(x[s : s + 262144])
    return index


def near_pairs(
    vectors: np.ndarray,
    owner: np.ndarray,
    min_cosine: float,
    k: int = 32,
    index=None,
    batch: int = 65536,
    search_min: float | None = None,
) -> np.ndarray:
    """Pairs of owners (i < j) with at least one vector each at cosine >= ``min_cosine``, among
    each vector's ``k`` nearest neighbours in ``index`` (default: ``build_index(vectors)``) whose
    index similarity is >= ``search_min`` (default ``min_cosine``); every hit is checked on the
    vectors themselves. ``vectors``: float32 [N, D] unit rows; ``owner``: int64 [N] (clip index
    of each vector). Returns int64 [P, 2], sorted, unique."""
    if len(vectors) == 0:
        return np.zeros((0, 2), np.int64)
    if len(vectors) <= FLAT_MAX:
        # One OpenMP thread at this size (a fraction of a second either way): faiss's OpenMP pool,
        # once started, is not fork-safe, and the local runner forks its workers after this
        # (a later curate in the same process, e.g. the Python API or the tests).
        import faiss

        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return _near_pairs(vectors, owner, min_cosine, k, index, batch, search_min)
        finally:
            faiss.omp_set_num_threads(threads)
    return _near_pairs(vectors, owner, min_cosine, k, index, batch, search_min)


def _near_pairs(vectors, owner, min_cosine, k, index, batch, search_min) -> np.ndarray:
    index = index if index is not None else build_index(vectors)
    k = min(k + 1, len(vectors))  # + itself
    floor = (min_cosine if search_min is None else search_min) - 1e-6
    out = []
    for s in range(0, len(vectors), batch):
        sims, nn = index.search(np.ascontiguousarray(vectors[s : s + batch], np.float32), k)
        rows = np.repeat(np.arange(s, s + len(nn)), k)
        nn, sims = nn.ravel(), sims.ravel()
        hit = (nn >= 0) & (sims >= floor)
        r, c = rows[hit], nn[hit]
        a, b = owner[r], owner[c]
        keep = a != b
        r, c, a, b = r[keep], c[keep], a[keep], b[keep]
        exact = np.einsum("ij,ij->i", vectors[r], vectors[c]) >= min_cosine - 1e-6  # approximate indexes
        a, b = a[exact], b[exact]
        out.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    pairs = np.concatenate(out)
    return np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), np.int64)


@dataclass
class ClipInfo:
    """What grouping needs of one clip. ``signature``: unit keyframe vectors or None;
    ``embedding``: a semantic vector (CLIP) or None; ``width``/``height``/``duration_s`` rank the
    keeper (see ``keeper_rank``)."""

    key: str
    signature: np.ndarray | None = None
    embedding: Any = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


def keeper_rank(c: ClipInfo) -> tuple:
    """Sort key, best first: most source pixels, then longest, then the smallest key. Depends on
    the clip alone, so the keeper of a group does not depend on the order clips arrived in."""
    pixels = (c.width or 0) * (c.height or 0)
    return (-pixels, -(c.duration_s or 0.0), c.key)


@dataclass
class Grouping:
    """Per clip (in key order): ``dup_group`` (keeper's key), ``keeper``, ``group_size``,
    ``neighbour`` (most similar matched clip or None), ``distance`` (1 - similarity) and
    ``match`` (keyframes | embedding | None)."""

    keys: list[str]
    dup_group: list[str]
    keeper: list[bool]
    group_size: list[int]
    neighbour: list[str | None]
    distance: list[float | None]
    match: list[str | None]
    candidates: int = 0
    pairs: int = 0


def group_clips(
    clips: Sequence[ClipInfo],
    min_similarity: float = 0.88,
    min_match_frac: float = 0.5,
    neighbours: int = 32,
    semantic_min_cosine: float | None = None,
) -> Grouping:
    """Near-duplicate groups of ``clips`` (keys unique; any order): keyframe signatures matched
    by ``clip_similarity >= min_similarity`` (candidates from ``near_pairs`` at the same
    keyframe cosine), and, when ``semantic_min_cosine`` is set, embeddings at cosine >= it.
    Pairs join transitively; each group keeps its best clip by ``keeper_rank``."""
    clips = sorted(clips, key=lambda c: c.key)
    keys = [c.key for c in clips]
    if len(set(keys)) != len(keys):
        raise ValueError("group_clips: keys must be unique")
    n = len(clips)
    best: list[tuple[float, str, str] | None] = [None] * n  # (similarity, neighbour key, match)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int, sim: float, how: str) -> None:
        for a, b in ((i, j), (j, i)):
            cur = best[a]
            # the most similar neighbour; ties: the smaller key (order-independent)
            if cur is None or sim > cur[0] or (sim == cur[0] and keys[b] < cur[1]):
                best[a] = (sim, keys[b], how)
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    cand = matched = 0
    sig_idx = [i for i, c in enumerate(clips) if c.signature is not None and len(c.signature)]
    if sig_idx:
        vecs = np.concatenate([clips[i].signature for i in sig_idx]).astype(np.float32)
        owner = np.concatenate([np.full(len(clips[i].signature), i, np.int64) for i in sig_idx])
        pairs = near_pairs(vecs, owner, min_similarity, neighbours)
        cand += len(pairs)
        for i, j in pairs:
            sim = clip_similarity(clips[i].signature, clips[j].signature, min_match_frac)
            if sim >= min_similarity - 1e-6:
                join(int(i), int(j), sim, "keyframes")
                matched += 1
    if semantic_min_cosine is not None:
        emb_idx = [i for i, c in enumerate(clips) if c.embedding is not None and len(c.embedding)]
        if emb_idx:
            e = np.stack([np.asarray(clips[i].embedding, np.float32) for i in emb_idx])
            norms = np.linalg.norm(e, axis=1, keepdims=True)
            e = e / np.where(norms > 0, norms, 1.0)
            row = {c: r for r, c in enumerate(emb_idx)}
            pairs = near_pairs(e, np.asarray(emb_idx, np.int64), semantic_min_cosine, neighbours)
            cand += len(pairs)
            for i, j in pairs:
                i, j = int(i), int(j)
                if best[i] is None or best[i][1] != keys[j]:  # not already matched by keyframes
                    join(i, j, float(e[row[i]] @ e[row[j]]), "embedding")
                    matched += 1
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    dup_group, keeper, size = [""] * n, [False] * n, [0] * n
    for ms in members.values():
        k = min(ms, key=lambda i: keeper_rank(clips[i]))
        for i in ms:
            dup_group[i], keeper[i], size[i] = keys[k], i == k, len(ms)
    return Grouping(
        keys=keys,
        dup_group=dup_group,
        keeper=keeper,
        group_size=size,
        neighbour=[b[1] if b else None for b in best],
        distance=[1.0 - b[0] if b else None for b in best],
        match=[b[2] if b else None for b in best],
        candidates=cand,
        pairs=matched,
    )
