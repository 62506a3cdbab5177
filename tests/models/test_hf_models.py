"""transformers image classifiers as teachers and students (derd_scale/models/hf_models.py),
built from tiny random configs (ViT, ResNet, ConvNeXt) saved locally — no network.

    pytest -q tests/models/test_hf_models.py
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn as nn

from derd_scale.config import ModelConfig, config_from_dict
from derd_scale.data import dataset_info
from derd_scale.derd.losses import BNStatistics
from derd_scale.export import export_model, load_exported
from derd_scale.teachers import model_from_config

MEAN, STD = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]


def tiny_hf(kind: str, num_labels: int = 10, channels: int = 3, size: int = 32) -> nn.Module:
    from transformers import (
        AutoModelForImageClassification,
        ConvNextConfig,
        ResNetConfig,
        ViTConfig,
    )

    torch.manual_seed(0)
    config = {
        "vit": lambda: ViTConfig(
            image_size=size,
            patch_size=size // 4,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_channels=channels,
        ),
        "resnet": lambda: ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_channels=channels
        ),
        "convnext": lambda: ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_channels=channels),
    }[kind]()
    config.num_labels = num_labels
    return AutoModelForImageClassification.from_config(config).eval()


def save_tiny(folder, kind: str, num_labels: int = 10, channels: int = 3, size: int = 32, processor: bool = True):
    from transformers import ViTImageProcessor

    model = tiny_hf(kind, num_labels, channels, size)
    model.save_pretrained(folder)
    if processor:
        ViTImageProcessor(
            size={"height": size, "width": size}, image_mean=MEAN[:channels], image_std=STD[:channels]
        ).save_pretrained(folder)
    return model


@pytest.mark.parametrize("kind", ["vit", "resnet", "convnext"])
@pytest.mark.parametrize("prefix", ["transformers-dir", "local-dir"])
def test_save_pretrained_folder_is_a_model_in_pixel_space(tmp_path, kind, prefix):
    hf = save_tiny(tmp_path, kind)
    model = model_from_config(ModelConfig(arch=f"{prefix}:{tmp_path}"), dataset_info("cifar10")).eval()
    x = torch.rand(3, 3, 32, 32)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ours, theirs = model(x), hf(pixel_values=(x - mean) / std).logits
        logits, feats = model.forward_with_features(x)
    assert ours.shape == (3, 10)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)  # the processor's normalisation is inside
    torch.testing.assert_close(logits, ours, rtol=0, atol=1e-6)  # features + classifier = forward
    assert feats.shape == (3, model.model.get_classifier().in_features)


def test_processor_input_size_resizes_inside(tmp_path):
    save_tiny(tmp_path, "vit", size=16)
    model = model_from_config(ModelConfig(arch=f"transformers-dir:{tmp_path}"), dataset_info("cifar10"))
    assert model.input_size == 16 and model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_class_subset_keeps_the_datasets_logits(tmp_path):
    save_tiny(tmp_path, "vit", num_labels=1000, size=16)
    info = dataset_info("imagenet100")
    full = model_from_config(ModelConfig(arch=f"transformers-dir:{tmp_path}", num_classes=1000), info).eval()
    sub = model_from_config(ModelConfig(arch=f"transformers-dir:{tmp_path}", class_subset="imagenet100"), info).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), full(x).index_select(1, sub.class_indices), rtol=0, atol=0)
    assert sub(x).shape == (2, 100)


def test_batchnorm_statistics_hooks_find_the_resnet_layers(tmp_path):
    save_tiny(tmp_path, "resnet")
    model = model_from_config(ModelConfig(arch=f"transformers-dir:{tmp_path}"), dataset_info("cifar10")).eval()
    with BNStatistics(model) as bn:
        model(torch.rand(4, 3, 32, 32))
        loss = bn.loss()
    assert len(bn.layers) >= 4 and float(loss.detach()) > 0


def test_bad_sources_are_one_clear_error(tmp_path, hub_offline):
    info = dataset_info("cifar10")
    with pytest.raises(FileNotFoundError, match="folder not found"):
        model_from_config(ModelConfig(arch=f"transformers-dir:{tmp_path / 'nope'}"), info)
    save_tiny(tmp_path / "gray", "vit", channels=1)
    with pytest.raises(ValueError, match="takes 1-channel images, cifar10 has 3"):
        model_from_config(ModelConfig(arch=f"transformers-dir:{tmp_path / 'gray'}"), info)
    with pytest.raises(ValueError, match="trust_remote_code applies to transformers sources only"):
        model_from_config(ModelConfig(arch="resnet20", trust_remote_code=True), info)
    with pytest.raises(RuntimeError, match="Hugging Face Hub is unreachable here"):
        model_from_config(ModelConfig(arch="transformers:google/vit-base-patch16-224"), info)
    assert ModelConfig().trust_remote_code is False


def test_head_of_another_size_is_reinitialised_with_a_warning(tmp_path):
    save_tiny(tmp_path, "convnext", num_labels=7)
    with pytest.warns(UserWarning, match="pretrained head has 7 classes, the model needs 10"):
        model = model_from_config(ModelConfig(arch=f"transformers-dir:{tmp_path}"), dataset_info("cifar10"))
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("kind", ["vit", "resnet", "convnext"])
def test_exported_student_reloads_with_identical_logits(tmp_path, kind):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    save_tiny(tmp_path / "src", kind)
    info = dataset_info("cifar10")
    student = model_from_config(ModelConfig(arch=f"transformers-dir:{tmp_path / 'src'}"), info).eval()
    with torch.no_grad():  # a trained student differs from its start: move the weights
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = export_model(student, tmp_path / "student", arch="x", num_classes=10, in_chans=3, img_size=32,
                       class_names=list(info.class_names), metadata={"dataset": "cifar10"})  # fmt: skip
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["0"] == info.class_names[0] and config["derd_scale"]["library"] == "transformers"

    reloaded = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x = images.float() / 255
    with torch.no_grad():
        ours = student(x)
        theirs = reloaded(**processor(list(images), return_tensors="pt")).logits
        exact = reloaded(pixel_values=student.normalize(x)).logits
    torch.testing.assert_close(exact, ours, rtol=0, atol=0)  # identical weights and head
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)  # the saved processor does the rest
    with torch.no_grad():
        torch.testing.assert_close(load_exported(out).eval()(x), ours, rtol=0, atol=0)


@pytest.mark.slow
def test_transformers_teachers_and_student_drive_both_stages(tmp_path):
    """A tiny HF ResNet (natural, with BatchNorm for Stage I) and ViT (robust) teach a tiny HF
    ConvNeXt student on Fashion-MNIST's shape; the exported student reloads in transformers."""
    from transformers import AutoModelForImageClassification

    from derd_scale.trainer import train

    for name, kind in (("nat", "resnet"), ("rob", "vit"), ("stu", "convnext")):
        save_tiny(tmp_path / name, kind, channels=1, size=28)
    cfg = config_from_dict(
        {},
        [
            "data.name=fashion_mnist",
            f"teachers.natural.arch=transformers-dir:{tmp_path / 'nat'}",
            f"teachers.robust.arch=local-dir:{tmp_path / 'rob'}",
            f"student.arch=transformers-dir:{tmp_path / 'stu'}",
            "generator.latent_dim=16",
            "generator.base_channels=4",
            "stage1.steps=2",
            "stage1.batch_size=4",
            "stage2.steps=2",
            "stage2.batch_size=4",
            "stage2.sa.steps=1",
            "eval.final=false",
            "eval.probe_attacks=[]",
            "logging.every_steps=1",
            "logging.progress_bar=false",
            f"output.root={tmp_path / 'runs'}",
            "output.name=hf",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train(cfg, "hf")
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [r["stage"] for r in records] == ["stage1", "stage1", "stage2", "stage2"]
    assert all(torch.isfinite(torch.tensor(r["l_1"])) for r in records if r["stage"] == "stage2")
    reloaded = AutoModelForImageClassification.from_pretrained(run.student_dir).eval()
    student = load_exported(run.student_dir).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=student.normalize(x)).logits, student(x), rtol=0, atol=0)
    start = AutoModelForImageClassification.from_pretrained(tmp_path / "stu")
    moved = any(
        not torch.equal(a, b) for a, b in zip(start.state_dict().values(), reloaded.state_dict().values(), strict=True)
    )
    assert moved, "the exported student equals its starting weights: Stage II did not train it"

    from derd_scale.hub import stage_upload  # pushable: the dry run writes exactly the upload

    files = stage_upload(run.path, "me/derd-convnext", tmp_path / "upload")
    assert files == ["README.md", "config.json", "derd_config.yaml", "model.safetensors", "preprocessor_config.json"]
    card = (tmp_path / "upload" / "README.md").read_text()
    assert "library_name: transformers" in card and 'from_pretrained("me/derd-convnext")' in card
