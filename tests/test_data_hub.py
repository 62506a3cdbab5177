"""Data the way users have it (derd_scale/data.py): any Hub image-classification dataset with
image/label column mapping, streamed evaluation that holds one example at a time, and
ImageNet-100 from a streamed repo copy and from an ImageFolder — on small local stand-ins
that ``datasets`` reads exactly as it reads a Hub repo (no network).

    pytest -q tests/test_data_hub.py
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from derd_scale.config import DataConfig
from derd_scale.data import StreamingImageDataset, dataset_info, load_dataset_split
from derd_scale.errors import InputError
from derd_scale.evaluation import Protocol, evaluate


def _repo(folder, n: int, names: list[str], size=(12, 10), split="test", thumb: bool = True, seed: int = 0):
    """A datasets repo folder (data/<split>-00000-of-00001.parquet) with features stored in the file."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = {
        "pixels": [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)],
        "category": [i % len(names) for i in range(n)],
        "note": [f"row {i}" for i in range(n)],
    }
    features = {
        "pixels": datasets.Image(),
        "category": datasets.ClassLabel(names=names),
        "note": datasets.Value("string"),
    }
    if thumb:
        rows["thumb"] = rows["pixels"]
        features["thumb"] = datasets.Image()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features(features))
    ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


@pytest.fixture
def repo(tmp_path, hub_offline):
    return _repo(tmp_path / "me-pets", 10, ["cat", "dog", "fish"])


def test_any_dataset_by_id_with_column_mapping(repo):
    info = dataset_info(DataConfig(name=str(repo), image_column="pixels"))
    assert info.class_names == ("cat", "dog", "fish") and info.label_column == "category"  # the only ClassLabel
    assert info.channels == 3 and info.image_size == 10 and info.num_classes == 3
    ds, _ = load_dataset_split(DataConfig(name=str(repo), image_column="pixels", crop=8), "test")
    assert len(ds) == 10 and ds.labels.tolist() == [i % 3 for i in range(10)]
    x, y = ds[4]
    assert x.shape == (3, 8, 8) and int(y) == 1 and 0 <= x.min() <= x.max() <= 1
    assert len(ds.subset(3)) == 3 and torch.equal(ds.subset(3)[2][0], ds[2][0])
    assert not isinstance(ds.images, list)  # the split stays memory-mapped, decoded per item


def test_ambiguous_or_wrong_columns_name_the_key(repo):
    with pytest.raises(ValueError, match=r"^data\.image_column: .* has several an Image columns \(pixels, thumb\)"):
        dataset_info(DataConfig(name=str(repo)))
    with pytest.raises(ValueError, match=r"^data\.label_column: column 'note' of .* is Value"):
        dataset_info(DataConfig(name=str(repo), image_column="pixels", label_column="note"))
    with pytest.raises(ValueError, match=r"^data\.image_column: .* has no column 'img'"):
        dataset_info(DataConfig(name=str(repo), image_column="img"))
    with pytest.raises(ValueError, match=r"^data\.name: unknown dataset 'pets'"):
        dataset_info(DataConfig(name="pets"))  # not a repo id, no network
    with pytest.raises(ValueError, match=r"^data\.streaming: applies to data\.source=hub only"):
        dataset_info(DataConfig(name="cifar10", source="parquet", streaming=True))


def test_unreachable_hub_dataset_is_one_line(hub_offline):
    with pytest.raises(RuntimeError, match=r"^data: could not read 'someone/pets' with datasets .*Offline\?"):
        dataset_info(DataConfig(name="someone/pets"))


def _tiny_model(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(classes)).eval()


def test_streamed_evaluation_equals_the_loaded_one_and_reads_only_what_it_evaluates(repo):
    cfg = dict(name=str(repo), image_column="pixels", crop=8)
    loaded, _ = load_dataset_split(DataConfig(**cfg), "test")
    streamed, _ = load_dataset_split(DataConfig(**cfg, streaming=True), "test")
    assert isinstance(streamed, StreamingImageDataset) and len(streamed) == 10  # counted from the labels alone
    assert streamed.decoded == 0
    model = _tiny_model(3)
    model(torch.zeros(1, 3, 8, 8))
    protocol = Protocol("t", 0.1, 0.05, 2, 3)
    part = streamed.subset(7)
    a = evaluate(model, loaded, ["clean", "pgd_s"], protocol, n_examples=7, progress=False)
    b = evaluate(model, part, ["clean", "pgd_s"], protocol, progress=False)
    assert b.n == 7 and torch.equal(a.correct, b.correct) and a.labels == b.labels
    assert part.decoded == 7  # one pass, nothing beyond the evaluated examples
    with pytest.raises(InputError, match="data.streaming: training reads the whole split"):
        streamed.tensors()
    with pytest.raises(InputError, match="data.streaming: the labels of a streamed split are not held"):
        streamed.labels


def test_teacher_training_on_a_streamed_split_is_one_input_error_line(repo, tmp_path, capsys):
    """derd-scale teacher reads whole training splits: data.streaming=true is refused in one line,
    before the output folder is written."""
    from derd_scale.commands.teacher import main

    sets = [
        f"data.name={repo}",
        "data.image_column=pixels",
        "data.streaming=true",
        "data.train_split=test",
        "data.eval_split=test",
        "model.arch=small_cnn",
        "model.kwargs={width: 4}",
        "epochs=1",
        "batch_size=2",
        f"out={tmp_path / 'teacher'}",
    ]
    assert main([a for item in sets for a in ("--set", item)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["input error: data.streaming: training reads the whole split; set data.streaming=false for it"], err
    assert not (tmp_path / "teacher").exists()


def test_imagenet100_streamed_from_a_repo_copy_through_the_cli(tmp_path, hub_offline, capsys):
    """ImageNet-100 evaluation through datasets' streaming (data.path: a local copy of the repo)."""
    from derd_scale.commands.evaluate import main
    from derd_scale.export import export_model
    from derd_scale.models import create_model

    wnids = list(dataset_info("imagenet100").class_names)
    copy = _repo(tmp_path / "imagenet-100", 6, wnids, size=(32, 30), split="validation", thumb=False)
    model = create_model("small_cnn", 100, in_chans=3, width=4)
    export_model(model, tmp_path / "model", arch="small_cnn", num_classes=100, in_chans=3, img_size=28,
                 model_kwargs={"width": 4})  # fmt: skip
    sets = [
        "data.name=imagenet100",
        "data.source=hub",
        f"data.path={copy}",
        "data.streaming=true",
        "data.eval_split=validation",
        "data.image_column=pixels",
        "data.label_column=category",
        "data.resize=28",
        "data.crop=28",
        "eval.attacks=[clean]",
        "eval.n_examples=4",
    ]
    argv = ["--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["n"] == 4 and report["attacks"]["clean"]["n"] == 4
    rows = [json.loads(line) for line in (tmp_path / "out" / "per_example.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [0, 1, 2, 3]


def test_imagenet100_from_an_imagefolder(tmp_path):
    from PIL import Image

    wnids = list(dataset_info("imagenet100").class_names)
    for i, wnid in enumerate(reversed(wnids)):  # folder creation order must not matter
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (40, 30), (i, 2 * i % 256, 7)).save(tmp_path / "val" / wnid / "a.JPEG")
    cfg = DataConfig(name="imagenet100", source="imagefolder", path=str(tmp_path), eval_split="val", resize=20, crop=16)
    ds, info = load_dataset_split(cfg, "val")
    assert len(ds) == 100 and ds.labels.tolist() == list(range(100))  # labels in the dataset's wnid order
    x, y = ds[3]
    assert x.shape == (3, 16, 16) and int(y) == 3
    assert round(float(x[0, 0, 0]) * 255) == 96  # folder of wnid 3 was written with red = 99 - 3
