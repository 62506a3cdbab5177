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
    export_model(
        model, tmp_path, "vit_tiny_patch16_224", 10, 3, 32, class_names=[f"c{i}" for i in range(10)], model_kwargs=VIT
    )
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


def test_timm_args_are_recorded_even_without_model_kwargs(tmp_path):
    """A 1-channel timm net exported with no model_kwargs still reloads in timm (in_chans, img_size …)."""
    import timm

    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", 10, in_chans=1, **VIT).eval()
    export_model(model, tmp_path, "timm:vit_tiny_patch16_224", 10, 1, 32)
    args = json.loads((tmp_path / "config.json").read_text())["model_args"]
    assert args["in_chans"] == 1 and args["patch_size"] == 8 and args["img_size"] == [32, 32]
    reloaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(model.normalize(x)), model(x))


def test_class_subset_model_exports_as_a_plain_subset_classifier(tmp_path):
    import timm

    torch.manual_seed(0)
    rows = [7, 2, 9]
    model = create_model("vit_tiny_patch16_224", 3, class_indices=rows, backbone_classes=10, **VIT).eval()
    export_model(model, tmp_path, "vit_tiny_patch16_224", 3, 3, 32, class_names=["a", "b", "c"])
    reloaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    again = load_exported(tmp_path).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        assert want.shape == (2, 3)
        assert torch.allclose(reloaded(model.normalize(x)), want, atol=1e-6) and torch.allclose(
            again(x), want, atol=1e-6
        )


def test_export_checks_class_count_and_takes_a_consolidated_state_dict(tmp_path):
    import pytest

    model = create_model("small_cnn", 10, in_chans=1, width=4)
    with pytest.raises(ValueError, match="num_classes=7 but the model's classifier has 10 outputs"):
        export_model(model, tmp_path / "bad", "small_cnn", 7, 1, 28, model_kwargs={"width": 4})
    assert not (tmp_path / "bad").exists()
    sd = {k: torch.zeros_like(v) for k, v in model.model.state_dict().items()}  # what a sharded trainer gathers
    export_model(model, tmp_path / "ok", "small_cnn", 10, 1, 28, model_kwargs={"width": 4}, state_dict=sd)
    again = load_exported(tmp_path / "ok")
    assert all(v.abs().sum() == 0 for v in again.model.state_dict().values() if v.is_floating_point())


def test_load_exported_errors_name_the_missing_file(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_exported(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        load_exported(tmp_path)
