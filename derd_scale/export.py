"""Export a model in timm's Hub format and load it back.

    export_model(student, "runs/x/student", arch="vit_tiny_patch16_224", num_classes=100, ...)
    timm.create_model("local-dir:runs/x/student", pretrained=True)      # timm architectures
    derd_scale.export.load_exported("runs/x/student")                   # any architecture

The folder holds ``config.json`` (timm's keys: ``architecture``, ``num_classes``,
``label_names``, ``model_args``, ``pretrained_cfg`` with mean/std/input_size; plus a
``derd_scale`` block with the input channels, provenance and metrics), ``model.safetensors``
(the bare backbone, no normalisation wrapper — exactly what timm expects) and a README
saying how to load it.

A model restricted to a class subset (``class_indices``, e.g. an ImageNet-1k teacher on
ImageNet-100) is exported as a plain ``num_classes``-way model: the classifier's rows are
sliced, so any loader gives exactly the subset's logits in the dataset's order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .models.cifar import CIFAR_MODELS
from .models.factory import NormalizedModel, create_model, unwrap_normalized
from .models.hf_models import TransformersClassifier, export_transformers, is_transformers_folder, load_transformers

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's save_for_hf writes either
# Keys of a timm pretrained_cfg that describe where the *source* weights came from; an
# export is its own source, so they are dropped (as timm's own save_for_hf does).
_SOURCE_KEYS = (
    "architecture",
    "license",
    "url",
    "hf_hub_id",
    "hf_hub_filename",
    "file",
    "state_dict",
    "tag",
    "source",
    "label_offset",
    "label_names",
    "label_descriptions",
    "test_input_size",
    "test_crop_pct",
    "pool_size",
)


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
    """Write ``config.json`` + ``model.safetensors`` + README to ``out_dir``.

    ``model`` is a ``NormalizedModel`` (possibly DDP/compile-wrapped); its mean/std become
    ``pretrained_cfg``. ``state_dict`` (the bare backbone's, already consolidated) overrides
    reading the weights from ``model`` — how sharded trainers pass the gathered weights.
    Call it on the main process only.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    norm = unwrap_normalized(model)
    backbone = norm.model
    if isinstance(backbone, TransformersClassifier):  # transformers' own format (save_pretrained)
        return export_transformers(norm, out, img_size, state_dict, class_names, metadata)
    if state_dict is None:
        state_dict = backbone.state_dict()
    state_dict = dict(state_dict)
    arch_name = arch[len("timm:") :] if arch.startswith("timm:") else arch
    if arch_name.startswith(("hf-hub:", "local-dir:")):
        # A model loaded from a Hub repo / folder: record the architecture it was built as.
        arch_name = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture") or ""
        if not arch_name:
            raise ValueError(f"export_model: cannot tell the architecture of {arch}; pass its timm name as arch")
    library = "derd_scale" if arch_name in CIFAR_MODELS else "timm"
    if norm.class_indices is not None:
        state_dict = _slice_head(backbone, state_dict, norm.class_indices.tolist())
    head_rows = _head_rows(backbone, state_dict)
    if head_rows is not None and head_rows != num_classes:
        raise ValueError(f"export_model: num_classes={num_classes} but the model's classifier has {head_rows} outputs")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"export_model: {len(class_names)} class_names for num_classes={num_classes}")
    mean = norm.mean.flatten().tolist() if norm.has_norm else [0.0] * in_chans
    std = norm.std.flatten().tolist() if norm.has_norm else [1.0] * in_chans
    size = norm.input_size or img_size  # what the backbone itself is fed (after any resize)
    pretrained_cfg = _timm_pretrained_cfg(backbone) if library == "timm" else {}
    pretrained_cfg.update(
        {
            "input_size": [in_chans, size, size],
            "mean": mean,
            "std": std,
            "num_classes": num_classes,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        }
    )
    config = {
        "architecture": arch_name,
        "num_classes": num_classes,
        "num_features": int(getattr(backbone, "num_features", 0)),
        "label_names": list(class_names) if class_names else None,
        "pretrained_cfg": pretrained_cfg,
        "model_args": _model_args(backbone, library, model_kwargs, in_chans, num_classes),
        "derd_scale": {
            "library": library,
            "in_chans": in_chans,
            "input_size": norm.input_size,
            "dataset_image_size": img_size,
            **(metadata or {}),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "README.md").write_text(_readme(arch_name, config))
    return out


def _head_module_name(backbone: nn.Module) -> Optional[str]:
    """The state_dict prefix of the final linear classifier, or None if it is not an ``nn.Linear``."""
    get = getattr(backbone, "get_classifier", None)
    head = get() if get is not None else None
    if not isinstance(head, nn.Linear):
        return None
    return next((name for name, mod in backbone.named_modules() if mod is head), None)


def _head_rows(backbone: nn.Module, state_dict: dict) -> Optional[int]:
    name = _head_module_name(backbone)
    w = state_dict.get(f"{name}.weight") if name is not None else None
    return int(w.shape[0]) if w is not None else None


def _slice_head(backbone: nn.Module, state_dict: dict, rows: list[int]) -> dict:
    name = _head_module_name(backbone)
    if name is None or f"{name}.weight" not in state_dict:
        raise ValueError(
            f"export_model: a class-subset model needs an nn.Linear classifier to slice; {type(backbone).__name__} has none"
        )
    sd = dict(state_dict)
    idx = torch.as_tensor(rows, dtype=torch.long)
    for key in (f"{name}.weight", f"{name}.bias"):
        if key in sd:
            sd[key] = sd[key].index_select(0, idx.to(sd[key].device))
    return sd


def _timm_pretrained_cfg(backbone: nn.Module) -> dict:
    """The backbone's own pretrained_cfg (first_conv, classifier, fixed_input_size …) minus source info."""
    cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
    for key in _SOURCE_KEYS:
        cfg.pop(key, None)
    cfg["custom_load"] = False  # the export holds a native timm state_dict, never e.g. a .npz
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if v is not None}


def _model_args(
    backbone: nn.Module, library: str, model_kwargs: Optional[dict], in_chans: int, num_classes: int
) -> dict:
    """Arguments that rebuild the architecture. For timm, the ones timm recorded at creation
    (img_size, patch_size, depth … even when the caller forgot to pass them) win over ours."""
    args = dict(model_kwargs or {})
    if library != "timm":
        return args
    try:
        from timm.models import get_model_args

        recorded = get_model_args(backbone)
    except (ImportError, AttributeError, ValueError):  # older timm, or not a timm model
        recorded = {}
    for key, value in recorded.items():
        try:
            json.dumps(value)
        except TypeError:
            if key not in args:
                raise ValueError(
                    f"export_model: timm model arg {key!r}={value!r} is not JSON-serialisable; pass a replacement in model_kwargs"
                ) from None
            continue
        args[key] = list(value) if isinstance(value, tuple) else value
    args["in_chans"] = in_chans  # timm's local-dir loader builds with model_args, so a 1-channel net must say so
    args["num_classes"] = num_classes
    return args


def _readme(arch: str, config: dict) -> str:
    c, h, w = config["pretrained_cfg"]["input_size"]
    labels = config.get("label_names") or []
    facts = (
        f"- architecture: `{arch}`, {config['num_classes']} classes"
        + (f" ({', '.join(map(str, labels[:10]))}{', …' if len(labels) > 10 else ''})" if labels else "")
        + f"\n- input: {c}×{h}×{w} pixels in [0, 1], normalised with mean {_fmt(config['pretrained_cfg']['mean'])}, std {_fmt(config['pretrained_cfg']['std'])}\n"
    )
    if config["derd_scale"]["library"] == "timm":
        how = (
            '```python\nimport timm\n\nmodel = timm.create_model("local-dir:THIS_FOLDER", pretrained=True).eval()  # or "hf-hub:ORG/REPO"\n'
            "cfg = timm.data.resolve_data_config({}, model=model)  # mean/std/input size from config.json\n```\n\n"
            "timm's model does **not** normalise: apply `pretrained_cfg` mean/std to [0, 1] pixels (timm's transforms do). "
            '`derd_scale.export.load_exported("THIS_FOLDER")` gives the same network with the normalisation built in.'
        )
    else:
        how = (
            '```python\nfrom derd_scale.export import load_exported\n\nmodel = load_exported("THIS_FOLDER").eval()  # normalisation included: feed [0, 1] pixels\n```\n\n'
            f'`{arch}` is a derd_scale architecture that timm does not ship, so `timm.create_model("local-dir:…")` cannot build it; '
            "the weights are a plain state_dict in `model.safetensors`."
        )
    return f"# {arch} exported by derd_scale\n\n{facts}\n## How to load\n\n{how}\n"


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def load_exported(folder: str | Path) -> NormalizedModel:
    """Rebuild a model written by ``export_model`` (timm format, or transformers' for a
    transformers student), by timm's ``save_for_hf`` or by ``save_pretrained``, with its
    normalisation; offline."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: no config.json (expected a timm-format folder: config.json + model.safetensors)"
        )
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")
    if is_transformers_folder(folder):
        return load_transformers(folder)
    config = json.loads((folder / "config.json").read_text())
    arch = config.get("architecture")
    if not arch:
        raise ValueError(
            f"{folder / 'config.json'}: no 'architecture' key (neither a timm-format nor a transformers save_pretrained folder)"
        )
    pc = config.get("pretrained_cfg", {})
    ours = config.get("derd_scale", {})
    args = dict(config.get("model_args") or {})
    in_chans = ours.get("in_chans", args.get("in_chans", (pc.get("input_size") or [3])[0]))
    num_classes = config.get("num_classes", pc.get("num_classes"))
    kwargs = {k: v for k, v in args.items() if k not in ("in_chans", "num_classes")}
    return create_model(
        arch,
        num_classes,
        in_chans=in_chans,
        checkpoint=weights,
        mean=pc.get("mean"),
        std=pc.get("std"),
        input_size=ours.get("input_size"),
        **kwargs,
    )
