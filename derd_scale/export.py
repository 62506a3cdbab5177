"""Export a model in timm's Hub format and load it back.

    export_model(student, "runs/x/student", arch="vit_tiny_patch16_224", num_classes=100, ...)
    timm.create_model("local-dir:runs/x/student", pretrained=True)      # timm architectures
    derd_scale.export.load_exported("runs/x/student")                   # any architecture

The folder holds ``config.json`` (timm's keys: ``architecture``, ``num_classes``,
``label_names``, ``pretrained_cfg`` with mean/std/input_size; plus a ``derd_scale`` block
with the model kwargs and provenance), ``model.safetensors`` (the bare backbone, no
normalisation wrapper — exactly what timm expects) and a README saying how to load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from .models.cifar import CIFAR_MODELS
from .models.factory import NormalizedModel, create_model, unwrap_normalized


def export_model(
    model: torch.nn.Module,
    out_dir: str | Path,
    arch: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    class_names: Optional[Sequence[str]] = None,
    model_kwargs: Optional[dict] = None,
    metadata: Optional[dict] = None,
    state_dict: Optional[dict] = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` + README. ``state_dict`` (the bare
    backbone's, already consolidated) overrides reading it from ``model`` — how sharded
    trainers pass the gathered weights."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    norm = unwrap_normalized(model)
    if state_dict is None:
        state_dict = norm.model.state_dict()
    arch_name = arch[len("timm:"):] if arch.startswith("timm:") else arch
    mean = norm.mean.flatten().tolist() if norm.has_norm else [0.0] * in_chans
    std = norm.std.flatten().tolist() if norm.has_norm else [1.0] * in_chans
    config = {
        "architecture": arch_name,
        "num_classes": num_classes,
        "num_features": int(getattr(norm.model, "num_features", 0)),
        "label_names": list(class_names) if class_names else None,
        "pretrained_cfg": {
            "input_size": [in_chans, img_size, img_size],
            "mean": mean,
            "std": std,
            "num_classes": num_classes,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        },
        "model_args": {k: v for k, v in (model_kwargs or {}).items()},
        "derd_scale": {
            "library": "derd_scale" if arch_name in CIFAR_MODELS else "timm",
            "in_chans": in_chans,
            "input_size": norm.input_size,
            **(metadata or {}),
        },
    }
    if config["model_args"] and arch_name not in CIFAR_MODELS:
        config["model_args"].setdefault("in_chans", in_chans)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "README.md").write_text(_readme(arch_name, config))
    return out


def _readme(arch: str, config: dict) -> str:
    if config["derd_scale"]["library"] == "timm":
        how = '```python\nimport timm\nmodel = timm.create_model("local-dir:THIS_FOLDER", pretrained=True)  # or "hf-hub:ORG/REPO"\n```\n' \
              "Inputs: pixels in [0, 1] normalised with `pretrained_cfg` mean/std (timm's data config does this)."
    else:
        how = '```python\nfrom derd_scale.export import load_exported\nmodel = load_exported("THIS_FOLDER")  # normalisation included: feed [0, 1] pixels\n```\n' \
              f"`{arch}` is a derd_scale CIFAR architecture that timm does not ship, so load it with derd_scale."
    return f"# {arch} exported by derd_scale\n\n{how}\n"


def load_exported(folder: str | Path) -> NormalizedModel:
    """Rebuild a model written by ``export_model`` (either library) with its normalisation."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    arch = config["architecture"]
    pc = config["pretrained_cfg"]
    in_chans = config.get("derd_scale", {}).get("in_chans", pc["input_size"][0])
    kwargs = {k: v for k, v in config.get("model_args", {}).items() if k != "in_chans"}
    model = create_model(
        arch, config["num_classes"], in_chans=in_chans, checkpoint=folder / "model.safetensors",
        mean=pc["mean"], std=pc["std"], input_size=config.get("derd_scale", {}).get("input_size"), **kwargs,
    )
    return model
