"""Teacher sources: offline where they can be, one clear line where they need the network."""

import pytest
import torch

from derd_scale.config import ModelConfig
from derd_scale.data import dataset_info
from derd_scale.export import export_model
from derd_scale.models import create_model
from derd_scale.teachers import model_from_config

CIFAR = dataset_info("cifar10")


def test_local_checkpoint_source(weights_dir):
    m = model_from_config(ModelConfig(arch="resnet4b", checkpoint=str(weights_dir / "abcrown_robust_cifar10" / "resnet4b.pth")), CIFAR)
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_local_dir_source(tmp_path):
    src = create_model("resnet20", 10).eval()
    export_model(src, tmp_path, "resnet20", 10, 3, 32)
    m = model_from_config(ModelConfig(arch=f"local-dir:{tmp_path}"), CIFAR).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), src(x))


def test_missing_local_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_from_config(ModelConfig(arch=f"local-dir:{tmp_path}"), CIFAR)


def test_hub_sources_fail_with_one_line_offline(hub_offline):
    with pytest.raises(RuntimeError) as err:
        model_from_config(ModelConfig(arch="timm:resnet18", pretrained=True), CIFAR)
    assert "\n" not in str(err.value) and "unreachable" in str(err.value)
    with pytest.raises(RuntimeError) as err:
        model_from_config(ModelConfig(arch="hf-hub:timm/resnet18.a1_in1k"), CIFAR)
    assert "unreachable" in str(err.value)


def test_robustbench_source_without_package_is_clear():
    try:
        import robustbench  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs the robustbench package"):
            model_from_config(ModelConfig(arch="robustbench:cifar10/Linf/Carmon2019Unlabeled"), CIFAR)
    else:
        pytest.skip("robustbench installed")
