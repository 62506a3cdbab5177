"""Teachers (and students) from a ``ModelConfig``: one spec string, many sources.

    model_from_config(ModelConfig(arch="resnet56", checkpoint="…/resnet56-4bfd9763.th"), info)   # local file
    model_from_config(ModelConfig(arch="local-dir:runs/x/student"), info)       # our export / a timm folder
    model_from_config(ModelConfig(arch="timm:vit_small_patch16_224", pretrained=True,
                                  class_subset="imagenet100"), info)             # 1000 → 100 logits
    model_from_config(ModelConfig(arch="hf-hub:timm/resnet18.a1_in1k"), info)    # a timm-format Hub repo
    model_from_config(ModelConfig(arch="robustbench:cifar10/Linf/Carmon2019Unlabeled"), info)

Sources of ``arch``:
  derd_scale names (``resnet20`` … ``small_cnn``) or timm names, with ``checkpoint:`` a local
      .safetensors / .pth / .th file (loaded ``weights_only``) — offline;
  ``timm:NAME`` with ``pretrained: true``: timm's Hub weights, ``pretrained_cfg`` mean/std;
  ``hf-hub:ORG/REPO``: a timm-format Hub repo (e.g. a student pushed by launch/push_to_hub.py;
      derd_scale architectures timm cannot build are loaded by derd_scale);
  ``local-dir:DIR``: a timm-format folder (derd_scale's exports, timm's ``save_for_hf``) — offline;
      a transformers ``save_pretrained`` folder is recognised and loaded as ``transformers-dir:``;
  ``transformers:ORG/NAME`` / ``transformers-dir:DIR``: an ``AutoModelForImageClassification``
      from the Hub / a ``save_pretrained`` folder, with its image processor's normalisation and
      input size inside (``models.hf_models``); ``trust_remote_code`` only when set;
  ``robustbench:DATASET/THREAT/NAME``: RobustBench's model zoo (needs the robustbench package).
Network sources fail with one line when the Hub is unreachable (see ``models.factory``).

Every result is a ``NormalizedModel`` taking [0, 1] pixels, with ``num_classes`` outputs
(default: the dataset's) in the dataset's class order; ``class_subset`` selects a larger
head's logits (ImageNet-1k → ImageNet-100) by the dataset's class ids.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Optional

import torch.nn as nn

from .config import ModelConfig
from .data import DatasetInfo
from .models.factory import NormalizedModel, _looks_offline, create_model, read_class_subset
from .models.hf_models import is_transformers_folder, load_transformers

ROBUSTBENCH_DATASETS = ("cifar10", "cifar100", "imagenet")
ROBUSTBENCH_THREATS = ("Linf", "L2", "corruptions", "corruptions_3d")


def model_from_config(mcfg: ModelConfig, info: DatasetInfo) -> NormalizedModel:
    """Build the model ``mcfg`` describes for a dataset described by ``info``."""
    arch = mcfg.arch
    transformers_source = arch.startswith(("transformers:", "transformers-dir:")) or (
        arch.startswith("local-dir:") and is_transformers_folder(arch[len("local-dir:") :])
    )
    if mcfg.trust_remote_code and not transformers_source:
        raise ValueError(f"{arch}: trust_remote_code applies to transformers sources only; remove it")
    if transformers_source:
        model = _from_transformers(mcfg, info)
    elif arch.startswith("local-dir:"):
        model = _from_local_dir(mcfg, info)
    elif arch.startswith("robustbench:"):
        model = _robustbench(mcfg, info)
    elif arch.startswith("hf-hub:") and _hub_repo_library(mcfg) == "derd_scale":
        model = _from_derd_hub_repo(mcfg, info)
    else:
        class_indices, backbone_classes = _class_indices(mcfg, info)
        num_classes = mcfg.num_classes or (len(class_indices) if class_indices is not None else info.num_classes)
        model = create_model(
            arch,
            num_classes,
            in_chans=info.channels,
            checkpoint=mcfg.checkpoint,
            pretrained=mcfg.pretrained,
            mean=mcfg.mean,
            std=mcfg.std,
            class_indices=class_indices,
            backbone_classes=backbone_classes,
            input_size=mcfg.input_size,
            **mcfg.kwargs,
        )
        _warn_if_head_reset(model, mcfg, backbone_classes or num_classes)
    return model


def _class_indices(mcfg: ModelConfig, info: DatasetInfo) -> tuple[Optional[list[int]], Optional[int]]:
    """Logit indices of the dataset's classes in an ImageNet-1k head, in the dataset's order."""
    if mcfg.class_subset is None:
        return None, None
    wanted = read_class_subset(mcfg.class_subset)
    # The dataset's class order is authoritative; the subset file must cover its ids.
    missing = [c for c in info.class_names if c not in set(wanted)]
    if missing:
        raise ValueError(
            f"class_subset: {mcfg.class_subset} lacks {len(missing)} of {info.name}'s classes, e.g. {missing[:3]}"
        )
    head_ids = _imagenet1k_wnids()
    index = {w: i for i, w in enumerate(head_ids)}
    unknown = [w for w in info.class_names if w not in index]
    if unknown:
        raise ValueError(
            f"class_subset: {len(unknown)} of {info.name}'s class ids are not ImageNet-1k wnids, e.g. {unknown[:3]}"
        )
    return [index[w] for w in info.class_names], len(head_ids)


def _imagenet1k_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in logit order (shipped with timm, no network)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def _warn_if_head_reset(model: NormalizedModel, mcfg: ModelConfig, num_classes: int) -> None:
    """timm silently re-initialises a pretrained head of another size: right for fine-tuning,
    wrong for a teacher, so say it once."""
    if not (mcfg.pretrained or mcfg.arch.startswith("hf-hub:")) or mcfg.checkpoint:
        return
    source_classes = (getattr(model.model, "pretrained_cfg", None) or {}).get("num_classes")
    if source_classes and source_classes != num_classes:
        warnings.warn(
            f"{mcfg.arch}: pretrained head has {source_classes} classes, the model needs {num_classes}: "
            f"the classifier is freshly initialised (fine-tuning); a teacher needs class_subset or matching weights",
            stacklevel=3,
        )


def _from_local_dir(mcfg: ModelConfig, info: DatasetInfo) -> NormalizedModel:
    from .export import load_exported

    folder = Path(mcfg.arch[len("local-dir:") :])
    if not folder.is_dir():
        raise FileNotFoundError(f"{mcfg.arch}: folder not found")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{mcfg.arch}: no config.json in {folder} (expected a timm-format export folder)")
    if mcfg.checkpoint:
        raise ValueError(
            f"{mcfg.arch}: a local-dir folder carries its own weights; remove checkpoint: {mcfg.checkpoint}"
        )
    if mcfg.pretrained:
        raise ValueError(f"{mcfg.arch}: pretrained: true has no meaning for a local-dir folder; remove it")
    if mcfg.kwargs:
        raise ValueError(f"{mcfg.arch}: kwargs come from the folder's config.json; remove kwargs: {dict(mcfg.kwargs)}")
    loaded = load_exported(folder)
    class_indices, backbone_classes = _class_indices(mcfg, info)
    head = loaded.model.get_classifier() if hasattr(loaded.model, "get_classifier") else None
    outputs = head.out_features if isinstance(head, nn.Linear) else None
    if backbone_classes is not None and outputs is not None and outputs != backbone_classes:
        raise ValueError(
            f"{mcfg.arch}: class_subset needs a {backbone_classes}-class head, the folder's model has {outputs}"
        )
    expected = mcfg.num_classes or (len(class_indices) if class_indices is not None else info.num_classes)
    if class_indices is None and outputs is not None and outputs != expected:
        raise ValueError(
            f"{mcfg.arch}: the folder's model has {outputs} classes, {info.name} needs {expected}; set class_subset or use a matching model"
        )
    mean = mcfg.mean if mcfg.mean is not None else (loaded.mean.flatten().tolist() if loaded.has_norm else None)
    std = mcfg.std if mcfg.std is not None else (loaded.std.flatten().tolist() if loaded.has_norm else None)
    input_size = mcfg.input_size if mcfg.input_size is not None else loaded.input_size
    return NormalizedModel(loaded.model, mean, std, class_indices, input_size)


def _from_transformers(mcfg: ModelConfig, info: DatasetInfo) -> NormalizedModel:
    """``transformers:ORG/NAME`` (Hub), ``transformers-dir:FOLDER`` or a ``save_pretrained``
    folder given as ``local-dir:`` — through ``AutoModelForImageClassification``."""
    prefix, source = mcfg.arch.split(":", 1)
    if prefix != "transformers":
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"{mcfg.arch}: folder not found")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{mcfg.arch}: no config.json in {folder} (expected a save_pretrained folder)")
    for key, value in (("checkpoint", mcfg.checkpoint), ("kwargs", dict(mcfg.kwargs) or None)):
        if value:
            raise ValueError(
                f"{mcfg.arch}: {key} has no meaning for a transformers model (its folder or repo has them)"
            )
    if mcfg.pretrained:
        raise ValueError(f"{mcfg.arch}: a transformers source always loads its weights; remove pretrained: true")
    class_indices, backbone_classes = _class_indices(mcfg, info)
    expected = mcfg.num_classes or (len(class_indices) if class_indices is not None else info.num_classes)
    try:
        model = load_transformers(
            source,
            num_labels=expected,
            class_indices=class_indices,
            trust_remote_code=mcfg.trust_remote_code,
            mean=mcfg.mean,
            std=mcfg.std,
            input_size=mcfg.input_size,
        )
    except OSError as err:
        if prefix == "transformers" and _looks_offline(err):
            raise RuntimeError(
                f"{mcfg.arch}: the Hugging Face Hub is unreachable here ({type(err).__name__}); "
                f"use a save_pretrained folder (transformers-dir:FOLDER)"
            ) from None
        raise
    outputs = model.model.get_classifier().out_features
    if backbone_classes is not None and outputs != backbone_classes:
        raise ValueError(f"{mcfg.arch}: class_subset needs a {backbone_classes}-class head, the model has {outputs}")
    channels = getattr(model.model.hf.config, "num_channels", info.channels)
    if channels != info.channels:
        raise ValueError(f"{mcfg.arch}: the model takes {channels}-channel images, {info.name} has {info.channels}")
    return model


def _hub_repo_library(mcfg: ModelConfig) -> str:
    """Which library builds an ``hf-hub:`` repo, from its config.json (one small download)."""
    from huggingface_hub import hf_hub_download

    repo = mcfg.arch[len("hf-hub:") :]
    try:
        path = hf_hub_download(repo, "config.json")
    except Exception as err:  # huggingface_hub raises a different type per failure mode
        if _looks_offline(err):
            raise RuntimeError(
                f"{mcfg.arch}: the Hugging Face Hub is unreachable here ({type(err).__name__}); "
                f"use a local copy (local-dir:DIR) or a checkpoint file"
            ) from None
        raise
    return json.loads(Path(path).read_text()).get("derd_scale", {}).get("library", "timm")


def _from_derd_hub_repo(mcfg: ModelConfig, info: DatasetInfo) -> NormalizedModel:
    """A student pushed by launch/push_to_hub.py with a derd_scale architecture timm cannot build."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(mcfg.arch[len("hf-hub:") :], allow_patterns=["config.json", "model.safetensors"])
    return _from_local_dir(dataclasses.replace(mcfg, arch=f"local-dir:{folder}", pretrained=False), info)


def _robustbench_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("ROBUSTBENCH_MODEL_DIR", base / "robustbench"))


def _robustbench(mcfg: ModelConfig, info: DatasetInfo) -> NormalizedModel:
    _, rest = mcfg.arch.split(":", 1)
    parts = rest.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(
            f"{mcfg.arch}: expected robustbench:<dataset>/<threat>/<name>, e.g. robustbench:cifar10/Linf/Carmon2019Unlabeled"
        )
    dataset, threat, name = parts
    if dataset not in ROBUSTBENCH_DATASETS:
        raise ValueError(f"{mcfg.arch}: RobustBench dataset {dataset!r}; allowed: {', '.join(ROBUSTBENCH_DATASETS)}")
    if threat not in ROBUSTBENCH_THREATS:
        raise ValueError(f"{mcfg.arch}: RobustBench threat model {threat!r}; allowed: {', '.join(ROBUSTBENCH_THREATS)}")
    try:
        from robustbench.utils import load_model  # type: ignore
    except ImportError:
        raise RuntimeError(
            f"{mcfg.arch}: needs the robustbench package: pip install git+https://github.com/RobustBench/robustbench.git"
        ) from None
    try:
        # Weights are cached under ROBUSTBENCH_MODEL_DIR (default ~/.cache/robustbench), not the cwd.
        model = load_model(model_name=name, model_dir=str(_robustbench_cache()), dataset=dataset, threat_model=threat)
    except Exception as err:  # robustbench raises requests/gdown errors of many kinds
        if _looks_offline(err):
            raise RuntimeError(
                f"{mcfg.arch}: RobustBench weights need the network, which is unreachable here ({type(err).__name__}); "
                f"download once online (cached in {_robustbench_cache()})"
            ) from err
        raise
    # RobustBench models normalise inside and take [0, 1] inputs; ImageNet ones have 1000 logits.
    class_indices, _ = _class_indices(mcfg, info)
    return NormalizedModel(model, mcfg.mean, mcfg.std, class_indices, mcfg.input_size)
