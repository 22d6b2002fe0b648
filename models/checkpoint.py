"""Saving and loading checkpoints: this project's format and the reference ZSE-SBIR `best_checkpoint.pth`.

This project's format is a dict {"format": "sbir-service", "format_version", "family", "config",
"state_dict", ...extra}; the config makes it loadable with no other file. Files are written to a
temporary name and renamed into place, so a checkpoint is never seen half-written.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import convert
from models.atomic import write_atomic
from models.registry import build_model, config_from_dict
from models.types import CheckpointError

FORMAT = "sbir-service"
FORMAT_VERSION = 1


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], dtype: torch.dtype | None = None,
                    **extra: Any) -> Path:
    """Write `model` (config included) to `path` atomically. `dtype` (e.g. torch.float16) stores
    floating-point weights in that type to save space; loading casts them back to float32."""
    path = Path(path)
    state_dict = {
        key: (value.to(dtype) if dtype is not None and value.is_floating_point() else value).detach().cpu()
        for key, value in model.state_dict().items()
    }
    config: Any = model.config
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": model.family,  # type: ignore[attr-defined]
        "config": config.to_dict(),
        "state_dict": state_dict,
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda stream: torch.save(payload, stream))


def _read(path: Path, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # Reference checkpoints store metrics as numpy scalars, which weights_only refuses unless
        # they are allowed explicitly. Allow exactly those, nothing else.
        if "numpy" not in str(error):
            raise
        import importlib

        import numpy as np

        try:
            multiarray = importlib.import_module("numpy._core.multiarray")
        except ImportError:  # numpy < 2
            multiarray = importlib.import_module("numpy.core.multiarray")
        allowed = [multiarray.scalar, np.dtype, type(np.dtype("float64")), type(np.dtype("float32"))]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)


# What a file written by torch.save starts with: a zip archive (PyTorch >= 1.6) or a pickle (older).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _not_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a file written by ``torch.save`` (empty, text, other bytes), or None."""
    with open(path, "rb") as stream:
        head = stream.read(512)
    if not head:
        return "the file is empty"
    if head.startswith(_TORCH_MAGIC):
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        return "it is a text file"
    return "it is not a file written by torch.save"


def _reason(error: BaseException) -> str:
    """One line for a torch.load failure, without torch's advice to load with weights_only=False
    (which would let the file run code: never the right fix for a file one cannot vouch for)."""
    text = str(error)
    if "weights_only" in text or "Weights only load failed" in text:
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        found = f": {detail.group(1).strip()}" if detail else ""
        return f"it holds Python objects other than tensors and plain values, which are not loaded{found}"
    first = text.splitlines()[0] if text else type(error).__name__
    return first.split(". ")[0].rstrip(".")


def read_state(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """Load the raw checkpoint object, turning every read failure into a one-line CheckpointError
    (a text or empty file is "not a checkpoint")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        foreign = _not_torch_file(path)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({error.strerror or error})") from None
    if foreign is not None:
        raise CheckpointError(f"{path}: not a checkpoint ({foreign}; expected a file written by sbir train, "
                              "sbir model convert or torch.save)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Detected pickle protocol 4"
            return _read(path, map_location)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({_reason(error)})") from None


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> nn.Module:
    """Load a ready model (eval mode) from this project's checkpoint or a reference `best_checkpoint.pth`.

    Any missing or unexpected key, or a shape mismatch, is a CheckpointError naming the keys.
    """
    payload = read_state(path, map_location)
    model, state_dict = _model_and_state(payload, Path(path))
    load_state_strict(model, state_dict, Path(path))
    if map_location not in (None, "cpu") and not callable(map_location):
        model.to(map_location)
    return model.eval()


def _model_and_state(payload: Any, path: Path) -> tuple[nn.Module, Mapping[str, torch.Tensor]]:
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(payload).__name__}")
    if payload.get("format") == FORMAT:
        for key in ("config", "state_dict", "family"):
            if key not in payload:
                raise CheckpointError(f"{path}: sbir-service checkpoint without '{key}'")
        try:
            config = config_from_dict(payload["family"], payload["config"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: bad config in checkpoint: {error}") from None
        return build_model(config, pretrained=False), payload["state_dict"]
    state_dict = payload.get("model", payload)
    if isinstance(state_dict, Mapping) and convert.is_reference_state_dict(state_dict):
        try:
            converted = convert.from_reference(state_dict)
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
        return build_model(convert.config_from_reference(converted), pretrained=False), converted
    raise CheckpointError(
        f"{path}: neither an sbir-service checkpoint (no 'format' key) nor a reference ZSE-SBIR "
        "checkpoint (no 'sa.model.*' keys under 'model')"
    )


def load_state_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Copy weights into `model`, refusing any partial load: names every missing, unexpected or
    wrongly shaped key."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {convert._list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {convert._list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch (checkpoint != model): {convert._list(mismatched)}")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    cast = {key: value.to(expected[key].dtype) for key, value in state_dict.items()}
    model.load_state_dict(cast, strict=True)


def checkpoint_hash(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of the checkpoint file's bytes (identifies the weights an index was built with)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
