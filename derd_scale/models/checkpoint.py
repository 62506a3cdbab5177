"""Safe loading of local weights into a bare network.

safetensors first; ``.pth/.th/.pt/.model`` only through ``torch.load(weights_only=True)``
(a pickle that needs arbitrary code is refused, never executed). Common wrappers are
unpacked: ``{'state_dict': sd}``, ``{'state_dict': [sd]}`` (alpha-beta-CROWN), ``{'model':
sd}``; ``module.`` (DataParallel/DDP) and ``model.`` (our ``NormalizedModel``) prefixes are
stripped. A key mismatch is an error that lists the missing and unexpected keys.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.nn as nn


class CheckpointError(RuntimeError):
    pass


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused — not a weights-only checkpoint (it needs arbitrary code to unpickle). "
            f"Re-save its state_dict with torch.save or safetensors. ({str(err).splitlines()[0]})"
        ) from None
    return _unwrap(obj, path)


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj, dict) and key in obj and not isinstance(obj[key], torch.Tensor):
            obj = obj[key]
            break
    if isinstance(obj, (list, tuple)) and len(obj) == 1:
        obj = obj[0]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors found")
    return dict(obj)


def strip_prefixes(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    own = set(model.state_dict().keys())
    sd = state_dict
    for prefix in ("module.", "_orig_mod.", "model."):
        if sd and all(k.startswith(prefix) for k in sd) and not any(k.startswith(prefix) for k in own):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    sd = strip_prefixes(read_state_dict(path), model)
    # SequentialClassifier accepts bare Sequential indices; its own load_state_dict remaps them.
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as err:  # shapes that do not fit: name the file, keep it on one line
        raise CheckpointError(
            f"{path}: state_dict does not fit {type(model).__name__}: {' '.join(str(err).split())[:400]}"
        ) from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: state_dict does not match {type(model).__name__}: "
            f"missing keys {missing[:20]}{' …' if len(missing) > 20 else ''}; "
            f"unexpected keys {unexpected[:20]}{' …' if len(unexpected) > 20 else ''}"
        )
