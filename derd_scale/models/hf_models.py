"""transformers image classifiers (``AutoModelForImageClassification``) as derd_scale models.

    from derd_scale.models.hf_models import load_transformers
    model = load_transformers("google/vit-base-patch16-224")      # a Hub repo (network) …
    model = load_transformers("path/to/save_pretrained_folder")   # … or a save_pretrained folder, offline
    model(x)                                                      # x in [0, 1] pixels → logits

Sources in configs (derd_scale/teachers.py): ``transformers:ORG/NAME``, ``transformers-dir:FOLDER``,
and ``local-dir:FOLDER`` when the folder is a ``save_pretrained`` one (its config.json has
``model_type`` and no timm ``architecture``).

The image processor's normalisation (``image_mean``/``image_std``) and input size
(``crop_size`` when it centre-crops, else ``size``) are applied inside the returned
``NormalizedModel``, so the model takes [0, 1] pixels like every other source; its rescale
(1/255) is what [0, 1] pixels already are. ``TransformersClassifier`` gives the wrapped model
timm's interface (``forward_features`` = the input of the final linear layer, Eq. 7's Feat;
``get_classifier``); BatchNorm layers stay ``nn.BatchNorm2d`` (HF ResNet), so Stage I's
BN-statistics hooks find them. Remote code runs only with ``trust_remote_code=True``.

``export_transformers`` writes a student with ``save_pretrained`` (config.json +
model.safetensors) and an image processor config, reloadable with
``AutoModelForImageClassification.from_pretrained(folder)`` (same logits after the processor).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .factory import NormalizedModel

PROCESSOR_FILE = "preprocessor_config.json"


class TransformersClassifier(nn.Module):
    """An ``AutoModelForImageClassification`` model with the interface ``NormalizedModel`` uses."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model
        self.head_name = _final_linear_name(hf_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=x).logits

    def get_classifier(self) -> nn.Linear:
        return self.hf.get_submodule(self.head_name)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final linear layer's input (pooled features), captured on the way through."""
        captured = []
        handle = self.get_classifier().register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            self.hf(pixel_values=x)
        finally:
            handle.remove()
        return captured[0]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if not getattr(self.hf, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(self.hf).__name__} does not support gradient checkpointing")
        self.hf.gradient_checkpointing_enable() if enable else self.hf.gradient_checkpointing_disable()


def _final_linear_name(model: nn.Module) -> str:
    """The classification head's last ``nn.Linear`` (ViT/ConvNeXt: ``classifier``; ResNet:
    ``classifier.1`` after a Flatten)."""
    for name in ("classifier", "head", "heads", "fc"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Linear):
            return name
        if isinstance(module, nn.Module):
            linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
            if linears:
                return f"{name}.{linears[-1]}"
    raise ValueError(f"{type(model).__name__}: no linear classification head found (classifier/head/fc)")


def is_transformers_folder(folder: str | Path) -> bool:
    """A ``save_pretrained`` folder: config.json with ``model_type`` and no timm ``architecture``."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config and "architecture" not in config


def processor_normalisation(processor) -> tuple[Optional[list], Optional[list], Optional[int]]:
    """(mean, std, input size) an image processor applies to [0, 1] pixels."""
    mean = std = None
    if processor is not None and getattr(processor, "do_normalize", True):
        mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
        if isinstance(mean, (int, float)):
            mean, std = [float(mean)] * 3, [float(std)] * 3
    size = None
    if processor is not None:
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        dims = crop or getattr(processor, "size", None) or {}
        if not isinstance(dims, dict):
            dims = dict(dims)
        size = dims.get("height") or dims.get("shortest_edge")
    return (list(mean) if mean is not None else None), (list(std) if std is not None else None), size


def load_transformers(
    source: str | Path,
    *,
    num_labels: Optional[int] = None,
    class_indices: Optional[Sequence[int]] = None,
    trust_remote_code: bool = False,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    input_size: Optional[int] = None,
) -> NormalizedModel:
    """A ``NormalizedModel`` around ``AutoModelForImageClassification.from_pretrained(source)``.

    ``num_labels`` different from the checkpoint's re-initialises the head (fine-tuning, with a
    warning — a teacher needs matching weights or ``class_indices``); ``mean``/``std``/
    ``input_size`` override the image processor's."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    kwargs = {}
    if num_labels is not None and class_indices is None and num_labels != config.num_labels:
        warnings.warn(
            f"{source}: pretrained head has {config.num_labels} classes, the model needs {num_labels}: "
            f"the classifier is freshly initialised (fine-tuning); a teacher needs class_subset or matching weights",
            stacklevel=2,
        )
        kwargs = {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were not initialized from the model checkpoint.*")
        hf_model = AutoModelForImageClassification.from_pretrained(
            str(source), trust_remote_code=trust_remote_code, dtype=torch.float32, **kwargs
        )
    try:
        processor = AutoImageProcessor.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # no preprocessor_config.json: nothing to apply
        processor = None
    p_mean, p_std, p_size = processor_normalisation(processor)
    if processor is None and mean is None:
        warnings.warn(f"{source}: no image processor config; inputs reach the model unnormalised", stacklevel=2)
    hf_model.eval()
    return NormalizedModel(
        TransformersClassifier(hf_model),
        mean if mean is not None else p_mean,
        std if std is not None else p_std,
        class_indices,
        input_size if input_size is not None else p_size,
    )


def export_transformers(
    model: NormalizedModel,
    out_dir: str | Path,
    img_size: int,
    state_dict: Optional[dict] = None,
    class_names: Optional[Sequence[str]] = None,
    metadata: Optional[dict] = None,
) -> Path:
    """``save_pretrained`` the wrapped model (+ a ``ViTImageProcessor`` config holding the
    normalisation and the input size — the model's ``input_size``, else the data's ``img_size``)
    to ``out_dir``; ``state_dict`` is the bare backbone's
    (``hf.``-prefixed) consolidated weights when a sharded trainer passes them."""
    from transformers import ViTImageProcessor

    backbone: TransformersClassifier = model.model
    if model.class_indices is not None:
        raise ValueError("exporting a transformers model restricted to a class subset is not supported")
    hf_model = backbone.hf
    if state_dict is not None:
        state_dict = {k[len("hf.") :]: v for k, v in state_dict.items() if k.startswith("hf.")}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if class_names:
        hf_model.config.id2label = {i: str(n) for i, n in enumerate(class_names)}
        hf_model.config.label2id = {str(n): i for i, n in enumerate(class_names)}
    # Provenance beside transformers' own keys; from_pretrained keeps unknown keys as attributes.
    size = model.input_size or img_size
    hf_model.config.derd_scale = {"library": "transformers", "input_size": int(size), **(metadata or {})}
    hf_model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    mean = model.mean.flatten().tolist() if model.has_norm else [0.0] * hf_model.config.num_channels
    std = model.std.flatten().tolist() if model.has_norm else [1.0] * hf_model.config.num_channels
    ViTImageProcessor(
        do_resize=True,
        size={"height": int(size), "width": int(size)},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=model.has_norm,
        image_mean=mean,
        image_std=std,
    ).save_pretrained(out)
    return out
