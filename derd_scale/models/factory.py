"""Model factory: one name → one ``NormalizedModel`` working in [0, 1] pixel space.

Names resolve in this order:
  ``timm:NAME`` / ``hf-hub:ORG/REPO`` / ``local-dir:DIR``  → timm (``create_model``);
  a derd_scale CIFAR architecture (``resnet20`` … ``small_cnn``, see ``CIFAR_MODELS``);
  any other name timm knows (``vit_tiny_patch16_224``).

Normalisation lives inside the model (``NormalizedModel``), so attacks, the generator and
the self-adversary all see pixels in [0, 1]. For timm models the mean/std default to the
architecture's ``pretrained_cfg``; for derd_scale nets to the values a checkpoint was
trained with when known (``KNOWN_NORMALIZATION``), else identity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .checkpoint import load_weights
from .cifar import CIFAR_MODELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

# Normalisation the shared pretrained checkpoints were trained with (../shared/data/weights/README.md).
KNOWN_NORMALIZATION = {
    "resnet20": (IMAGENET_MEAN, IMAGENET_STD),
    "resnet32": (IMAGENET_MEAN, IMAGENET_STD),
    "resnet44": (IMAGENET_MEAN, IMAGENET_STD),
    "resnet56": (IMAGENET_MEAN, IMAGENET_STD),
    "resnet2b": (CIFAR10_MEAN, CIFAR10_STD),
    "resnet4b": (CIFAR10_MEAN, CIFAR10_STD),
    "cnn_a": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "conv_small": (CIFAR10_MEAN, (0.2023, 0.1994, 0.201)),
    "oval_base": (IMAGENET_MEAN, (0.225, 0.225, 0.225)),
    "oval_deep": (IMAGENET_MEAN, (0.225, 0.225, 0.225)),
}


class NormalizedModel(nn.Module):
    """``model((x - mean) / std)`` with x in [0, 1]; exposes features and classifier.

    ``class_indices`` (optional) keeps only those logits, in that order — how a 1000-class
    ImageNet teacher is used on ImageNet-100 without fine-tuning.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        class_indices: Optional[Sequence[int]] = None,
        input_size: Optional[int] = None,
    ):
        super().__init__()
        self.model = model
        # Pseudo images come at the dataset's size; a model trained at another size (e.g. a
        # patch-14 ViT at 518², or a 224² teacher fed 32² twins) gets them resized here.
        self.input_size = input_size
        self.has_norm = mean is not None
        c = len(mean) if mean is not None else 1
        self.register_buffer(
            "mean",
            torch.tensor(mean if mean is not None else [0.0], dtype=torch.float32).view(1, c, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "std",
            torch.tensor(std if std is not None else [1.0], dtype=torch.float32).view(1, c, 1, 1),
            persistent=False,
        )
        if class_indices is not None:
            self.register_buffer(
                "class_indices", torch.as_tensor(list(class_indices), dtype=torch.long), persistent=False
            )
        else:
            self.class_indices = None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = torch.nn.functional.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=x.shape[-1] > self.input_size,
            )
        if not self.has_norm:
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features that enter the classifier's final linear layer (Eq. 7's Feat)."""
        x = self.normalize(x)
        if hasattr(self.model, "forward_head"):  # timm: pooled pre-logits
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model.forward_features(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        head = self.model.get_classifier()
        logits = head(features)
        return logits if self.class_indices is None else logits.index_select(1, self.class_indices)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.forward_features(x)
        return self.classify(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.normalize(x))
        return logits if self.class_indices is None else logits.index_select(1, self.class_indices)


def is_timm_name(name: str) -> bool:
    return name.startswith(("timm:", "hf-hub:", "local-dir:")) or name not in CIFAR_MODELS


def build_backbone(arch: str, num_classes: int, in_chans: int = 3, pretrained: bool = False, **kwargs) -> nn.Module:
    """The bare network (no normalisation)."""
    if arch in CIFAR_MODELS:
        if pretrained:
            raise ValueError(f"{arch}: derd_scale CIFAR nets have no hub weights; give a checkpoint instead")
        return CIFAR_MODELS[arch](num_classes=num_classes, in_chans=in_chans, **kwargs)
    import timm

    name = arch[len("timm:") :] if arch.startswith("timm:") else arch
    if not name.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(name):
        raise ValueError(
            f"unknown architecture {arch!r}: not a derd_scale net ({', '.join(CIFAR_MODELS)}) and not a timm model"
        )
    try:
        return timm.create_model(
            name,
            pretrained=pretrained or name.startswith(("hf-hub:", "local-dir:")),
            num_classes=num_classes,
            in_chans=in_chans,
            **kwargs,
        )
    except (OSError, RuntimeError) as err:  # hub unreachable
        if _looks_offline(err):
            raise RuntimeError(
                f"{arch}: pretrained weights need the Hugging Face Hub, which is unreachable here "
                f"({type(err).__name__}). Use a local checkpoint (checkpoint: PATH) or `local-dir:DIR`, "
                f"or set pretrained: false."
            ) from err
        raise


def _looks_offline(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(
        s in text
        for s in (
            "connect",
            "offline",
            "resolve",
            "network",
            "timed out",
            "max retries",
            "name or service",
            "hf_hub_offline",
            "localentrynotfound",
            "cannot find the requested files",
        )
    )


def timm_pretrained_norm(model: nn.Module) -> tuple[Optional[tuple], Optional[tuple]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    return (tuple(mean), tuple(std)) if mean is not None and std is not None else (None, None)


def read_class_subset(spec: str) -> list[str]:
    """`imagenet100` → the wnids in derd_scale/resources/imagenet100_classes.txt; else a file path."""
    if spec == "imagenet100":
        path = Path(__file__).resolve().parent.parent / "resources" / "imagenet100_classes.txt"
    else:
        path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"class subset file not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def create_model(
    arch: str,
    num_classes: int,
    in_chans: int = 3,
    checkpoint: Optional[str | os.PathLike] = None,
    pretrained: bool = False,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    class_indices: Optional[Sequence[int]] = None,
    backbone_classes: Optional[int] = None,
    input_size: Optional[int] = None,
    **kwargs,
) -> NormalizedModel:
    """Build a model in [0, 1] pixel space. ``backbone_classes`` is the head size when a
    class subset is selected (e.g. 1000 for an ImageNet-1k teacher used on ImageNet-100)."""
    backbone = build_backbone(arch, backbone_classes or num_classes, in_chans, pretrained, **kwargs)
    if checkpoint is not None:
        load_weights(backbone, checkpoint)
    if mean is None and std is None:
        if arch in KNOWN_NORMALIZATION and in_chans == 3:
            mean, std = KNOWN_NORMALIZATION[arch]
        elif is_timm_name(arch):
            mean, std = timm_pretrained_norm(backbone)
            if mean is not None and len(mean) != in_chans:
                mean, std = None, None
    return NormalizedModel(backbone, mean, std, class_indices, input_size)


def unwrap_normalized(model: nn.Module) -> NormalizedModel:
    """Strip DDP/DeepSpeed/compile wrappers down to the NormalizedModel."""
    while not isinstance(model, NormalizedModel):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"{type(model).__name__} does not wrap a NormalizedModel")
        model = inner
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BatchNorm running statistics, no dropout) and no parameter gradients.

    Gradients still flow *through* a frozen model to its input — what the self-adversary and
    the generator need from the teachers. Returns the same module."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
