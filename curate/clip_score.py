"""CLIP scores and embeddings of clips (open_clip).

Each clip is represented by ``num_frames`` keyframes sampled evenly over its frames; the clip
embedding is the L2-normalised mean of the keyframes' normalised image embeddings, and each prompt's
score is the cosine similarity between that clip embedding and the prompt's text embedding. Scores
are computed from the stored embedding on purpose: anyone can score new prompts later from the
``clip_embedding`` column without decoding video again.

The model loads lazily, once per operator instance (a Ray actor holds one instance), and the text
embeddings of the prompts are cached. ``score_batch`` runs the keyframes of many clips through the
image tower together, which is what makes a GPU actor worthwhile.

Tiny models for tests and CPU smoke runs are defined here (``TINY_MODEL_CONFIGS``) and built
directly from their config, so nothing is registered into open_clip as an import side effect and
nothing is fetched from a hub. ``pretrained`` is an open_clip tag (downloads, for real models), a
local checkpoint path (``.safetensors``, ``.pt``, ``.bin``: works offline, for tiny and real models)
or ``None`` (random weights, seeded by ``seed``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .base import Frames, Scorer

DEFAULT_PROMPTS = [
    "a robot arm grasping an object",
    "hands manipulating objects",
    "a person cooking in a kitchen",
]

# CLIP mean/std (open_clip.constants.OPENAI_DATASET_MEAN/STD); used when a model carries none.
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Small enough to run in milliseconds on one CPU core, same architecture family as ViT-B-32.
# The text tower keeps open_clip's BPE vocabulary (49408 tokens) so the packaged SimpleTokenizer
# works offline; context_length 32 is plenty for short prompts and keeps the text tower cheap.
TINY_MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "defi-tiny": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "defi-tiny-64": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else unchanged."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@functools.lru_cache(maxsize=4)
def _simple_tokenizer(context_length: int):
    """open_clip's BPE tokenizer; its vocabulary ships inside the package (no hub). Parsing it takes
    ~0.3 s, and the tokenizer is stateless, so instances are shared."""
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def load_clip_model(model: str, pretrained: str | None, device: str = "cpu", seed: int = 0):
    """Build an open_clip model and its tokenizer; returns ``(model, tokenizer)`` in eval mode.

    ``model``: a name from ``TINY_MODEL_CONFIGS`` or any open_clip model name (``"ViT-B-32"``).
    ``pretrained``: open_clip tag, local checkpoint path, or ``None`` for random weights drawn
    with ``seed`` (the global torch RNG is left as it was).
    """
    import open_clip
    import torch

    if pretrained is not None and not os.path.isfile(pretrained) and model in TINY_MODEL_CONFIGS:
        raise ValueError(f"tiny model {model!r} has no pretrained tags; pretrained must be a file path, got {pretrained!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model in TINY_MODEL_CONFIGS:
            cfg = TINY_MODEL_CONFIGS[model]
            net = open_clip.model.CLIP(**cfg)
            if pretrained is not None:
                open_clip.load_checkpoint(net, pretrained)
            tokenizer = _simple_tokenizer(cfg["text_cfg"]["context_length"])
        else:
            if model.replace("/", "-") not in open_clip.list_models() and ":" not in model:
                raise ValueError(
                    f"unknown CLIP model {model!r}; valid: {sorted(TINY_MODEL_CONFIGS)} or open_clip names "
                    f"such as {open_clip.list_models()[:5]}..."
                )
            net = open_clip.create_model(model, pretrained=pretrained, device="cpu")
            tokenizer = open_clip.get_tokenizer(model)
    net = net.to(device).eval()
    return net, tokenizer


def sample_keyframes(n_frames: int, num: int) -> np.ndarray:
    """Indices (into a clip's frames) of ``num`` keyframes at the centres of ``num`` equal segments;
    all frames when the clip has fewer than ``num``."""
    if n_frames <= num:
        return np.arange(n_frames)
    return np.floor((np.arange(num) + 0.5) * n_frames / num).astype(np.int64)


@dataclass
class ClipScorer(Scorer):
    """CLIP prompt scores and a clip embedding per clip.

    Outputs per clip (``score``/``score_batch``): ``clip_scores`` {prompt: cosine in [-1, 1]},
    ``clip_score_max`` (max over prompts), ``clip_embedding`` (list of float32, unit norm), and
    ``clip_error`` (short reason, only when the clip could not be scored). ``update_record`` stores
    them in a ``ClipRecord``. With ``min_score`` set, clips whose ``clip_score_max`` is below it are
    rejected with reason ``low_clip_score``.
    """

    name: ClassVar[str] = "clip"
    columns: ClassVar[tuple[str, ...]] = ("clip_score_max",)
    version: ClassVar[str] = "1"

    model: str = field(default="ViT-B-32", metadata={"help": "open_clip model name (or a tiny test config name)"})
    pretrained: str | None = field(
        default="laion2b_s34b_b79k",
        metadata={"help": "open_clip weights tag or a local checkpoint file; none: random weights (tests only)"},
    )
    prompts: list[str] = field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        metadata={"help": "text prompts each clip is scored against (comma-separated); clip_score_max is the best"},
    )
    num_frames: int = field(default=4, metadata={"help": "keyframes sampled evenly per clip; their image embeddings are averaged"})
    device: str = field(default="auto", metadata={"help": "torch device for the model; auto: cuda when a GPU is visible, else cpu"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass of the image tower"})
    min_score: float | None = field(
        default=None, metadata={"help": "reject clips whose best prompt cosine is below this as low_clip_score (none: score only)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the random weights when pretrained is none"})

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.prompts:
            raise ValueError("prompts must not be empty")
        self.prompts = list(self.prompts)
        # Caches are plain attributes, not dataclass fields, so params()/lineage() stay parameters.
        self._net = None
        self._tokenizer = None
        self._text_emb = None  # torch [P, D], unit norm
        self._device = None

    # A pickled operator (shipped to a Ray actor) travels without its model; it reloads there.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_net=None, _tokenizer=None, _text_emb=None, _device=None)
        return state

    def _load(self) -> None:
        if self._net is not None:
            return
        import torch

        self._device = resolve_device(self.device)
        self._net, self._tokenizer = load_clip_model(self.model, self.pretrained, self._device, self.seed)
        pp = getattr(self._net.visual, "preprocess_cfg", {}) or {}
        size = getattr(self._net.visual, "image_size", pp.get("size", 224))
        self._size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        mean = pp.get("mean") or getattr(self._net.visual, "image_mean", None) or _OPENAI_MEAN
        std = pp.get("std") or getattr(self._net.visual, "image_std", None) or _OPENAI_STD
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)
        with torch.inference_mode():
            tokens = self._tokenizer(self.prompts).to(self._device)
            self._text_emb = self._net.encode_text(tokens, normalize=True).float()

    def _preprocess(self, images: np.ndarray):
        """uint8 [N,H,W,3] -> normalised float [N,3,S,S]: short side resized to S (bicubic), centre
        crop, as open_clip's eval transform does. On CPU through PIL, which is exactly what that
        transform runs (and ~2x faster than torch's antialiased resize on CPU); on a GPU batched in
        torch (antialiased bicubic), which keeps the GPU fed. The two differ by a few 1e-3."""
        import torch

        th, tw = self._size
        h, w = images.shape[1:3]
        # torchvision Resize(int): the short side becomes S, the long side is truncated
        if h <= w:
            nh, nw = th, int(th * w / h)
        else:
            nh, nw = int(tw * h / w), tw
        nh, nw = max(nh, th), max(nw, tw)
        top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
        if self._device == "cpu":
            from PIL import Image

            arr = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(im)).resize((nw, nh), Image.BICUBIC)) for im in images])[
                :, top : top + th, left : left + tw
            ]
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
        else:
            import torch.nn.functional as F

            x = torch.from_numpy(np.ascontiguousarray(images)).to(self._device).permute(0, 3, 1, 2).float() / 255.0
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
            x = x[:, :, top : top + th, left : left + tw]
        return (x - self._mean) / self._std

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """Unit-norm image embeddings float32 [N, D] of uint8 RGB images [N, H, W, 3]; batched by
        ``batch_size``. Images of different sizes must be embedded in separate calls."""
        import torch

        self._load()
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = self._preprocess(images[i : i + self.batch_size])
                out.append(self._net.encode_image(x, normalize=True).float().cpu())
        if not out:
            return np.zeros((0, int(self._text_emb.shape[1])), np.float32)
        return torch.cat(out).numpy()

    def score_batch(self, clips: list[Frames]) -> list[dict[str, Any]]:
        """Score many clips with as few forward passes as possible (keyframes of all clips are
        batched together, grouped by frame size). Returns one output dict per clip, in order."""
        self._load()
        results: list[dict[str, Any] | None] = [None] * len(clips)
        picks: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
        for ci, fr in enumerate(clips):
            if fr is None or len(fr) == 0:
                results[ci] = self._failed("no_frames")
                continue
            sel = fr.frames[sample_keyframes(len(fr), self.num_frames)]
            picks.setdefault(sel.shape[1:3], []).append((ci, sel))
        text = self._text_emb.cpu().numpy()
        for group in picks.values():
            emb = self.embed_images(np.concatenate([s for _, s in group]))
            pos = 0
            for ci, sel in group:
                e = emb[pos : pos + len(sel)].mean(axis=0)
                pos += len(sel)
                norm = float(np.linalg.norm(e))
                if not np.isfinite(norm) or norm == 0.0:
                    results[ci] = self._failed("degenerate_embedding")
                    continue
                e = (e / norm).astype(np.float32)
                sims = np.clip(text @ e, -1.0, 1.0)
                results[ci] = {
                    "clip_scores": {p: float(s) for p, s in zip(self.prompts, sims, strict=False)},
                    "clip_score_max": float(sims.max()),
                    "clip_embedding": e.tolist(),
                }
        return results  # type: ignore[return-value]

    @staticmethod
    def _failed(reason: str) -> dict[str, Any]:
        return {"clip_scores": None, "clip_score_max": None, "clip_embedding": None, "clip_error": reason}

    def score(self, frames: Frames) -> dict[str, Any]:
        return self.score_batch([frames])[0]

    def reject_reason(self, scores: dict[str, Any]) -> str | None:
        if self.min_score is None:
            return None
        if scores.get("clip_score_max") is None:
            return "clip_error"  # a threshold is set and the clip could not be scored: it cannot pass
        return "low_clip_score" if scores["clip_score_max"] < self.min_score else None

    def __call__(self, frames: Frames) -> tuple[dict[str, Any], str | None]:
        scores = self.score(frames)
        return scores, self.reject_reason(scores)

    def update_record(self, record, scores: dict[str, Any]) -> None:
        """Store one clip's outputs in a ``ClipRecord`` (columns ``clip_scores``,
        ``clip_score_max``, ``clip_embedding``; an error under ``errors["clip"]``) and apply the
        threshold. ``ClipRecord.set_scores`` is for float scores only, hence this helper."""
        record.clip_scores = scores.get("clip_scores")
        record.clip_score_max = scores.get("clip_score_max")
        record.clip_embedding = scores.get("clip_embedding")
        if scores.get("clip_error"):
            record.errors["clip"] = scores["clip_error"]
        reason = self.reject_reason(scores)
        if reason:
            record.reject(reason)


def embed_texts(texts: list[str], model: str, pretrained: str | None, seed: int = 0, device: str = "cpu") -> np.ndarray:
    """Unit-norm text embeddings float32 [N, D] of ``texts`` from the CLIP ``model`` built as
    ``ClipScorer`` builds it (``load_clip_model``: same name, weights and seed give the same
    tower), so they compare with the ``clip_embedding`` column that scorer wrote."""
    import torch

    net, tokenizer = load_clip_model(model, pretrained, device, seed)
    with torch.inference_mode():
        return net.encode_text(tokenizer(list(texts)).to(device), normalize=True).float().cpu().numpy()
