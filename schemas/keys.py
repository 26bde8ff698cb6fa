"""Deterministic keys. A clip key derives from the source's content hash, the clip's frame range
and a hash of the parameters that shaped it, so re-running a pipeline reproduces the same keys.

Keys contain no dots: WebDataset splits a member name at the first dot into key and extension.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

KEY_RE = re.compile(r"^[0-9a-f]{16}-\d{7,}-\d{7,}-[0-9a-f]{8}$")


def params_hash(params: Any) -> str:
    """8 hex digits of the SHA-1 of the params as canonical JSON (sorted keys)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


def clip_key(source_id: str, start_frame: int, end_frame: int, params: Any) -> str:
    """``<source hash[:16]>-<start>-<end>-<params hash>``; frames are source frames, half-open."""
    if end_frame <= start_frame:
        raise ValueError(f"clip_key: empty frame range [{start_frame}, {end_frame})")
    return f"{source_id[:16]}-{start_frame:07d}-{end_frame:07d}-{params_hash(params)}"


def is_clip_key(key: str) -> bool:
    return bool(KEY_RE.match(key))
