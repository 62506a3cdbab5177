import pickle

import pytest
import torch
import torch.nn as nn

from derd_scale.models import CIFAR_MODELS, CheckpointError, create_model, load_weights
from derd_scale.models.factory import NormalizedModel


@pytest.mark.parametrize("arch", sorted(CIFAR_MODELS))
def test_cifar_archs_forward_and_features(arch):
    if arch in ("wrn34_10", "wrn34_20", "resnet50_cifar"):
        pytest.skip("large; covered by shape of smaller siblings")
    in_chans, size = (1, 28) if arch == "small_cnn" else (3, 32)
    model = create_model(arch, num_classes=7, in_chans=in_chans).eval()
    x = torch.rand(2, in_chans, size, size)
    logits, feats = model.forward_with_features(x)
    assert logits.shape == (2, 7)
    assert torch.allclose(logits, model(x), atol=1e-5)
    assert feats.shape[1] == model.model.num_features


def test_normalization_is_inside_the_model():
    m = create_model("resnet20", 10)  # akamaster normalisation is known
    assert m.has_norm and torch.allclose(m.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    x = torch.rand(1, 3, 32, 32)
    ref = m.model((x - m.mean) / m.std)
    assert torch.allclose(m(x), ref)


def test_class_subset_selects_logits_in_order():
    base = nn.Linear(4, 10)
    m = NormalizedModel(base, class_indices=[7, 2, 5])
    x = torch.rand(3, 4)
    assert torch.equal(m(x), base(x)[:, [7, 2, 5]])


@pytest.mark.slow
def test_akamaster_resnet20_scores_91_73_on_cifar10(weights_dir, cifar10_test):
    ds, _ = cifar10_test
    x, y = ds.tensors()
    model = create_model(
        "resnet20", 10, checkpoint=weights_dir / "akamaster_resnet_cifar10" / "resnet20-12fca82f.th"
    ).eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), 1000):
            correct += (model(x[i : i + 1000].float() / 255).argmax(1) == y[i : i + 1000]).sum().item()
    assert len(y) == 10_000
    assert correct == 9173


def test_abcrown_resnet4b_loads_exactly(weights_dir, cifar10_test):
    ds, _ = cifar10_test
    x, y = ds.tensors()
    model = create_model("resnet4b", 10, checkpoint=weights_dir / "abcrown_robust_cifar10" / "resnet4b.pth").eval()
    with torch.no_grad():
        acc = (model(x[:1000].float() / 255).argmax(1) == y[:1000]).float().mean().item()
    assert acc > 0.70  # 77.20 % on the full split


def test_module_prefix_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = create_model("resnet20", 10)
    sd = {f"module.{k}": v for k, v in src.model.state_dict().items()}
    torch.save({"state_dict": sd, "best_prec1": 1.0}, tmp_path / "w.th")
    dst = create_model("resnet20", 10, checkpoint=tmp_path / "w.th")
    for a, b in zip(src.model.state_dict().values(), dst.model.state_dict().values()):
        assert torch.equal(a, b)
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    dst2 = create_model("resnet20", 10, checkpoint=tmp_path / "w.safetensors")
    assert torch.equal(dst2.model.linear.weight, src.model.linear.weight)


def test_mismatch_lists_missing_and_unexpected(tmp_path):
    sd = create_model("resnet20", 10).model.state_dict()
    sd.pop("linear.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \['linear.bias'\].*unexpected keys \['extra.weight'\]"):
        load_weights(create_model("resnet20", 10).model, tmp_path / "bad.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


# torch warns that the plain pickle's protocol (4) is not its own (2) before it refuses the file: expected here.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_non_weights_only_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": _Evil()}, fh)
    with pytest.raises(CheckpointError, match="refused"):
        load_weights(create_model("resnet20", 10).model, path)


def test_unknown_arch_is_clear():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'"):
        create_model("resnet9000", 10)


def test_timm_model_by_name_offline_random_init():
    m = create_model("vit_tiny_patch16_224", 10, img_size=32, patch_size=8, depth=1)
    assert m.has_norm  # pretrained_cfg mean/std honoured
    out, feats = m.forward_with_features(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and feats.shape == (2, 192)
    assert torch.allclose(m.classify(feats), out)


def test_timm_pretrained_offline_gives_clear_error(hub_offline):
    with pytest.raises(RuntimeError, match="unreachable"):
        create_model("timm:resnet18", 10, pretrained=True)


def test_input_size_resizes_inside_the_model():
    m = create_model("vit_tiny_patch16_224", 5, img_size=64, patch_size=16, depth=1, input_size=64)
    out = m(torch.rand(2, 3, 32, 32))  # pseudo images at 32² reach the ViT at 64²
    assert out.shape == (2, 5)
