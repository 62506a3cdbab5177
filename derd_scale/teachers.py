"""Teachers (and students) from a ``ModelConfig``: one spec, many sources.

    model_from_config(ModelConfig(arch="resnet56", checkpoint="…/resnet56-4bfd9763.th"), info)
    model_from_config(ModelConfig(arch="local-dir:runs/x/student"), info)      # our export / timm folder
    model_from_config(ModelConfig(arch="timm:vit_small_patch16_224", pretrained=True,
                                  class_subset="imagenet100", num_classes=1000), info)

Every result is a ``NormalizedModel`` in [0, 1] pixel space with ``num_classes`` outputs
in the dataset's class order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional


from .config import ModelConfig
from .data import DatasetInfo
from .models.factory import NormalizedModel, create_model, read_class_subset


def _class_indices(mcfg: ModelConfig, info: DatasetInfo) -> tuple[Optional[list[int]], Optional[int]]:
    """Logit indices of the dataset's classes in a larger head (e.g. ImageNet-1k → ImageNet-100)."""
    if mcfg.class_subset is None:
        return None, None
    wanted = read_class_subset(mcfg.class_subset)
    if list(wanted) != list(info.class_names):
        # The dataset's class order is authoritative; the subset file must list the same ids.
        missing = sorted(set(info.class_names) - set(wanted))
        if missing:
            raise ValueError(f"class_subset: {mcfg.class_subset} lacks dataset classes {missing[:5]}")
    head_ids = _imagenet1k_wnids()
    index = {w: i for i, w in enumerate(head_ids)}
    unknown = [w for w in info.class_names if w not in index]
    if unknown:
        raise ValueError(f"class_subset: ids not in the 1000-class head: {unknown[:5]}")
    return [index[w] for w in info.class_names], len(head_ids)


def _imagenet1k_wnids() -> list[str]:
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def model_from_config(mcfg: ModelConfig, info: DatasetInfo) -> NormalizedModel:
    arch = mcfg.arch
    num_classes = mcfg.num_classes or info.num_classes
    if arch.startswith("local-dir:"):
        folder = Path(arch[len("local-dir:"):])
        if (folder / "config.json").exists():
            from .export import load_exported

            model = load_exported(folder)
            if mcfg.mean is not None:
                model = NormalizedModel(model.model, mcfg.mean, mcfg.std, model.class_indices, mcfg.input_size)
            return model
        raise FileNotFoundError(f"{arch}: no config.json in {folder}")
    if arch.startswith("robustbench:"):
        return _robustbench(mcfg, info)
    class_indices, backbone_classes = _class_indices(mcfg, info)
    if class_indices is not None and mcfg.num_classes is None:
        num_classes = len(class_indices)
    return create_model(
        arch, num_classes, in_chans=info.channels, checkpoint=mcfg.checkpoint, pretrained=mcfg.pretrained,
        mean=mcfg.mean, std=mcfg.std, class_indices=class_indices, backbone_classes=backbone_classes,
        input_size=mcfg.input_size, **mcfg.kwargs,
    )


def _robustbench(mcfg: ModelConfig, info: DatasetInfo) -> NormalizedModel:
    try:
        from robustbench.utils import load_model  # type: ignore
    except ImportError:
        raise RuntimeError(f"{mcfg.arch}: needs the robustbench package: pip install git+https://github.com/RobustBench/robustbench.git") from None
    _, rest = mcfg.arch.split(":", 1)
    try:
        dataset, threat, name = rest.split("/")
    except ValueError:
        raise ValueError(f"{mcfg.arch}: expected robustbench:<dataset>/<threat>/<name>") from None
    model = load_model(model_name=name, dataset=dataset, threat_model=threat)
    # RobustBench models normalise inside and take [0, 1] inputs.
    class_indices, _ = _class_indices(mcfg, info)
    return NormalizedModel(model, None, None, class_indices, mcfg.input_size)
