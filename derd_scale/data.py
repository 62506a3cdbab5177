"""Image-classification data for evaluation and teacher training (distillation reads none).

    ds, info = load_dataset_split(DataConfig(name="cifar10", source="parquet", path="../shared/data"), "test")
    ds, info = load_dataset_split(DataConfig(name="ORG/any-image-dataset", image_column="img"), "test")
    ds, info = load_dataset_split(DataConfig(name="imagenet100", streaming=True, crop=224, resize=256), "validation")

One entry point, ``load_dataset_split(cfg, split)``, for three sources:

- ``hub``: a Hub dataset through ``datasets.load_dataset`` — a known name (``cifar10`` …
  ``imagenet100``), or any image-classification repo id (or local ``datasets`` folder), whose
  image and label columns are ``data.image_column``/``data.label_column`` or detected (the one
  ``Image`` feature; the ``ClassLabel`` one, which gives the class names); memory-mapped and
  decoded per item, or with ``data.streaming`` read front to back with nothing downloaded
  ahead and one example held at a time (``StreamingImageDataset``);
- ``parquet``: local parquet files in the Hub layout (``<root>/<dir>/<split>-*.parquet``),
  e.g. ``../shared/data`` with ``name: cifar10``;
- ``imagefolder``: ``<root>/<split>/<class>/*.png|jpg`` (ImageNet-style, class = wnid).

Images come out as float tensors in [0, 1], CHW. Small datasets are decoded once into a
uint8 tensor (``ImageDataset.tensors()``); large ones decode lazily per item.
"""

from __future__ import annotations

import dataclasses
import functools
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
from .errors import InputError


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


def known_dataset(name: str) -> Optional[DatasetInfo]:
    """The built-in entry for a name or its Hub id, else None (no network)."""
    return KNOWN_DATASETS.get(_ALIASES.get(name, name))


def dataset_info(spec: str | DataConfig) -> DatasetInfo:
    """What a dataset is: classes, image size, channels, columns. A known name answers at once;
    any other Hub repo id (or local ``datasets`` folder) is read from its features and first
    example (streamed: a few kilobytes). A ``DataConfig`` also applies its column names and
    ``hub_config``."""
    cfg = spec if isinstance(spec, DataConfig) else None
    name = cfg.name if cfg is not None else spec
    if cfg is not None and cfg.streaming and cfg.source != "hub":
        raise ValueError(f"data.streaming: applies to data.source=hub only, not {cfg.source}")
    info = known_dataset(name)
    if info is not None:
        if cfg is not None:
            info = dataclasses.replace(
                info,
                image_column=cfg.image_column or info.image_column,
                label_column=cfg.label_column or info.label_column,
                hub_config=cfg.hub_config or info.hub_config,
            )
        return info
    if (cfg is not None and cfg.source != "hub") or ("/" not in name and not Path(name).is_dir()):
        raise ValueError(
            f"data.name: unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)} (or their Hub ids), "
            f"or any Hub image-classification repo ORG/NAME with data.source=hub"
        )
    if cfg is None:
        return _hub_info(name, None, None, None, "test", None, None)
    return _hub_info(name, cfg.hub_config, cfg.image_column, cfg.label_column, cfg.eval_split, cfg.resize, cfg.crop)


def _pick(features: dict, wanted: Optional[str], kind: type, what: str, key: str, name: str) -> str:
    """The column holding ``kind`` features: the configured one (checked), else the only one."""
    if wanted is not None:
        if wanted not in features:
            raise ValueError(f"data.{key}: {name} has no column {wanted!r}; columns: {', '.join(features)}")
        if not isinstance(features[wanted], kind):
            raise ValueError(f"data.{key}: column {wanted!r} of {name} is {features[wanted]!r}, not {what}")
        return wanted
    found = [c for c, f in features.items() if isinstance(f, kind)]
    preferred = [c for c in found if c in ("label", "labels", "image", "img")]
    if len(found) == 1 or len(preferred) == 1:
        return found[0] if len(found) == 1 else preferred[0]
    raise ValueError(
        f"data.{key}: {name} has {'no' if not found else 'several'} {what} columns"
        f"{' (' + ', '.join(found) + ')' if found else ''}; set data.{key} (columns: {', '.join(features)})"
    )


@functools.lru_cache(maxsize=16)
def _hub_info(
    name: str,
    hub_config: Optional[str],
    image_column: Optional[str],
    label_column: Optional[str],
    split: str,
    resize: Optional[int],
    crop: Optional[int],
) -> DatasetInfo:
    import datasets

    try:
        stream = datasets.load_dataset(name, hub_config, split=split, streaming=True)
        features = stream.features or {}
    except Exception as err:  # noqa: BLE001 — datasets raises many types when offline or the repo is missing
        raise RuntimeError(
            f"data: could not read {name!r} with datasets ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            f"Offline? Use a local copy (data.name=FOLDER, or data.source=parquet/imagefolder)."
        ) from err
    image = _pick(features, image_column, datasets.Image, "an Image", "image_column", name)
    label = _pick(features, label_column, datasets.ClassLabel, "a ClassLabel", "label_column", name)
    first = next(iter(stream.cast_column(image, datasets.Image(decode=False))))
    from PIL import Image

    img = Image.open(io.BytesIO(first[image]["bytes"]) if first[image].get("bytes") else first[image]["path"])
    channels = 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3
    size = crop or resize or min(img.size)
    return DatasetInfo(name, name, hub_config, name, image, label, tuple(features[label].names), int(size), channels)


def decode_image(item, channels: int, resize: Optional[int] = None, crop: Optional[int] = None) -> torch.Tensor:
    """Encoded bytes, a path, a datasets ``{"bytes", "path"}`` dict or a PIL image → uint8 CHW
    (shorter side resized to ``resize``, then centre-cropped to ``crop``)."""
    from PIL import Image

    if isinstance(item, dict):
        item = item.get("bytes") or item.get("path")
    if isinstance(item, (bytes, bytearray)):
        img = Image.open(io.BytesIO(item))
    elif isinstance(item, (str, os.PathLike)):
        img = Image.open(item)
    else:
        img = item  # already a PIL image (datasets Image feature)
    img = img.convert("L" if channels == 1 else "RGB")
    if resize is not None:
        w, h = img.size
        scale = resize / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    if crop is not None:
        w, h = img.size
        left, top = (w - crop) // 2, (h - crop) // 2
        img = img.crop((left, top, left + crop, top + crop))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


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
        return decode_image(item, self.channels, self.resize, self.crop)

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


class StreamingImageDataset(Dataset):
    """A split streamed through ``datasets`` (``data.streaming``), read front to back.

    Holds one example at a time and never downloads ahead: the evaluation reads indices in
    increasing order (each rank its own batches), so ``ds[i]`` advances the stream to ``i``;
    going back restarts it. Its length is the split size the repo records, else counted once
    from the label column alone. Training reads whole splits, so ``tensors()`` and
    ``labels`` refuse (set data.streaming=false there)."""

    def __init__(self, stream, info: DatasetInfo, resize: Optional[int] = None, crop: Optional[int] = None):
        self.stream, self.info = stream, info
        self.resize, self.crop = resize, crop
        self.limit: Optional[int] = None
        self._length: Optional[int] = None
        self._iter, self._pos = None, 0
        self.decoded = 0  # examples decoded so far (what a test checks)

    def __len__(self) -> int:
        if self._length is None:
            splits = getattr(self.stream.info, "splits", None) or {}
            split = splits.get(str(self.stream.split)) if self.stream.split is not None else None
            self._length = (
                split.num_examples
                if split is not None and split.num_examples
                else sum(1 for _ in self.stream.select_columns([self.info.label_column]))
            )
        return self._length if self.limit is None else min(self.limit, self._length)

    def subset(self, n: Optional[int]) -> "StreamingImageDataset":
        if n is None:
            return self
        ds = StreamingImageDataset(self.stream, self.info, self.resize, self.crop)
        ds._length, ds.limit = self._length, n
        return ds

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= idx < (self.limit if self.limit is not None else float("inf")):
            raise IndexError(idx)
        if self._iter is None or idx < self._pos:
            self._iter, self._pos = iter(self.stream), 0
        for _ in range(idx - self._pos):  # skip what other ranks evaluate, undecoded
            next(self._iter)
        row = next(self._iter)
        self._pos = idx + 1
        self.decoded += 1
        image = decode_image(row[self.info.image_column], self.info.channels, self.resize, self.crop)
        return image.float().div_(255.0), torch.tensor(int(row[self.info.label_column]))

    def tensors(self):
        raise InputError("data.streaming: training reads the whole split; set data.streaming=false for it")

    @property
    def labels(self):
        raise InputError("data.streaming: the labels of a streamed split are not held; set data.streaming=false")


class _ArrowColumn:
    """A memory-mapped ``datasets`` column, indexed lazily (no Python list of the whole split)."""

    def __init__(self, ds, column: str):
        self.ds, self.column = ds, column

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return _ArrowColumn(self.ds.select(range(*idx.indices(len(self.ds)))), self.column)
        return self.ds[int(idx)][self.column]

    def __iter__(self):
        return (row[self.column] for row in self.ds)


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
    info = dataset_info(cfg)
    if cfg.source == "parquet":
        if cfg.path is None:
            raise ValueError("data.path: required when data.source is parquet")
        images, labels = _read_parquet(_find_parquet(Path(cfg.path), info, split), info)
    elif cfg.source == "imagefolder":
        if cfg.path is None:
            raise ValueError("data.path: required when data.source is imagefolder")
        images, labels = _read_imagefolder(Path(cfg.path), split, info.class_names)
    elif cfg.streaming:
        return StreamingImageDataset(_load_hub(info, split, True, cfg.path), info, cfg.resize, cfg.crop), info
    else:
        ds = _load_hub(info, split, False, cfg.path)
        images, labels = _ArrowColumn(ds, info.image_column), list(ds[info.label_column])
    return ImageDataset(images, labels, info.channels, cfg.resize, cfg.crop), info


def _load_hub(info: DatasetInfo, split: str, streaming: bool, local: Optional[str] = None):
    """The split with undecoded images (decoded per item); memory-mapped, or a stream.
    ``local`` (data.path) is a local copy of the repo (e.g. ``hf download --repo-type dataset``)."""
    import datasets

    try:
        ds = datasets.load_dataset(local or info.hub_id, info.hub_config, split=split, streaming=streaming)
    except Exception as err:  # noqa: BLE001 — datasets raises many types when offline
        raise RuntimeError(
            f"data: could not load {info.hub_id!r} from the Hugging Face Hub ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            f"Offline? Use data.source=parquet data.path=DIR with the Hub's parquet files."
        ) from err
    for column in (info.image_column, info.label_column):
        if column not in (ds.features or {}):
            raise ValueError(
                f"data: {info.hub_id!r} split {split!r} has no column {column!r}; columns: {', '.join(ds.features or {})}"
            )
    return ds.cast_column(info.image_column, datasets.Image(decode=False))
