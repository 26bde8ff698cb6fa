"""Latent-action labels from a GIDM checkpoint: one ``latent_actions`` row per clip.

``LatentActionLabeler(ckpt_dir)`` loads a checkpoint written by ``training.checkpoint`` and turns
the decoded frames of a clip into the row of ``schemas.tables.LATENT_ACTIONS``. No Ray here:
``pipelines/label.py`` runs it over a corpus; tests call it directly.

Steps and windows (units: frames of the *encoded clip*, 0-based, decode order)
    ``k`` is the gap: ``gap_frames``, or ``max(1, round(gap_s * fps))`` per clip (the same rule as
    ``training.data.ClipDataset``), or, when neither is given, what the checkpoint's ``extra``
    stores (a ``gap_frames`` or ``gap_s`` entry, searched in nested dicts too), else 1 frame.
    Step ``i`` is the window (transition) ``(t_i, t_i + k)`` with ``t_i = i * window_stride``
    for every ``t_i <= T - 1 - k``: a clip of T frames has ``ceil((T - k) / window_stride)``
    steps, ``T - k`` with the default stride 1, and 0 when ``T <= k``.

What "overlapping windows" means here, exactly
    With ``k > window_stride`` consecutive windows share frames (window i spans frames
    ``t_i .. t_i + k``). Each window is reported as its own step, in order; nothing is merged or
    averaged across overlapping windows (codes cannot be averaged, and keeping one latent per
    window keeps ``codes[i]`` and ``vectors[i]`` describing the same transition). A model with
    Q > 1 action tokens gives Q latents per window: they are kept side by side, not averaged
    (``codes[i]`` has Q entries, ``vectors[i]`` is the Q x W latent flattened token-major). The
    only averages are the clip statistics below, taken over steps.

Row columns (see LATENT_ACTIONS)
    ``codes`` [step][token] code ids (VQ/FSQ; null for a continuous bottleneck), ``vectors``
    [step][Q*W] the latents the model's ``encode`` returns (VQ/FSQ: the code vectors; continuous:
    the posterior mean), ``mean_vector`` their mean over steps, ``norm_mean``/``norm_p90`` the
    mean and 90th percentile (linear interpolation) of the per-step L2 norm of the flattened
    latent, ``code_hist`` counts per code id over all steps x tokens (length = codebook size),
    ``code_entropy`` the entropy of that histogram in nats, ``dominant_code`` its most frequent
    id (the lowest on ties). Statistics are null when the clip has no step; code statistics are
    null for a continuous bottleneck.

Camera motion (``stabilize_px``)
    A keypoint GIDM reads how image points moved, so a panning or shaking camera reads as an
    action. With ``stabilize_px = P > 0`` each window's o_t+k is first shifted back by its global
    translation from o_t (``training.gidm.camera.stabilize``: the integer shift within P pixels
    per axis under which the grey frames agree best) before the encoder sees it: the latent then
    carries motion relative to the scene. A stabilised o_t+k differs per window, so those frames
    are tokenized per window, not once per frame. Measured in docs/gidm-discrete-2026-11-26.md
    (section D): shake of up to 4 px takes the probe R^2 of the hand displacement from 0.52 to
    0.15, stabilising brings it back to 0.34; on a still camera it costs 0.016.

Determinism: the model runs in eval mode under ``torch.inference_mode``; ``encode`` takes the
posterior mean / nearest code, so the same checkpoint and frames give the same labels (up to
float rounding differences between batch sizes and devices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from defi.schemas.gap import Gap
from defi.training.checkpoint import checkpoint_hash, load_model

DEVICES = ("auto", "cpu", "cuda")


# ----------------------------------------------------------------------------------------------
# pure helpers
# ----------------------------------------------------------------------------------------------
def window_starts(num_frames: int, k: int, stride: int = 1) -> np.ndarray:
    """First frame ``t`` of every window ``(t, t + k)`` that fits in ``num_frames`` frames, every
    ``stride`` frames: ``0, stride, ...`` while ``t + k <= num_frames - 1``."""
    return np.arange(0, max(0, num_frames - k), stride, dtype=np.int64)


def clip_stats(z: np.ndarray, codes: np.ndarray | None, num_codes: int) -> dict[str, Any]:
    """The statistics columns of one clip from its latents ``z`` [S, Q, W] and ``codes`` [S, Q]
    (None for a continuous bottleneck); see the module docstring for their definitions."""
    steps = int(z.shape[0])
    vectors = z.reshape(steps, int(np.prod(z.shape[1:]))).astype(np.float32)
    out: dict[str, Any] = {
        "num_steps": steps,
        "vectors": vectors.tolist(),
        "codes": None,
        "mean_vector": None,
        "norm_mean": None,
        "norm_p90": None,
        "code_hist": None,
        "code_entropy": None,
        "dominant_code": None,
    }
    if codes is not None:
        out["codes"] = codes.astype(np.int32).tolist()
        hist = np.bincount(codes.reshape(-1).astype(np.int64), minlength=num_codes)
        out["code_hist"] = hist.astype(np.int32).tolist()
        if steps:
            p = hist[hist > 0] / hist.sum()
            out["code_entropy"] = float(-(p * np.log(p)).sum())
            out["dominant_code"] = int(np.argmax(hist))
    if steps:
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
        out["mean_vector"] = vectors.mean(0, dtype=np.float64).astype(np.float32).tolist()
        out["norm_mean"] = float(norms.mean())
        out["norm_p90"] = float(np.percentile(norms, 90))
    return out


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1:3] == (size, size):
        return frames
    # area interpolation, as training.data.decode_frames resizes (no aspect-ratio preservation)
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


# ----------------------------------------------------------------------------------------------
# the labeler
# ----------------------------------------------------------------------------------------------
@dataclass
class LatentActionLabeler:
    """Per-step latent actions of clips, from a GIDM checkpoint.

    Args:
        ckpt_dir: a checkpoint folder, or a training run folder (its latest checkpoint is used).
        gap_frames / gap_s: the gap k (frames / seconds, at most one); default from the
            checkpoint's ``extra``, else 1 frame.
        batch_size: frames per tokenizer batch and transitions per encoder batch.
        device: "auto" (cuda when available), "cpu" or "cuda".
        window_stride: frames between the starts of consecutive windows (>= 1).
        stabilize_px: 0 (off) or the largest camera shift, pixels per axis at the model's frame
            size, taken out of each window's o_t+k before encoding (see the module doc).

    ``name`` = ``gidm-<checkpoint hash>``, plus ``-k<frames>`` / ``-g<seconds>s`` when the gap
    differs from the checkpoint's default, ``-s<stride>`` when the stride is not 1 and
    ``-st<pixels>`` when stabilising, so labels of
    two models (or two settings) live side by side under ``labels/<name>/``.
    """

    ckpt_dir: str
    gap_frames: int | None = None
    gap_s: float | None = None
    batch_size: int = 64
    device: str = "auto"
    window_stride: int = 1
    stabilize_px: int = 0
    version: ClassVar[str] = "1"
    model: Any = field(init=False, repr=False)
    config: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        errors = []
        given = None
        try:
            given = Gap.from_fields(self.gap_s, self.gap_frames)
        except ValueError as e:
            errors.append(str(e))
        if int(self.batch_size) < 1:
            errors.append(f"batch_size={self.batch_size!r}: must be >= 1")
        if int(self.window_stride) < 1:
            errors.append(f"window_stride={self.window_stride!r}: must be >= 1 frame")
        if not 0 <= int(self.stabilize_px) <= 32:
            errors.append(f"stabilize_px={self.stabilize_px!r}: must be 0 (off) to 32 pixels")
        if self.device not in DEVICES:
            errors.append(f"device={self.device!r}: unknown; valid: {', '.join(DEVICES)}")
        if errors:
            raise ValueError("invalid LatentActionLabeler:\n  " + "\n  ".join(errors))
        dev = "cuda" if self.device == "auto" and torch.cuda.is_available() else self.device
        self.torch_device = torch.device("cpu" if dev == "auto" else dev)
        model, config, state = load_model(self.ckpt_dir, expect="gidm", map_location=self.torch_device)
        self.ckpt_path = state["dir"]
        if getattr(config, "lang_dim", 0):
            raise ValueError(
                f"{self.ckpt_path}: the model is language-conditioned (lang_dim={config.lang_dim}); "
                "labeling without instructions is not supported"
            )
        self.model, self.config = model, config
        if 4 * int(self.stabilize_px) > self.size:
            raise ValueError(f"stabilize_px={self.stabilize_px}: at most a quarter of the model's {self.size}-px frames")
        self.hash = checkpoint_hash(self.ckpt_path)
        # the gap the training recipe saved with the checkpoint (its DataContract), else 1 frame
        contract = state["contract"]
        default = (contract.gap if contract else None) or Gap.of_frames(1)
        self.gap_spec: Gap = given or default
        name = f"gidm-{self.hash}"
        if self.gap_spec != default:
            name += "-" + self.gap_spec.suffix()
        if self.window_stride != 1:
            name += f"-s{int(self.window_stride)}"
        if self.stabilize_px:
            name += f"-st{int(self.stabilize_px)}"
        self.name = name

    # -- facts -------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Side of the square frames the model reads, pixels."""
        return int(self.config.image_size)

    @property
    def num_codes(self) -> int:
        return int(self.config.num_codes)

    def gap(self, fps: float) -> int:
        return self.gap_spec.frames(fps)

    def params(self) -> dict[str, Any]:
        """What shaped the labels (for run records)."""
        return {
            "name": self.name,
            "version": self.version,
            "checkpoint": str(self.ckpt_path),
            "checkpoint_hash": self.hash,
            "gap": {self.gap_spec.unit: self.gap_spec.value},
            "window_stride": int(self.window_stride),
            "stabilize_px": int(self.stabilize_px),
            "image_size": self.size,
            "bottleneck": self.config.bottleneck,
            "num_action_tokens": int(self.config.num_action_tokens),
            "num_codes": self.num_codes,
        }

    # -- labeling ----------------------------------------------------------------------------
    def label_clip(self, frames: np.ndarray, fps: float, key: str = "", run_id: str | None = None) -> dict[str, Any]:
        """One LATENT_ACTIONS row from a clip's frames (uint8 [T, H, W, 3], resized to the
        model's size when needed) at ``fps`` frames per second."""
        return self.label_clips([(key, frames, fps)], run_id)[0]

    def label_clips(self, clips: Sequence[tuple[str, np.ndarray, float]], run_id: str | None = None) -> list[dict[str, Any]]:
        """Rows for several clips ``(key, frames uint8 [T, H, W, 3], fps)``, batched across clips:
        every frame is tokenized once (it is o_t of one window and o_t+k of another), then the
        windows of all clips go through the encoder ``batch_size`` at a time."""
        frames_all, starts_all, offsets, ks = [], [], [], []
        offset = 0
        for _, frames, fps in clips:
            frames = np.asarray(frames)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
            k = self.gap(fps)
            starts = window_starts(len(frames), k, self.window_stride)
            frames_all.append(_resize(frames, self.size) if len(frames) else frames)
            starts_all.append(starts)
            offsets.append(offset)
            ks.append(k)
            offset += len(frames)
        z, codes = self._encode_windows(frames_all, starts_all, offsets, ks)
        rows, pos = [], 0
        for (key, _frames, _), starts, k in zip(clips, starts_all, ks, strict=False):
            n = len(starts)
            c = None if codes is None else codes[pos : pos + n]
            row = clip_stats(z[pos : pos + n], c, self.num_codes)
            row.update(key=key, labeler=self.name, gap_frames=int(k), run_id=run_id)
            rows.append(row)
            pos += n
        return rows

    @torch.inference_mode()
    def _encode_windows(self, frames_all, starts_all, offsets, ks) -> tuple[np.ndarray, np.ndarray | None]:
        cfg, dev, bs = self.config, self.torch_device, int(self.batch_size)
        q, w = int(cfg.num_action_tokens), int(cfg.code_width)
        t_idx = np.concatenate([s + o for s, o in zip(starts_all, offsets, strict=False)]) if starts_all else np.zeros(0, np.int64)
        k_idx = np.concatenate([s + o + k for s, o, k in zip(starts_all, offsets, ks, strict=False)]) if starts_all else t_idx
        if len(t_idx) == 0:
            return np.zeros((0, q, w), np.float32), (None if cfg.num_codes == 0 else np.zeros((0, q), np.int64))
        frames = np.concatenate([f for f in frames_all if len(f)])
        # tokens of every frame once; frames no window uses (clip tails past the last window,
        # skipped by window_stride) are not tokenized. Stabilised o_t+k frames differ per window:
        # they are appended after the clip frames and each window points at its own.
        used = np.unique(t_idx if self.stabilize_px else np.concatenate([t_idx, k_idx]))
        row_of = np.full(len(frames), -1, np.int64)
        row_of[used] = np.arange(len(used))
        a_rows, b_rows = row_of[t_idx], row_of[k_idx]
        source = frames[used]
        if self.stabilize_px:
            from defi.training.gidm.camera import stabilize

            nxt, _ = stabilize(frames[t_idx].transpose(0, 3, 1, 2), frames[k_idx].transpose(0, 3, 1, 2), int(self.stabilize_px))
            b_rows = len(used) + np.arange(len(k_idx))
            source = np.concatenate([source, nxt.transpose(0, 2, 3, 1)])
        tokens = []
        for i in range(0, len(source), bs):
            x = torch.from_numpy(np.ascontiguousarray(source[i : i + bs].transpose(0, 3, 1, 2))).to(dev).float().div_(255.0)
            tokens.append(self.model.tokens(x))
        tokens = torch.cat(tokens)
        zs, cs = [], []
        for i in range(0, len(t_idx), bs):
            a = torch.from_numpy(a_rows[i : i + bs]).to(dev)
            b = torch.from_numpy(b_rows[i : i + bs]).to(dev)
            # GIDM.encode(obs, next_obs) is tokens() of each frame then _encode(); calling the two
            # halves lets each frame be tokenized once instead of twice (the frozen ViT of a
            # features model is most of the cost). tests check it equals encode().
            z, codes, _ = self.model._encode(tokens[a], tokens[b], None, sample=False)
            zs.append(z.float().cpu())
            if codes is not None:
                cs.append(codes.cpu())
        z = torch.cat(zs).reshape(len(t_idx), q, w).numpy()
        codes = torch.cat(cs).reshape(len(t_idx), q).numpy() if cs else None
        return z, codes
