"""Image-classification data for evaluation and teacher training (distillation reads none).

One entry point, ``load_dataset_split(cfg, split)``, for three sources:

- ``hub``: a Hub dataset (``uoft-cs/cifar10``, ``zalando-datasets/fashion_mnist``,
  an ImageNet-100 repo, ...) through ``datasets.load_dataset``;
- ``parquet``: local parquet files in the Hub layout (``<root>/<dir>/<split>-*.parquet``),
  e.g. ``../shared/data`` with ``name: cifar10``;
- ``imagefolder``: ``<root>/<split>/<class>/*.png|jpg`` (ImageNet-style, class = wnid).

Images come out as float tensors in [0, 1], CHW. Small datasets are decoded once into a
uint8 tensor (``ImageDataset.tensors()``); large ones decode lazily per item.
"""

from __future__ import annotations

import glob
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import DataConfig


@dataclass(frozen=True)
class DatasetInfo:
    """Per-dataset metadata: what the models and the generator must be built for."""

    name: str
    hub_id: str
    hub_config: Optional[str]
    parquet_dir: str
    image_column: str
    label_column: str
    class_names: tuple[str, ...]
    image_size: int
    channels: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = (
    "T - shirt / top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _imagenet100_wnids() -> tuple[str, ...]:
    path = Path(__file__).resolve().parent / "resources" / "imagenet100_classes.txt"
    return tuple(line.split()[0] for line in path.read_text().splitlines() if line.strip())


KNOWN_DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        "cifar10", "uoft-cs/cifar10", "plain_text", "cifar10/plain_text", "img", "label", CIFAR10_CLASSES, 32, 3
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        "uoft-cs/cifar100",
        "cifar100",
        "cifar100/cifar100",
        "img",
        "fine_label",
        tuple(f"class_{i}" for i in range(100)),
        32,
        3,
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        "zalando-datasets/fashion_mnist",
        "fashion_mnist",
        "fashion_mnist/fashion_mnist",
        "image",
        "label",
        FASHION_MNIST_CLASSES,
        28,
        1,
    ),
    "mnist": DatasetInfo(
        "mnist", "ylecun/mnist", "mnist", "mnist/mnist", "image", "label", tuple(str(i) for i in range(10)), 28, 1
    ),
    # clane9/imagenet-100 is a public Hub copy of the CMC ImageNet-100 split (labels follow its own order).
    "imagenet100": DatasetInfo(
        "imagenet100", "clane9/imagenet-100", None, "imagenet100", "image", "label", _imagenet100_wnids(), 224, 3
    ),
}
_ALIASES = {info.hub_id: key for key, info in KNOWN_DATASETS.items()}


def dataset_info(name: str) -> DatasetInfo:
    key = _ALIASES.get(name, name)
    if key not in KNOWN_DATASETS:
        raise ValueError(f"data.name: unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)} (or their Hub ids)")
    return KNOWN_DATASETS[key]


class ImageDataset(Dataset):
    """(image in [0, 1] CHW float32, label) pairs over encoded images or a uint8 tensor."""

    def __init__(
        self,
        images: Sequence,
        labels: Sequence[int],
        channels: int,
        resize: Optional[int] = None,
        crop: Optional[int] = None,
    ):
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.channels = channels
        self.resize, self.crop = resize, crop
        self._cache: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.labels)

    def _decode(self, item) -> torch.Tensor:
        from PIL import Image

        if isinstance(item, dict):
            item = item.get("bytes") or item.get("path")
        if isinstance(item, (bytes, bytearray)):
            img = Image.open(io.BytesIO(item))
        elif isinstance(item, (str, os.PathLike)):
            img = Image.open(item)
        else:
            img = item  # already a PIL image (datasets Image feature)
        img = img.convert("L" if self.channels == 1 else "RGB")
        if self.resize is not None:
            w, h = img.size
            scale = self.resize / min(w, h)
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        if self.crop is not None:
            w, h = img.size
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            img = img.crop((left, top, left + self.crop, top + self.crop))
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode everything once: (uint8 N×C×H×W, labels). For small-image datasets."""
        if self._cache is None:
            self._cache = torch.stack([self._decode(x) for x in self.images])
        return self._cache, self.labels

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self._cache[idx] if self._cache is not None else self._decode(self.images[idx])
        return raw.float().div_(255.0), self.labels[idx]

    def subset(self, n: Optional[int]) -> "ImageDataset":
        """The first n examples (the paper's 'first N test images')."""
        if n is None or n >= len(self):
            return self
        ds = ImageDataset(self.images[:n], self.labels[:n].tolist(), self.channels, self.resize, self.crop)
        if self._cache is not None:
            ds._cache = self._cache[:n]
        return ds


def _find_parquet(root: Path, info: Optional[DatasetInfo], split: str) -> list[str]:
    candidates = []
    if info is not None:
        candidates.append(root / info.parquet_dir)
    candidates += [root, root / split]
    for base in candidates:
        files = sorted(glob.glob(str(base / f"{split}-*.parquet"))) or sorted(glob.glob(str(base / f"{split}.parquet")))
        if files:
            return files
    files = sorted(glob.glob(str(root / "**" / f"{split}-*.parquet"), recursive=True))
    if files:
        return files
    raise FileNotFoundError(
        f"data.path: no parquet files for split {split!r} under {root}"
        + (f" (looked in {root / info.parquet_dir})" if info else "")
    )


def _read_parquet(files: list[str], info: DatasetInfo) -> tuple[list, list[int]]:
    import pyarrow.parquet as pq

    images, labels = [], []
    for f in files:
        table = pq.read_table(f, columns=[info.image_column, info.label_column])
        images.extend(table.column(info.image_column).to_pylist())
        labels.extend(table.column(info.label_column).to_pylist())
    return images, labels


def _read_imagefolder(root: Path, split: str, class_names: Sequence[str]) -> tuple[list, list[int]]:
    split_dir = root / split if (root / split).is_dir() else root
    present = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    order = [c for c in class_names if c in present] if class_names else present
    if not order:
        raise FileNotFoundError(f"data.path: no class folders in {split_dir}")
    missing = [c for c in class_names if c not in present]
    if class_names and missing:
        raise FileNotFoundError(
            f"data.path: {split_dir} lacks class folders {missing[:5]}{' …' if len(missing) > 5 else ''}"
        )
    images, labels = [], []
    for label, cls in enumerate(order):
        for p in sorted((split_dir / cls).iterdir()):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".jpeg"):
                images.append(str(p))
                labels.append(label)
    return images, labels


def load_dataset_split(cfg: DataConfig, split: Optional[str] = None) -> tuple[ImageDataset, DatasetInfo]:
    split = split or cfg.eval_split
    info = dataset_info(cfg.name)
    if cfg.source == "parquet":
        if cfg.path is None:
            raise ValueError("data.path: required when data.source is parquet")
        images, labels = _read_parquet(_find_parquet(Path(cfg.path), info, split), info)
    elif cfg.source == "imagefolder":
        if cfg.path is None:
            raise ValueError("data.path: required when data.source is imagefolder")
        images, labels = _read_imagefolder(Path(cfg.path), split, info.class_names)
    else:
        images, labels = _read_hub(info, split)
    return ImageDataset(images, labels, info.channels, cfg.resize, cfg.crop), info


def _read_hub(info: DatasetInfo, split: str) -> tuple[list, list[int]]:
    import datasets

    try:
        ds = datasets.load_dataset(info.hub_id, info.hub_config, split=split)
    except Exception as err:  # noqa: BLE001 — datasets raises many types when offline
        raise RuntimeError(
            f"data: could not load {info.hub_id!r} from the Hugging Face Hub ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            f"Offline? Use data.source=parquet data.path=DIR with the Hub's parquet files."
        ) from err
    ds = ds.cast_column(info.image_column, datasets.Image(decode=False))
    return list(ds[info.image_column]), list(ds[info.label_column])
