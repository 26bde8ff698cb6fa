"""Captions of clips from a captioning model in open_clip (CoCa): one ``captions`` row per clip.

``CaptionLabeler(model)`` loads a CoCa model and turns one frame of each clip into a caption row
(``schemas.tables.CAPTIONS``). No Ray here: ``pipelines/captions.py`` runs it over a corpus;
tests call it directly.

Models (``model``)
    - a local folder in open_clip's own layout: ``open_clip_config.json`` (``{"model_cfg": {...},
      "preprocess_cfg": {...}}``, the format of open_clip's hub exports) and
      ``open_clip_model.safetensors``. Only safetensors weights are read (never a pickle).
      ``save_captioner`` writes one; tests and benches build tiny random ones with ``tiny_coca_config``.
    - ``hf-hub:ORG/REPO``: an open_clip export on the Hugging Face hub (downloaded once, then
      read from the local cache; ``HF_HUB_OFFLINE=1`` reads the cache only).
    - ``ARCH:TAG``: an open_clip architecture with a pretrained tag, e.g. the default
      ``coca_ViT-B-32:mscoco_finetuned_laion2b_s13b_b90k``.
    A model without a text decoder (a CLIP, a folder of another kind) is refused: it cannot caption.

Which frame: the clip's middle frame (index ``num_frames // 2`` of the encoded clip). CoCa
captions images; the middle frame is the one most likely to show what the clip is about, and one
frame a clip keeps decoding cheap. Resized as open_clip's eval transform does (short side to the
model's size, bicubic, centre crop), then normalised with the model's mean and std.

Decoding: greedy (the most likely token each step; end-of-text masked until ``min_len`` tokens),
at most ``max_len`` tokens counting the start token. open_clip's ``CoCa.generate`` needs the
``transformers`` package for its logits processors, which defi does not depend on; greedy decoding
is ``generate(generation_type="top_k", top_k=1)`` without the sampling step, deterministic.

Versioning: ``name`` = ``caption-<config hash>``, the hash of the model's identity (a local
folder: sha256 of its config and weights; a hub model: its name), the decoding limits, the frame
rule and ``version``. Another model or setting writes its own ``labels/caption-<hash>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from collections.abc import Sequence

import numpy as np

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
DEFAULT_MODEL = "coca_ViT-B-32:mscoco_finetuned_laion2b_s13b_b90k"
DEVICES = ("auto", "cpu", "cuda")
SOT, EOT = 49406, 49407  # open_clip's BPE start/end-of-text ids (the vocabulary every CoCa config uses)
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class CaptionModelError(ValueError):
    """The captioning model cannot be used (missing, not a captioner, unreadable); one line."""


# ----------------------------------------------------------------------------------------------
# model configs, saving and loading
# ----------------------------------------------------------------------------------------------
def tiny_coca_config(width: int = 32, layers: int = 1, image_size: int = 32, patch_size: int = 8, context_length: int = 32) -> dict:
    """An open_clip ``model_cfg`` of a CoCa small enough for tests on one CPU core (the shape of
    ``coca_ViT-B-32`` with every tower ``width`` wide and ``layers`` deep). The vocabulary stays
    open_clip's BPE (49408 tokens) so the packaged tokenizer decodes its output offline."""
    heads = max(1, width // 16)
    return {
        "embed_dim": width,
        "vision_cfg": {
            "image_size": image_size,
            "layers": layers,
            "width": width,
            "head_width": 16,
            "patch_size": patch_size,
            "attentional_pool": True,
            "attn_pooler_heads": heads,
            "attn_pooler_queries": 8,
            "output_tokens": True,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": width,
            "heads": heads,
            "layers": layers,
            "embed_cls": True,
            "output_tokens": True,
        },
        "multimodal_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": width,
            "heads": heads,
            "layers": layers,
            "attn_pooler_heads": heads,
        },
        "custom_text": True,
    }


def build_captioner(model_cfg: dict, seed: int = 0):
    """A randomly initialised CoCa from an open_clip ``model_cfg`` (drawn with ``seed``; the
    global torch RNG is left as it was). For tests and throughput benches."""
    import open_clip
    import torch

    cfg = {k: v for k, v in model_cfg.items() if k != "custom_text"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.CoCa(**cfg).eval()


def save_captioner(net, model_cfg: dict, folder: str | Path) -> Path:
    """Write ``net`` (a CoCa) to ``folder`` in open_clip's layout (``open_clip_config.json`` +
    ``open_clip_model.safetensors``), which ``CaptionLabeler`` and open_clip's ``local-dir:`` read."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"mean": _OPENAI_MEAN, "std": _OPENAI_STD}}))
    return folder


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or (os.sep in model and not model.startswith("hf-hub:")) or os.path.exists(model)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _quiet_logs():
    """open_clip logs a failed download as an ERROR on the root logger before raising; the
    exception becomes the one line the user sees, so the log line is held back meanwhile."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def load_captioner(model: str, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load the CoCa ``model`` (see the module doc); returns ``(net in eval mode, facts)`` with
    facts ``model`` (the name rows carry), ``identity`` (what the config hash reads),
    ``image_size``, ``mean``, ``std``. Raises ``CaptionModelError`` (one line) for a path that
    does not exist, a folder that is not an open_clip captioner, an unknown or non-captioning
    architecture, or a hub model that cannot be fetched."""
    import open_clip

    preprocess: dict = {}
    if _looks_like_path(model):
        folder = Path(model).expanduser()
        if not folder.exists():
            raise CaptionModelError(f"captioning model {model}: no such folder")
        if not folder.is_dir():
            raise CaptionModelError(f"captioning model {model} is a file; give the folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
        cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file():
            raise CaptionModelError(f"captioning model {model}: not an open_clip model folder (no {CONFIG_FILE})")
        try:
            saved = json.loads(cfg_path.read_text())
            model_cfg = saved["model_cfg"]
        except (ValueError, KeyError, TypeError) as e:
            raise CaptionModelError(f"captioning model {model}: {CONFIG_FILE} is unreadable ({_first_line(e)})") from None
        if not isinstance(model_cfg, dict) or "multimodal_cfg" not in model_cfg:
            raise CaptionModelError(
                f"captioning model {model} is not a captioner: its open_clip config has no text decoder (multimodal_cfg)"
            )
        if not weights.is_file():
            raise CaptionModelError(f"captioning model {model}: no {WEIGHTS_FILE} (weights are read from safetensors only)")
        preprocess = saved.get("preprocess_cfg") or {}
        try:
            with _quiet_logs():
                net = open_clip.create_model(f"local-dir:{folder}", device="cpu")
        except Exception as e:  # noqa: BLE001 - a broken folder: say which, in one line
            raise CaptionModelError(f"captioning model {model}: cannot load ({_first_line(e)})") from None
        identity = {"config": hashlib.sha256(cfg_path.read_bytes()).hexdigest(), "weights": _sha256(weights)}
        name = folder.resolve().name
    else:
        if model.startswith("hf-hub:"):
            arch, tag = model, None
        else:
            arch, _, tag = model.partition(":")
            known = open_clip.list_models()
            if arch not in known:
                coca = [m for m in known if m.startswith("coca")]
                raise CaptionModelError(
                    f"captioning model {model}: no such folder, and {arch!r} is not an open_clip model (captioners: {', '.join(coca)})"
                )
            if "multimodal_cfg" not in (open_clip.get_model_config(arch) or {}):
                raise CaptionModelError(f"captioning model {model} is not a captioner: {arch} has no text decoder (use a coca_* model)")
            if not tag:
                tags = open_clip.list_pretrained_tags_by_model(arch)
                raise CaptionModelError(f"captioning model {model}: give its weights as {arch}:TAG (tags: {', '.join(tags) or 'none'})")
        try:
            with _quiet_logs():
                net = open_clip.create_model(arch, pretrained=tag or None, device="cpu")
        except Exception as e:  # noqa: BLE001 - offline without a cache, unknown repo ...: one line
            raise CaptionModelError(f"captioning model {model}: cannot load ({_first_line(e)})") from None
        identity = {"hub": model}
        name = model
        preprocess = dict(getattr(net.visual, "preprocess_cfg", {}) or {})
    if not isinstance(net, open_clip.CoCa):
        raise CaptionModelError(f"captioning model {model} is not a captioner: open_clip built a {type(net).__name__}, not a CoCa")
    size = getattr(net.visual, "image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    facts = {
        "model": name,
        "identity": identity,
        "image_size": size,
        "mean": tuple(preprocess.get("mean") or _OPENAI_MEAN),
        "std": tuple(preprocess.get("std") or _OPENAI_STD),
    }
    return net.to(device).eval(), facts


# ----------------------------------------------------------------------------------------------
# pure helpers
# ----------------------------------------------------------------------------------------------
def middle_frame(num_frames: int) -> int:
    """The frame a clip is captioned from (0-based, encoded clip): its middle one."""
    return max(0, int(num_frames) // 2)


def preprocess_images(images: Sequence[np.ndarray], size: tuple[int, int], mean, std):
    """uint8 RGB images [H, W, 3] (any sizes) -> float [N, 3, S, S]: the short side resized to S
    (bicubic), centre crop, normalised: open_clip's eval transform."""
    import torch
    from PIL import Image

    th, tw = size
    out = []
    for im in images:
        h, w = im.shape[:2]
        if h <= w:
            nh, nw = th, max(tw, int(th * w / h))
        else:
            nh, nw = max(th, int(tw * h / w)), tw
        top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(im)).resize((nw, nh), Image.BICUBIC))[top : top + th, left : left + tw]
        out.append(arr)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def greedy_tokens(net, images, max_len: int, min_len: int) -> list[list[int]]:
    """Greedy caption token ids per image (start token excluded, cut before end-of-text) from a
    CoCa ``net`` and preprocessed ``images`` [N, 3, S, S]."""
    import torch

    with torch.inference_mode():
        enc = net(images)  # the image tower once; every step reuses its outputs
        latent, embs = enc["image_features"], enc["image_embs"]
        out = torch.full((images.shape[0], 1), SOT, dtype=torch.long, device=images.device)
        done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        while out.shape[1] < max_len and not bool(done.all()):
            logits = net(images, out, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1].float()
            if out.shape[1] < min_len:
                logits[:, EOT] = float("-inf")
            nxt = torch.where(done, torch.full_like(done, EOT, dtype=torch.long), logits.argmax(-1))
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == EOT
    rows = []
    for seq in out[:, 1:].cpu().tolist():
        rows.append(seq[: seq.index(EOT)] if EOT in seq else seq)
    return rows


def decode_tokens(tokens: Sequence[int]) -> str:
    """Caption text of BPE token ids (open_clip's packaged vocabulary, no hub)."""
    from defi.curate.clip_score import _simple_tokenizer

    return _simple_tokenizer(77).decode([int(t) for t in tokens if t not in (SOT, EOT)]).strip()


# ----------------------------------------------------------------------------------------------
# the labeler
# ----------------------------------------------------------------------------------------------
@dataclass
class CaptionLabeler:
    """Captions of clips from a CoCa model.

    Args:
        model: a local open_clip folder, ``hf-hub:ORG/REPO`` or ``ARCH:TAG`` (module doc).
        max_len: most tokens a caption has, counting the start token.
        min_len: fewest tokens before end-of-text may end it, counting the start token.
        batch_size: images per forward pass.
        device: "auto" (cuda when available), "cpu" or "cuda".
    """

    model: str = DEFAULT_MODEL
    max_len: int = 20
    min_len: int = 5
    batch_size: int = 16
    device: str = "auto"
    version: ClassVar[str] = "1"
    net: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        errors = []
        if int(self.min_len) < 1:
            errors.append(f"min_len={self.min_len!r}: must be >= 1 token")
        if int(self.max_len) <= int(self.min_len):
            errors.append(f"max_len={self.max_len!r}: must be > min_len={self.min_len}")
        if int(self.batch_size) < 1:
            errors.append(f"batch_size={self.batch_size!r}: must be >= 1")
        if self.device not in DEVICES:
            errors.append(f"device={self.device!r}: unknown; valid: {', '.join(DEVICES)}")
        if errors:
            raise ValueError("invalid CaptionLabeler:\n  " + "\n  ".join(errors))
        import torch

        dev = "cuda" if self.device == "auto" and torch.cuda.is_available() else ("cpu" if self.device == "auto" else self.device)
        self.torch_device = torch.device(dev)
        self.net, self.facts = load_captioner(self.model, dev)
        ctx = int(self.net.context_length)
        if int(self.max_len) > ctx:
            raise ValueError(f"max_len={self.max_len}: the model's text decoder reads at most {ctx} tokens")
        shaped = {
            **self.facts["identity"],
            "max_len": int(self.max_len),
            "min_len": int(self.min_len),
            "frame": "middle",
            "version": self.version,
        }
        self.config_hash = hashlib.sha256(json.dumps(shaped, sort_keys=True).encode()).hexdigest()[:12]
        self.name = f"caption-{self.config_hash}"

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) the model reads, pixels."""
        return self.facts["image_size"]

    def params(self) -> dict[str, Any]:
        """What shaped the captions (for run records)."""
        return {
            "name": self.name,
            "version": self.version,
            "model": self.facts["model"],
            "model_spec": self.model,
            "config_hash": self.config_hash,
            "identity": self.facts["identity"],
            "image_size": list(self.size),
            "max_len": int(self.max_len),
            "min_len": int(self.min_len),
            "frame": "middle",
            "device": str(self.torch_device),
        }

    def caption_images(self, images: Sequence[np.ndarray]) -> list[str]:
        """One caption per uint8 RGB image [H, W, 3], ``batch_size`` images per forward pass."""
        out: list[str] = []
        for i in range(0, len(images), int(self.batch_size)):
            x = preprocess_images(images[i : i + int(self.batch_size)], self.size, self.facts["mean"], self.facts["std"])
            out += [decode_tokens(t) for t in greedy_tokens(self.net, x.to(self.torch_device), int(self.max_len), int(self.min_len))]
        return out

    def row(self, key: str, caption: str | None, run_id: str | None, error: str | None = None, detail: str | None = None) -> dict[str, Any]:
        """A CAPTIONS row of this labeler (a failure: ``caption`` None, ``error`` its reason)."""
        return {
            "key": key,
            "labeler": self.name,
            "caption": caption,
            "model": self.facts["model"],
            "config_hash": self.config_hash,
            "version": self.version,
            "error": error,
            "error_detail": None if detail is None else detail[:300],
            "run_id": run_id,
        }

    def caption_clips(self, clips: Sequence[tuple[str, np.ndarray]], run_id: str | None = None) -> list[dict[str, Any]]:
        """Rows for ``(key, frame uint8 [H, W, 3])`` pairs, the frame being the clip's middle one."""
        captions = self.caption_images([f for _, f in clips])
        return [self.row(k, c, run_id) for (k, _), c in zip(clips, captions, strict=True)]
