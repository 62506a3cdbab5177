"""Attacks on hand-checkable models and on the shared CIFAR-10 checkpoints."""

import pytest
import torch
import torch.nn as nn

from derd_scale.evaluation import attacks as A
from derd_scale.models import create_model


class Linear2(nn.Module):
    """f(x) = [w·x, 0]: the CE gradient sign is known in closed form."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        z = x.flatten(1) @ self.w
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_fgsm_hand_value_and_clip():
    model = Linear2([1.0, -2.0, 0.5]).eval()
    x = torch.tensor([[0.5, 0.5, 0.99]])
    y = torch.tensor([0])
    # CE for class 0 falls with w·x, so the ascent direction is −sign(w)
    adv = A.fgsm(model, x, y, eps=0.1)
    assert torch.allclose(adv, torch.tensor([[0.4, 0.6, 0.89]]))
    assert model.w.grad is None


def test_pgd_stays_in_ball_and_box():
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, in_chans=1, width=4).eval()
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    for adv in (
        A.pgd_s(model, x, y, 0.1, 0.03, 5, generator=torch.Generator().manual_seed(1)),
        A.pgd_t(model, x, y, 0.1, 0.03, 5, generator=torch.Generator().manual_seed(1)),
        A.cw_pgd(model, x, y, 0.1, 0.03, 5, generator=torch.Generator().manual_seed(1)),
    ):
        assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    # deterministic under a seed
    a = A.pgd_s(model, x, y, 0.1, 0.03, 5, generator=torch.Generator().manual_seed(7))
    b = A.pgd_s(model, x, y, 0.1, 0.03, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_eps_zero_is_clean():
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, in_chans=1, width=4).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    assert torch.equal(A.pgd_s(model, x, y, 0.0, 0.01, 3), x)
    assert torch.equal(A.fgsm(model, x, y, 0.0), x)


def test_cw_margin_any_number_of_classes():
    logits = torch.tensor([[3.0, 1.0, 2.5, -1.0, 0.0], [0.0, 4.0, 1.0, 1.0, 1.0]])
    y = torch.tensor([0, 2])
    # max(Z_y − max_{j≠y} Z_j, −κ): rows give 3 − 2.5 and 1 − 4 (floored at −κ)
    assert A.cw_margin(logits, y).tolist() == [0.5, 0.0]
    assert A.cw_margin(logits, y, kappa=1.0).tolist() == [0.5, -1.0]
    assert A.cw_margin(logits, y, kappa=10.0).tolist() == [0.5, -3.0]


@pytest.fixture(scope="module")
def cifar_batch(cifar10_test):
    ds, _ = cifar10_test
    x, y = ds.tensors()
    return x[:100].float() / 255, y[:100]


def test_pgd_matches_torchattacks_on_a_trained_model(cifar_batch, weights_dir):
    import torchattacks

    model = create_model("resnet4b", 10, checkpoint=weights_dir / "abcrown_robust_cifar10" / "resnet4b.pth").eval()
    x, y = cifar_batch
    ours = A.pgd_s(model, x, y, 2 / 255, 0.5 / 255, 10, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    theirs = torchattacks.PGD(model, eps=2 / 255, alpha=0.5 / 255, steps=10, random_start=True)(x, y)
    with torch.no_grad():
        acc_ours = (model(ours).argmax(1) == y).float().mean().item()
        acc_theirs = (model(theirs).argmax(1) == y).float().mean().item()
    assert abs(acc_ours - acc_theirs) <= 0.01 + 1e-9, (acc_ours, acc_theirs)
