"""Checkpoints: a folder of safetensors + JSON, written atomically, loaded without unpickling.

    <dir>/model.safetensors   the model's state dict (frozen feature extractors included, so a
                              checkpoint alone reproduces its labels)
    <dir>/config.json         {"format_version", "model_type", "config": {...}}
    <dir>/state.safetensors   optional: optimizer tensors and torch RNG states
    <dir>/state.json          optional: the index of state.safetensors plus step, scheduler
                              state, python/numpy RNG states and the caller's ``extra``

Nothing here calls ``pickle`` or ``torch.load``: a checkpoint from elsewhere cannot run code.
Each model type is registered by one explicit line in ``registry.MODEL_TYPES`` (a name ->
"module:Class" table imported on use). ``load_model(path, expect=...)`` is the one way to load a
checkpoint of an expected type: another type is refused naming both.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from defi.schemas.contract import DataContract

from .registry import MODEL_TYPES, config_class, config_class_name, model_class, model_type_of

__all__ = [
    "FORMAT_VERSION",
    "MODEL_TYPES",
    "CheckpointError",
    "checkpoint_dir",
    "checkpoint_hash",
    "load_checkpoint",
    "load_config",
    "load_model",
    "load_model_config",
    "read_contract",
    "model_type_of",
    "restore_rng",
    "save_checkpoint",
]

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint file is missing, truncated, corrupt or does not match its config."""


def checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint folder (holds config.json), or a training run folder whose latest
    ``checkpoints/step-*`` is used. Raises ``CheckpointError`` naming what was looked for."""
    p = Path(path)
    if (p / "config.json").is_file():
        return p
    found = sorted((p / "checkpoints").glob("step-*"))
    if found:
        return found[-1]
    raise CheckpointError(f"{path}: neither a checkpoint folder (config.json) nor a run folder with checkpoints/step-*")


# ----------------------------------------------------------------------------------------------
# save
# ----------------------------------------------------------------------------------------------
def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state dict -> (tensors by name, JSON index). Tensor entries of the per-param
    state become "optimizer.<param id>.<key>"; everything else stays in the JSON."""
    tensors, state = {}, {}
    for pid, entries in sd["state"].items():
        state[str(pid)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                name = f"optimizer.{pid}.{key}"
                tensors[name] = value.detach().cpu().contiguous()
                state[str(pid)][key] = {"tensor": name}
            else:
                state[str(pid)][key] = {"value": value}
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def _unflatten_optimizer(index: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state = {}
    for pid, entries in index["state"].items():
        state[int(pid)] = {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in entries.items()}
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in index["param_groups"]]
    return {"state": state, "param_groups": groups}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    """Global RNG states: torch (CPU and each CUDA device) as tensors, python and numpy as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    return tensors, {"python": [py[0], list(py[1]), py[2]], "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}


def restore_rng(state: dict) -> None:
    """Inverse of ``capture_rng`` (``state`` as returned in ``load_checkpoint(...)[2]["rng"]``)."""
    torch.set_rng_state(state["torch"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    v, keys, g = state["python"]
    random.setstate((v, tuple(keys), g))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    config: Any,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    step: int = 0,
    extra: dict | None = None,
    save_rng: bool = True,
) -> Path:
    """Write a checkpoint folder atomically: everything goes to a temporary sibling folder that
    is renamed onto ``directory`` only when complete (an existing checkpoint there is replaced).
    A killed writer leaves a ``.tmp-*`` folder, never a half-written checkpoint under the name.
    ``extra`` must be JSON-serialisable. Returns the folder."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        # safetensors refuses shared storage; clone so tied or viewed tensors still save.
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format_version": str(FORMAT_VERSION)})
        _write_json(
            tmp / "config.json", {"format_version": FORMAT_VERSION, "model_type": model_type_of(config), "config": config.to_dict()}
        )
        tensors, index = {}, {"format_version": FORMAT_VERSION, "step": int(step), "extra": extra or {}}
        if optimizer is not None:
            opt_tensors, index["optimizer"] = _flatten_optimizer(optimizer.state_dict())
            tensors.update(opt_tensors)
        if scheduler is not None:
            index["scheduler"] = scheduler.state_dict()
        if save_rng:
            rng_tensors, index["rng"] = capture_rng()
            tensors.update(rng_tensors)
        save_file(tensors, str(tmp / "state.safetensors"))
        _write_json(tmp / "state.json", index)
        old = None
        if directory.exists():
            old = directory.parent / f".old-{directory.name}-{uuid.uuid4().hex[:8]}"
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# ----------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        size = path.stat().st_size
        raise CheckpointError(f"{path}: unreadable safetensors ({size} bytes; truncated or corrupt: {e})") from None


def load_config(directory: str | Path) -> tuple[str, Any]:
    """(model_type, config object) from ``<dir>/config.json``."""
    path = Path(directory) / "config.json"
    meta = _read_json(path)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    mtype = meta.get("model_type")
    if mtype not in MODEL_TYPES:
        raise CheckpointError(f"{path}: unknown model_type {mtype!r}; registered: {', '.join(MODEL_TYPES)}")
    try:
        config = config_class(mtype).from_dict(meta.get("config") or {})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid config ({e})") from None
    return mtype, config


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu", **model_kwargs: Any) -> tuple[nn.Module, Any, dict]:
    """Rebuild the model from ``config.json``, fill it from ``model.safetensors``.

    Returns (model, config, state): state has ``step``, ``extra`` and, when saved,
    ``optimizer`` (a state dict for ``optimizer.load_state_dict``), ``scheduler`` and ``rng``
    (for ``restore_rng``). ``model_kwargs`` go to the model factory (e.g. a GIDM
    ``feature_extractor`` module for feature_encoder="external"). Raises CheckpointError naming
    the file and the problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint folder")
    mtype, config = load_config(directory)
    weights = _read_safetensors(directory / "model.safetensors")
    factory = model_class(mtype)
    if mtype == "gidm" and getattr(config, "input_space", "") == "features":
        model_kwargs.setdefault("load_feature_weights", False)  # they are in model.safetensors
    if mtype == "gfdm":
        model_kwargs.setdefault("load_pretrained", False)  # SVD weights are in model.safetensors
    model = factory(config, **model_kwargs)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{directory / 'model.safetensors'}: does not match config.json ({e})") from None
    model.to(map_location)

    state: dict[str, Any] = {"step": 0, "extra": {}}
    if (directory / "state.json").exists():
        index = _read_json(directory / "state.json")
        tensors = _read_safetensors(directory / "state.safetensors")
        state["step"], state["extra"] = int(index.get("step", 0)), index.get("extra", {})
        try:
            if "optimizer" in index:
                state["optimizer"] = _unflatten_optimizer(index["optimizer"], tensors)
            if "scheduler" in index:
                state["scheduler"] = index["scheduler"]
            if "rng" in index:
                rng = {k.removeprefix("rng."): v for k, v in tensors.items() if k.startswith("rng.")}
                state["rng"] = {**rng, **index["rng"]}
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{directory / 'state.json'}: inconsistent with state.safetensors ({e!r})") from None
    return model, config, state


def checkpoint_hash(directory: str | Path, length: int = 12) -> str:
    """Short sha256 of ``model.safetensors``: names the labels a checkpoint produced."""
    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def _expected_dir(path: str | Path, expect: str | None) -> tuple[Path, str, Any]:
    """(checkpoint folder, model type, config) of ``path``, refusing a type other than ``expect``."""
    ckpt = checkpoint_dir(path)
    mtype, config = load_config(ckpt)
    if expect is not None and mtype != expect:
        raise CheckpointError(
            f"{path}: a {mtype!r} checkpoint where a {expect!r} checkpoint is expected "
            f"({type(config).__name__}, not {config_class_name(expect)})"
        )
    return ckpt, mtype, config


def load_model_config(path: str | Path, expect: str | None = None) -> Any:
    """The config of the checkpoint at ``path`` (a checkpoint folder, or a run folder's latest
    checkpoint) without its weights; one of another type than ``expect`` (a ``MODEL_TYPES`` name)
    is refused naming both (``CheckpointError``, one line)."""
    return _expected_dir(path, expect)[2]


def load_model(
    path: str | Path,
    expect: str | None = None,
    map_location: str | torch.device = "cpu",
    inference: bool = True,
    **model_kwargs: Any,
) -> tuple[nn.Module, Any, dict]:
    """(model, config, state) of the checkpoint at ``path``: a checkpoint folder, or a run folder
    whose latest ``checkpoints/step-*`` is used. A checkpoint of another type than ``expect`` (a
    ``MODEL_TYPES`` name; None accepts any) is refused naming both, before any weight is read.
    ``inference`` puts the model in eval mode (else it stays as its constructor left it, for a
    caller that trains it). ``state`` is ``load_checkpoint``'s plus ``dir`` (the folder loaded)
    and ``contract`` (its ``DataContract``, None when saved without one)."""
    if expect is not None and expect not in MODEL_TYPES:
        raise ValueError(f"expect={expect!r}: unknown model type; registered: {', '.join(MODEL_TYPES)}")
    ckpt, _, _ = _expected_dir(path, expect)
    model, config, state = load_checkpoint(ckpt, map_location=map_location, **model_kwargs)
    state["dir"] = ckpt
    state["contract"] = _contract(ckpt, state)
    return (model.eval() if inference else model), config, state


def _contract(ckpt: Path, state: dict) -> DataContract | None:
    try:
        return DataContract.from_state(state)
    except ValueError as e:
        raise CheckpointError(f"{ckpt / 'state.json'}: {e}") from None


def read_contract(path: str | Path) -> DataContract | None:
    """The ``DataContract`` saved with the checkpoint at ``path`` (a checkpoint folder, or a run
    folder's latest checkpoint), without loading its weights; None when saved without one."""
    ckpt = checkpoint_dir(path)
    if not (ckpt / "state.json").is_file():
        return None
    return _contract(ckpt, {"extra": _read_json(ckpt / "state.json").get("extra")})
