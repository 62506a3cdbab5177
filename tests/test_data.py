import pytest
import torch

from derd_scale.config import DataConfig
from derd_scale.data import dataset_info, load_dataset_split


def test_cifar10_parquet_split(cifar10_test):
    ds, info = cifar10_test
    assert info.num_classes == 10 and info.image_size == 32 and info.channels == 3
    assert len(ds) == 10_000
    assert ds.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    # test_batch[0] starts 158,159,165 (red channel, row-major)
    assert (x[0, 0, :3] * 255).round().tolist() == [158.0, 159.0, 165.0]


def test_fashion_mnist_parquet(shared_data):
    ds, info = load_dataset_split(
        DataConfig(name="zalando-datasets/fashion_mnist", source="parquet", path=str(shared_data)), "test"
    )
    assert info.channels == 1 and len(ds) == 10_000
    assert ds.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert ds[0][0].shape == (1, 28, 28)
    assert len(ds.subset(100)) == 100


def test_imagefolder_and_resize_crop(tmp_path):
    from PIL import Image

    for cls in ("n01", "n02"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 30), (10 * i, 20, 30)).save(tmp_path / "val" / cls / f"{i}.png")
    from derd_scale.data import ImageDataset, _read_imagefolder

    images, labels = _read_imagefolder(tmp_path, "val", ())
    ds = ImageDataset(images, labels, 3, resize=32, crop=24)
    assert labels == [0, 0, 1, 1]
    assert ds[0][0].shape == (3, 24, 24)


def test_unknown_dataset_and_missing_path():
    with pytest.raises(ValueError, match="data.name: unknown dataset 'svhn'"):
        dataset_info("svhn")
    with pytest.raises(ValueError, match="data.path: required"):
        load_dataset_split(DataConfig(name="cifar10", source="parquet"))


def test_hub_offline_error_is_clear(hub_offline):
    with pytest.raises(RuntimeError, match="Offline\\? Use data.source=parquet"):
        load_dataset_split(DataConfig(name="cifar10", source="hub"), "test")
