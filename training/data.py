"""The shard data loader: frame pairs (o_t, o_t+k) streamed from WebDataset shards.

Three layers, each usable on its own:

- ``ShardReader`` (``defi.schemas.shards``, beside the writer) iterates the samples of shard tars
  (local paths or fsspec URLs) as ``ShardSample(key, meta, mp4 bytes, actions, proprio, lang)``.
  Samples outside ``keys`` are skipped by seeking past their tar members: they are neither read
  into memory nor decoded.
- ``decode_frames`` decodes chosen frames of an in-memory mp4 with PyAV, resized to (H, W).
- ``ClipDataset`` (a torch ``IterableDataset``) plans an epoch over a resolved selection
  (``defi.schemas.selection.resolve_selection``), gives each consumer (rank x DataLoader worker)
  a disjoint part of it, and yields frame pairs/windows. ``ActionChunkDataset`` is the same with
  each item's next action rows (policy training). ``make_loader`` wraps it in a DataLoader;
  the ``defi train`` commands use ``build_dataset`` (shuffled, over a selection) and
  ``batch_stream`` (endless batches, epoch after epoch, resumable from a step).

Units: ``t``, ``gap_frames`` and ``k`` are frame indices/counts of the *encoded clip* (0-based,
decode order); ``gap_s`` is seconds and becomes ``k = max(1, round(gap_s * fps))`` per clip
(Python's round: half to even), with the clip's encoded fps from its ``<key>.json``.

Determinism: everything random derives from ``(seed, epoch)`` (the epoch's clip draws and shard
order), ``(seed, epoch, key, draw)`` (which pairs a clip yields: independent of how the data is
split across consumers) and ``(seed, epoch, consumer)`` (the shuffle buffer). Same seed, epoch,
world size and worker count give the same stream; call ``set_epoch`` between epochs (workers are
re-created each epoch unless ``persistent_workers``, which would freeze the epoch: don't).
"""

from __future__ import annotations

import io
import itertools
import logging
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

import av
from av.video.reformatter import VideoReformatter
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from defi.schemas.gap import Gap
from defi.schemas.shards import ShardReader, ShardSample

__all__ = ["ShardReader", "ShardSample", "DecodeError", "decode_frames", "ClipDataset", "collate_items", "make_loader"]

log = logging.getLogger(__name__)


class DecodeError(RuntimeError):
    """An mp4 could not be decoded, or has fewer frames than asked for."""


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def decode_frames(
    mp4: bytes,
    indices: Sequence[int] | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode frames of an in-memory video: uint8 RGB [len(indices), H, W, 3].

    ``indices``: 0-based frame indices in decode order (None: all frames); decoding stops after
    the largest one, and only the asked frames are converted. ``size``: (height, width) to resize
    to (area interpolation, no aspect-ratio preservation); None keeps the encoded size.
    Raises ``DecodeError`` when the video is unreadable or shorter than an index.
    """
    want = None if indices is None else sorted(set(int(i) for i in indices))
    last = None if want is None else (want[-1] if want else -1)
    kwargs: dict[str, Any] = {"format": "rgb24"}
    if size is not None:
        kwargs.update(height=int(size[0]), width=int(size[1]), interpolation="AREA")
    # one reformatter (swscale context) for the whole clip: frame.to_ndarray(width=...) builds a
    # new one per frame, which cost 5x the reformat itself (0.8 vs 0.16 ms/frame at 128->64 px)
    reformatter = VideoReformatter()
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(mp4), mode="r") as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            wanted = None if want is None else set(want)
            if last is not None and last < 0:
                return np.zeros((0, *(size or (stream.height, stream.width)), 3), np.uint8)
            for i, frame in enumerate(container.decode(stream)):
                if wanted is None or i in wanted:
                    got[i] = reformatter.reformat(frame, **kwargs).to_ndarray()
                if last is not None and i >= last:
                    break
    except av.FFmpegError as e:
        raise DecodeError(f"{type(e).__name__}: {e}") from None
    if want is None:
        if not got:
            raise DecodeError("video has no frames")
        return np.stack([got[i] for i in sorted(got)])
    missing = [i for i in want if i not in got]
    if missing:
        raise DecodeError(f"video has {len(got) and max(got) + 1} decodable frames, asked for frame {missing[0]}")
    return np.stack([got[int(i)] for i in indices])


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


def to_chw_float(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [0, 1], contiguous, in one numpy pass (torch's
    permute().float() took 20x longer on the 2-core dev box)."""
    out = np.empty((frames.shape[0], 3, *frames.shape[1:3]), np.float32)
    np.multiply(frames.transpose(0, 3, 1, 2), np.float32(1.0 / 255.0), out=out)
    return out


def _key_hash(key: str) -> int:
    # stable across processes and runs (Python's hash() is salted per process)
    return zlib.crc32(key.encode())


def dist_rank_world() -> tuple[int, int]:
    """(rank, world_size) of torch.distributed when initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass
class Assignment:
    """One consumer's share of an epoch: shards to open (in order) and, per selected key, how many
    times it was drawn."""

    shards: list[str]
    counts: dict[str, int]


class _SkippedClip(Exception):
    """A clip whose items cannot be made; ``str(e)`` is the reason counted in ``stats``."""


class ClipDataset(IterableDataset):
    """Frame pairs/windows from the clips of a selection.

    Args:
        selection: ``pa.Table(key, shard, weight)`` as returned by ``resolve_selection``.
        shard_urls: shard name -> URL/path to open (a mapping, or a callable such as
            ``Corpus.shard_url``; resolved once here so the dataset pickles into workers).
        gap: k as a ``Gap`` (frames, or seconds converted per clip as ``max(1, round(s * fps))``).
            ``gap_frames`` / ``gap_s`` are shorthands for ``Gap.of_frames`` / ``Gap.of_seconds``.
            Give at most one; none means 1 frame.
        window: frames per item, at stride k: t, t+k, ..., t+(window-1)k (>= 2). ``obs`` is
            frame t and ``next_obs`` frame t+k; with ``window > 2`` ``frames`` holds all of them.
        size: (H, W) or an int for square output; None keeps the encoded size.
        pairs_per_clip: items per clip draw: None = every valid t (0 .. n-1-(window-1)k), an int
            = that many distinct t drawn at random (all of them if the clip has fewer).
        weighted: sample clips with replacement with probability proportional to ``weight``.
            None: weighted exactly when some weight differs from 1. Unweighted: every clip once
            per epoch.
        samples_per_epoch: clip draws per epoch when weighted (default: number of clips).
        shuffle: shuffle the shard/clip order and mix items with a ``shuffle_buffer``-item buffer.
        seed, epoch: see the module docstring; ``set_epoch`` changes the epoch.
        rank, world_size: this process' place among the training processes; default from
            torch.distributed when initialised, else (0, 1).
        items_per_consumer: when set, every consumer yields exactly this many items per epoch,
            re-reading its share (with new random pairs) when it runs out, so DDP ranks run the
            same number of steps; None: each consumer yields its share once (lengths can differ).
        storage_options: fsspec options for opening shards.
        context: frames of history per item (>= 1); above 1 items add ``context``
            [context, 3, H, W] = frames t-context+1 .. t (frame 0 repeated before the clip start).

    Splitting: consumers = world_size x DataLoader workers, consumer id = rank x workers + worker
    id. The epoch's draws are identical in every consumer; then, when there are at least as many
    shards (holding drawn clips) as consumers, whole shards are assigned (greedy, balancing drawn
    clips), so each shard is opened by one consumer only; otherwise clips are dealt round-robin
    and consumers share shards (each reads only its keys). Either way the consumers' draws are
    disjoint and their union is the epoch's draws.

    Items (dicts): ``obs``, ``next_obs`` float32 [3, H, W] in [0, 1]; ``frames`` [window, 3, H, W]
    when ``window > 2``; ``key`` (str); ``t`` (int, frame index of obs); ``k`` (int, gap in
    frames); ``fps`` (float); when the clip has actions (float32 [num_frames, A]): ``actions`` =
    row t (the action taken at frame t), ``actions_sum`` = rows t..t+k-1 summed (for delta
    actions, the net action from t to t+k), ``actions_window`` = rows t..t+k-1 [k, A]; all three
    describe the first transition t -> t+k even when ``window > 2``. ``proprio`` = row t when
    present; ``lang`` when the clip has an instruction. Clips too short for one item, that fail
    to decode, or whose actions do not have one row per frame are skipped and counted in
    ``stats`` (per consumer) and logged.
    """

    def __init__(
        self,
        selection: pa.Table,
        shard_urls: Mapping[str, str] | Callable[[str], str],
        *,
        gap: Gap | None = None,
        gap_frames: int | None = None,
        gap_s: float | None = None,
        window: int = 2,
        size: tuple[int, int] | int | None = (64, 64),
        pairs_per_clip: int | None = None,
        weighted: bool | None = None,
        samples_per_epoch: int | None = None,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        seed: int = 0,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        items_per_consumer: int | None = None,
        storage_options: dict | None = None,
        context: int = 1,
    ) -> None:
        super().__init__()
        problems = []
        if int(context) < 1:
            problems.append(f"context must be >= 1 frames, got {context}")
        for col in ("key", "shard", "weight"):
            if col not in selection.column_names:
                problems.append(f"selection has no {col!r} column (resolve it with resolve_selection)")
        try:
            flags = Gap.from_fields(gap_s, gap_frames)
            if gap is not None and flags is not None:
                raise ValueError("give gap, or gap_s or gap_frames, not both")
            gap = gap or flags or Gap.of_frames(1)
        except ValueError as e:
            problems.append(str(e))
        if window < 2:
            problems.append(f"window must be >= 2 frames, got {window}")
        if pairs_per_clip is not None and pairs_per_clip < 1:
            problems.append(f"pairs_per_clip must be >= 1 or None (all), got {pairs_per_clip}")
        if items_per_consumer is not None and items_per_consumer < 1:
            problems.append(f"items_per_consumer must be >= 1 or None, got {items_per_consumer}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            problems.append(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        if (rank is None) != (world_size is None):
            problems.append("give rank and world_size together")
        elif world_size is not None and not 0 <= rank < world_size:
            problems.append(f"rank must be in [0, world_size={world_size}), got {rank}")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        order = np.lexsort(
            (
                np.asarray(selection.column("key").to_pylist(), dtype=object).astype(str),
                np.asarray(selection.column("shard").to_pylist(), dtype=object).astype(str),
            )
        )
        self.keys = [selection.column("key").to_pylist()[i] for i in order]
        self.shard_of = np.asarray(selection.column("shard").to_pylist(), dtype=object)[order]
        self.weights = np.asarray(selection.column("weight").to_numpy(zero_copy_only=False), np.float64)[order]
        url_of = shard_urls if callable(shard_urls) else shard_urls.__getitem__
        self.shard_urls = {s: url_of(s) for s in sorted(set(self.shard_of))}
        self.gap: Gap = gap
        self.window = int(window)
        self.size = (size, size) if isinstance(size, int) else (None if size is None else tuple(size))
        self.pairs_per_clip = pairs_per_clip
        self.weighted = bool(np.any(self.weights != 1.0)) if weighted is None else bool(weighted)
        self.samples_per_epoch = samples_per_epoch
        self.shuffle = shuffle
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.rank, self.world_size = rank, world_size
        self.items_per_consumer = items_per_consumer
        self.storage_options = storage_options
        self.context = int(context)
        self.stats: Counter = Counter()

    # -- planning ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def gap_for(self, fps: float) -> int:
        """k in frames for a clip at ``fps``."""
        return self.gap.frames(fps)

    def epoch_counts(self) -> np.ndarray:
        """Draws per clip (aligned with ``self.keys``) for the current epoch, identical in every
        consumer."""
        if not self.weighted:
            return np.ones(len(self.keys), np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, 0])
        n = self.samples_per_epoch or len(self.keys)
        return rng.multinomial(n, self.weights / self.weights.sum()).astype(np.int64)

    def consumer(self) -> tuple[int, int]:
        """(consumer id, number of consumers) of the calling process/worker."""
        rank, world = (self.rank, self.world_size) if self.world_size is not None else dist_rank_world()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def assignment(self, consumer: int, num_consumers: int) -> Assignment:
        """The part of this epoch's draws that ``consumer`` (of ``num_consumers``) reads."""
        counts = self.epoch_counts()
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        drawn = np.flatnonzero(counts > 0)
        shards = sorted(set(self.shard_of[drawn]))
        if self.shuffle:
            shards = [shards[i] for i in rng.permutation(len(shards))]
        if len(shards) >= num_consumers:
            load = {s: 0 for s in shards}
            for i in drawn:
                load[self.shard_of[i]] += counts[i]
            # greedy: biggest shard first onto the least-loaded consumer (ties: lowest id), so
            # consumers get similar numbers of draws; stable sort keeps the shuffled order on ties
            totals = [0] * num_consumers
            mine: set[str] = set()
            for s in sorted(shards, key=lambda s: -load[s]):
                c = min(range(num_consumers), key=lambda c: (totals[c], c))
                totals[c] += load[s]
                if c == consumer:
                    mine.add(s)
            my_shards = [s for s in shards if s in mine]
            my_clips = [i for i in drawn if self.shard_of[i] in mine]
        else:
            clips = drawn[rng.permutation(len(drawn))] if self.shuffle else drawn
            my_clips = list(clips[consumer::num_consumers])
            have = set(self.shard_of[my_clips])
            my_shards = [s for s in shards if s in have]
        return Assignment(my_shards, {self.keys[i]: int(counts[i]) for i in my_clips})

    # -- iterating -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        cid, n = self.consumer()
        plan = self.assignment(cid, n)
        items = self._items(plan)
        if self.shuffle and self.shuffle_buffer > 1:
            items = _shuffled(items, self.shuffle_buffer, np.random.default_rng([self.seed, self.epoch, 2, cid]))
        if self.items_per_consumer is not None:
            items = itertools.islice(items, self.items_per_consumer)
        yield from items
        log.info("ClipDataset consumer %d/%d epoch %d: %s", cid, n, self.epoch, dict(self.stats))

    def _items(self, plan: Assignment) -> Iterator[dict[str, Any]]:
        for rnd in itertools.count():
            reader = ShardReader([self.shard_urls[s] for s in plan.shards], plan.counts, self.storage_options)
            yielded = 0
            for sample in reader:
                try:
                    items = self.sample_items(sample, plan.counts.get(sample.key, 1), rnd)
                except DecodeError as e:
                    self.stats["error:decode"] += 1
                    log.warning("ClipDataset: %s (%s): %s", sample.key, sample.shard, e)
                    continue
                yielded += len(items)
                yield from items
            self.stats.update(reader.stats)
            if self.items_per_consumer is None:
                return
            if yielded == 0:  # nothing to cycle over: an empty share, or every clip unusable
                log.warning("ClipDataset: a consumer's share yields no items; it cannot fill items_per_consumer")
                return

    def sample_items(self, sample: ShardSample, draws: int = 1, rnd: int = 0) -> list[dict[str, Any]]:
        """Items of one sample for ``draws`` draws (each with its own random t subset); ``rnd``
        counts re-reads of a consumer's share within an epoch (see ``items_per_consumer``)."""
        meta = sample.meta
        n, k = int(meta.num_frames), self.gap_for(float(meta.fps))
        span = (self.window - 1) * k
        if n - span <= 0:
            self.stats["skipped:too_short"] += 1
            return []
        if sample.actions is not None and len(sample.actions) != n:
            self.stats["skipped:actions_misaligned"] += 1
            log.warning("ClipDataset: %s has %d action rows for %d frames; skipped", sample.key, len(sample.actions), n)
            return []
        try:
            rows = self._clip_rows(sample)
        except _SkippedClip as e:
            self.stats[f"skipped:{e}"] += 1
            return []
        starts: list[int] = []
        for d in range(draws):
            valid = self._starts(np.arange(n - span), rows)
            if self.pairs_per_clip is not None and self.pairs_per_clip < len(valid):
                rng = np.random.default_rng([self.seed, self.epoch, 3, _key_hash(sample.key), d, rnd])
                valid = np.sort(rng.choice(valid, self.pairs_per_clip, replace=False))
            starts.extend(int(t) for t in valid)
        needed = sorted(
            {t + j * k for t in starts for j in range(self.window)} | {max(t - j, 0) for t in starts for j in range(1, self.context)}
        )
        frames = decode_frames(sample.mp4, needed, self.size)
        tensor = torch.from_numpy(to_chw_float(frames))
        row = {f: i for i, f in enumerate(needed)}
        out = []
        for t in starts:
            idx = [row[t + j * k] for j in range(self.window)]
            item: dict[str, Any] = {
                "obs": tensor[idx[0]],
                "next_obs": tensor[idx[1]],
                "key": sample.key,
                "t": t,
                "k": k,
                "fps": float(meta.fps),
            }
            if self.window > 2:
                item["frames"] = tensor[idx]
            if sample.actions is not None:
                chunk = torch.from_numpy(np.ascontiguousarray(sample.actions[t : t + k]))
                item["actions"] = chunk[0]
                item["actions_sum"] = chunk.sum(0)
                item["actions_window"] = chunk
            if sample.proprio is not None and t < len(sample.proprio):
                item["proprio"] = torch.from_numpy(np.ascontiguousarray(sample.proprio[t]))
            if sample.lang:
                item["lang"] = sample.lang
            if self.context > 1:  # o_t-C+1 .. o_t, the first frame repeated before the clip starts
                item["context"] = tensor[[row[max(t - j, 0)] for j in range(self.context - 1, -1, -1)]]
            self._add_rows(item, t, sample, rows)
            out.append(item)
        self.stats["clips"] += 1
        self.stats["items"] += len(out)
        return out

    # what ActionChunkDataset adds: a clip's recorded rows, read by its items
    def _clip_rows(self, sample: ShardSample) -> Any:  # noqa: ARG002 (the overrides' signature)
        """What this clip's items read beyond its frames (None: nothing); raises ``_SkippedClip``
        for a clip that cannot make them."""
        return None

    def _starts(self, valid: np.ndarray, rows: Any) -> np.ndarray:  # noqa: ARG002 (the overrides' signature)
        """The frames of ``valid`` that may start an item."""
        return valid

    def _add_rows(self, item: dict[str, Any], t: int, sample: ShardSample, rows: Any) -> None:
        """Add to ``item`` (frame ``t``) what it reads from ``rows``."""

    @classmethod
    def from_corpus(cls, corpus, select, **kwargs) -> ClipDataset:
        """Resolve ``select`` (SQL, manifest path or selection table) against ``corpus``."""
        from defi.schemas.selection import resolve_selection

        return cls(resolve_selection(corpus, select), corpus.shard_url, **kwargs)


class ActionChunkDataset(ClipDataset):
    """``ClipDataset`` items for policy training: only clips with actions are used, only frames
    with a recorded row start an item, and each item adds ``action_chunk`` [horizon, A] (rows at
    the robot's rate from the row aligned to frame t, every row curation kept: see
    ``ShardSample.rows``), ``action_mask`` [horizon] (False past the clip's last row), ``lang``
    always (``""`` without an instruction) and ``state`` (the proprioception of the row recorded
    at frame t) when the clip has it. ``horizon``: action rows per item (>= 1); the other
    arguments are ``ClipDataset``'s."""

    def __init__(self, selection: pa.Table, shard_urls: Mapping[str, str] | Callable[[str], str], *, horizon: int, **kwargs: Any) -> None:
        if int(horizon) < 1:
            raise ValueError(f"ActionChunkDataset: horizon must be >= 1 action rows, got {horizon}")
        super().__init__(selection, shard_urls, **kwargs)
        self.horizon = int(horizon)

    def _clip_rows(self, sample: ShardSample) -> tuple:
        rows = sample.rows()
        if rows[0] is None:
            raise _SkippedClip("no_actions")
        return rows

    def _starts(self, valid: np.ndarray, rows: tuple) -> np.ndarray:
        return valid[rows[2][valid] >= 0]  # only frames with a recorded row start a chunk

    def _add_rows(self, item: dict[str, Any], t: int, sample: ShardSample, rows: tuple) -> None:
        item.update(action_chunk(rows[0], int(rows[2][t]), self.horizon))
        item["lang"] = sample.lang or ""
        if rows[1] is not None:  # the proprioception of the row recorded at o_t
            item["state"] = torch.from_numpy(np.ascontiguousarray(rows[1][int(rows[2][t])]))


def action_chunk(rows: np.ndarray, start: int, horizon: int) -> dict[str, torch.Tensor]:
    """``horizon`` action rows from row ``start`` (the row aligned to the observed frame), at the
    robot's own rate: ``action_chunk`` float32 [H, A], zero past the clip's last row, and
    ``action_mask`` bool [H], False there (the end of the episode, when the clip ends it)."""
    take = rows[start : start + horizon]
    out = np.zeros((horizon, rows.shape[1]), np.float32)
    out[: len(take)] = take
    mask = np.zeros(horizon, bool)
    mask[: len(take)] = True
    return {"action_chunk": torch.from_numpy(out), "action_mask": torch.from_numpy(mask)}


def _shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Mix a stream through a buffer of ``size`` items (so neighbouring items come from different
    clips), seeded."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], item = item, buf[i]
        yield item
    for i in rng.permutation(len(buf)):
        yield buf[i]


def collate_items(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate ``ClipDataset`` items: tensors of equal shape are stacked, ints/floats become
    tensors, anything else (strings, tensors of different shapes such as ``actions_window`` when k
    differs between clips) becomes a list. A field missing from some items (a clip without
    actions among clips with) becomes a list with None in their place."""
    names = list(dict.fromkeys(name for item in batch for name in item))
    out: dict[str, Any] = {}
    for name in names:
        values = [item.get(name) for item in batch]
        if any(v is None for v in values):
            out[name] = values
        elif all(isinstance(v, torch.Tensor) for v in values) and len({v.shape for v in values}) == 1:
            out[name] = torch.stack(values)
        elif all(isinstance(v, int) for v in values):
            out[name] = torch.tensor(values, dtype=torch.int64)
        elif all(isinstance(v, float) for v in values):
            out[name] = torch.tensor(values, dtype=torch.float64)
        else:
            out[name] = values
    return out


def make_loader(
    root: str,
    select: str | pa.Table,
    batch_size: int,
    num_workers: int = 0,
    *,
    drop_last: bool = False,
    pin_memory: bool = False,
    storage_options: dict | None = None,
    **dataset_kwargs: Any,
) -> DataLoader:
    """A DataLoader of collated ``ClipDataset`` batches over the corpus at ``root``.

    ``select``: SQL, a manifest path, or a selection table (see ``resolve_selection``).
    ``dataset_kwargs`` go to ``ClipDataset`` (gap_frames/gap_s, size, seed, rank, ...). Call
    ``loader.dataset.set_epoch(e)`` before each epoch.
    """
    from defi.schemas.corpus import Corpus

    corpus = Corpus.open(root, storage_options=storage_options)
    dataset = ClipDataset.from_corpus(corpus, select, storage_options=storage_options, **dataset_kwargs)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_items,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def build_dataset(corpus, select: str, d: Any, seed: int, window: int, rank: int = 0, world_size: int = 1) -> ClipDataset:
    """The shuffled ClipDataset of windows of ``window`` frames over the selection ``select``;
    ``d`` (a ``pipelines.train_common.DataConfig``) gives ``gap``, ``size``, ``pairs_per_clip``
    and ``shuffle_buffer``. A SelectionError/CorpusError names a bad selection."""
    return ClipDataset.from_corpus(
        corpus,
        select,
        gap=d.gap,
        size=d.size,
        pairs_per_clip=d.pairs_per_clip,
        window=window,
        shuffle=True,
        shuffle_buffer=d.shuffle_buffer,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )


def batch_stream(dataset: ClipDataset, batch_size: int, num_workers: int, start_step: int) -> Iterator[dict]:
    """Endless batches of ``batch_size`` items, epoch after epoch. An epoch without one full batch
    raises ValueError (one line: the commands show it as a usage error).

    A resumed run (``start_step`` > 0) does not replay the batches already trained on (that would
    decode them all again); it starts a fresh epoch numbered after the step, so its draws differ
    from epochs 0, 1, ... of the first call but are still deterministic given (seed, step)."""
    first_epoch = 0 if start_step == 0 else 1_000_000 + start_step
    for epoch in itertools.count(first_epoch):
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_items, drop_last=True, persistent_workers=False
        )
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise ValueError(
                f"the selection yields fewer than batch_size={batch_size} pairs per epoch "
                f"(clips too short for the gap, or unreadable: {dict(dataset.stats)}); "
                "lower --train.batch_size or the gap"
            )
