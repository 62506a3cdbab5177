"""Teacher sources: offline where they can be, one clear line where they need the network."""

import dataclasses
import json

import pytest
import torch

from derd_scale.config import ModelConfig
from derd_scale.data import dataset_info
from derd_scale.export import export_model
from derd_scale.models import create_model
from derd_scale.models import freeze as freeze_teacher
from derd_scale.teachers import model_from_config

CIFAR = dataset_info("cifar10")
FMNIST = dataset_info("fashion_mnist")
IN100 = dataset_info("imagenet100")
TINY_VIT = {"img_size": 32, "patch_size": 16, "depth": 1, "embed_dim": 48, "num_heads": 3}


def _same(a, b, x):
    a.eval(), b.eval()
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_local_pth_checkpoint_source(weights_dir):
    m = model_from_config(
        ModelConfig(arch="resnet4b", checkpoint=str(weights_dir / "abcrown_robust_cifar10" / "resnet4b.pth")), CIFAR
    )
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_local_safetensors_source_defaults_to_the_dataset(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = create_model("small_cnn", 10, in_chans=1, width=4)
    save_file(src.model.state_dict(), str(tmp_path / "w.safetensors"))
    m = model_from_config(
        ModelConfig(arch="small_cnn", checkpoint=str(tmp_path / "w.safetensors"), kwargs={"width": 4}), FMNIST
    )
    assert _same(m, src, torch.rand(2, 1, 28, 28))  # in_chans and num_classes came from the dataset


def test_local_dir_source(tmp_path):
    src = create_model("resnet20", 10).eval()
    export_model(src, tmp_path, "resnet20", 10, 3, 32)
    m = model_from_config(ModelConfig(arch=f"local-dir:{tmp_path}"), CIFAR)
    assert _same(m, src, torch.rand(2, 3, 32, 32))


def test_local_dir_reads_a_folder_timm_itself_saved(tmp_path):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10, in_chans=1).eval()
    save_for_hf(net, str(tmp_path), safe_serialization=True)
    m = model_from_config(ModelConfig(arch=f"local-dir:{tmp_path}"), FMNIST).eval()
    x = torch.rand(2, 1, 28, 28)
    saved = json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"]  # timm averaged RGB to 1 channel
    mean, std = saved["mean"][0], saved["std"][0]
    with torch.no_grad():
        assert torch.allclose(m(x), net((x - mean) / std), atol=1e-6)


def test_local_dir_errors_are_one_line(tmp_path):
    for cfg, match in (
        (ModelConfig(arch=f"local-dir:{tmp_path / 'nope'}"), "folder not found"),
        (ModelConfig(arch=f"local-dir:{tmp_path}"), "no config.json"),
    ):
        with pytest.raises(FileNotFoundError, match=match) as err:
            model_from_config(cfg, CIFAR)
        assert "\n" not in str(err.value)
    export_model(create_model("resnet20", 10), tmp_path, "resnet20", 10, 3, 32)
    with pytest.raises(ValueError, match="carries its own weights"):
        model_from_config(ModelConfig(arch=f"local-dir:{tmp_path}", checkpoint="x.pth"), CIFAR)
    with pytest.raises(ValueError, match="has 10 classes, cifar100 needs 100"):
        model_from_config(ModelConfig(arch=f"local-dir:{tmp_path}"), dataset_info("cifar100"))


def test_hub_sources_fail_with_one_line_offline(hub_offline):
    with pytest.raises(RuntimeError) as err:
        model_from_config(ModelConfig(arch="timm:resnet18", pretrained=True), CIFAR)
    assert "\n" not in str(err.value) and "unreachable" in str(err.value)
    with pytest.raises(RuntimeError) as err:
        model_from_config(ModelConfig(arch="hf-hub:timm/resnet18.a1_in1k"), CIFAR)
    assert "\n" not in str(err.value) and "unreachable" in str(err.value)


def test_robustbench_source_is_clear_without_the_package_or_with_a_bad_spec():
    with pytest.raises(ValueError, match="expected robustbench:<dataset>/<threat>/<name>"):
        model_from_config(ModelConfig(arch="robustbench:cifar10/Carmon2019Unlabeled"), CIFAR)
    with pytest.raises(ValueError, match="threat model 'linf'; allowed: Linf"):
        model_from_config(ModelConfig(arch="robustbench:cifar10/linf/Carmon2019Unlabeled"), CIFAR)
    try:
        import robustbench  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs the robustbench package: pip install") as err:
            model_from_config(ModelConfig(arch="robustbench:cifar10/Linf/Carmon2019Unlabeled"), CIFAR)
        assert "\n" not in str(err.value)
    else:
        pytest.skip("robustbench installed")


def test_class_subset_of_a_1000_class_local_dir_teacher(tmp_path):
    """An ImageNet-1k teacher (here a tiny random ViT) on ImageNet-100: exactly the 100
    classes' logits, in the dataset's order (which is not ImageNet-1k's)."""
    from timm.data import ImageNetInfo

    torch.manual_seed(0)
    full = create_model("vit_tiny_patch16_224", 1000, **TINY_VIT).eval()
    export_model(full, tmp_path, "vit_tiny_patch16_224", 1000, 3, 32, model_kwargs=TINY_VIT)
    teacher = model_from_config(ModelConfig(arch=f"local-dir:{tmp_path}", class_subset="imagenet100"), IN100).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        logits, reference = teacher(x), full(x)
    order = [ImageNetInfo().label_names().index(w) for w in IN100.class_names]
    assert order != sorted(order)
    assert logits.shape == (3, 100) and torch.equal(logits, reference[:, order])
    assert torch.equal(teacher.forward_with_features(x)[0], logits)


def test_class_subset_file_follows_the_dataset_order_and_must_cover_it(tmp_path):
    from timm.data import ImageNetInfo

    wnids = ImageNetInfo().label_names()
    picked = [wnids[i] for i in (917, 3, 500, 42)]
    (tmp_path / "subset.txt").write_text("\n".join(reversed(picked)) + "\n")  # file order ≠ dataset order
    info = dataclasses.replace(IN100, name="tiny4", class_names=tuple(picked))
    mcfg = ModelConfig(arch="vit_tiny_patch16_224", class_subset=str(tmp_path / "subset.txt"), kwargs=TINY_VIT)
    teacher = model_from_config(mcfg, info).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), teacher.model(teacher.normalize(x))[:, [917, 3, 500, 42]])
    (tmp_path / "subset.txt").write_text("\n".join(picked[:3]) + "\n")
    with pytest.raises(ValueError, match="lacks 1 of tiny4's classes"):
        model_from_config(mcfg, info)


def test_freeze_teacher_stops_parameter_grads_not_input_grads():
    teacher = freeze_teacher(create_model("small_cnn", 10, in_chans=1, width=4).train())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    teacher(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_hf_hub_repo_of_a_derd_scale_architecture_loads_through_derd_scale(tmp_path, monkeypatch):
    """A pushed derd_scale-architecture student (timm cannot build resnet20) is a teacher source;
    the two huggingface_hub downloads are served from a local export folder."""
    import huggingface_hub

    torch.manual_seed(0)
    src = create_model("resnet20", 10).eval()
    export_model(src, tmp_path / "repo", "resnet20", 10, 3, 32)
    asked = []

    def fake_file(repo_id, filename, **kw):
        asked.append((repo_id, filename))
        return str(tmp_path / "repo" / filename)

    def fake_snapshot(repo_id, allow_patterns=None, **kw):
        asked.append((repo_id, tuple(allow_patterns)))
        return str(tmp_path / "repo")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    m = model_from_config(ModelConfig(arch="hf-hub:me/derd-resnet20"), CIFAR)
    assert _same(m, src, torch.rand(2, 3, 32, 32))
    assert asked == [("me/derd-resnet20", "config.json"), ("me/derd-resnet20", ("config.json", "model.safetensors"))]
