"""timm-format export and reload."""

import json

import torch

from derd_scale.export import export_model, load_exported
from derd_scale.models import create_model

VIT = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 48, "num_heads": 3}


def test_timm_vit_roundtrip_through_timm_local_dir(tmp_path):
    import timm

    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", 10, **VIT).eval()
    export_model(model, tmp_path, "vit_tiny_patch16_224", 10, 3, 32, class_names=[f"c{i}" for i in range(10)], model_kwargs=VIT)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 10
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5] and config["label_names"][3] == "c3"
    reloaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ours = model(x)
        theirs = reloaded((x - 0.5) / 0.5)  # timm's pretrained_cfg normalisation
    assert torch.equal(ours, theirs)
    again = load_exported(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(x), ours)


def test_derd_cifar_arch_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", 10).eval()
    export_model(model, tmp_path, "resnet20", 10, 3, 32)
    assert "load_exported" in (tmp_path / "README.md").read_text()
    again = load_exported(tmp_path).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert torch.allclose(again.mean.flatten(), model.mean.flatten())
