"""Each Stage-I/II loss against a value computed by hand on tiny tensors."""

import math
import warnings

import pytest
import torch
import torch.nn as nn

from derd_scale.derd.losses import (
    BNStatistics,
    activation_loss,
    discrepancy,
    diversified_weights,
    generator_loss,
    information_entropy_loss,
    kd_kl,
    one_hot_loss,
    total_variation_loss,
)


def test_one_hot_loss_eq6_uses_teacher_argmax():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert one_hot_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    # sampled labels (pseudo_labels: sampled) override the argmax
    assert one_hot_loss(logits, torch.tensor([1, 1])).item() == pytest.approx(
        (math.log(1 + math.exp(2)) + math.log(1 + math.exp(-1))) / 2, rel=1e-6
    )


def test_activation_loss_eq7_mean_abs():
    assert activation_loss(torch.tensor([[1.0, -2.0], [3.0, 0.0]])).item() == pytest.approx(-1.5)


def test_information_entropy_eq10_soft_batch_mean():
    # uniform p̄ over k=2: H = −(1/2)(2 · ½ log ½) = ½ log 2
    assert information_entropy_loss(torch.zeros(3, 2)).item() == pytest.approx(-0.5 * math.log(2), rel=1e-6)
    # two confident, opposite samples also average to uniform
    logits = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert information_entropy_loss(logits).item() == pytest.approx(-0.5 * math.log(2), rel=1e-5)
    # all samples in one class: p̄ = one-hot, H = 0
    assert information_entropy_loss(torch.tensor([[50.0, 0.0], [50.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_kl_eq12_hand_value_and_temperature():
    t_logits = torch.tensor([[0.0, math.log(3.0)]])  # p = [1/4, 3/4]
    s_logits = torch.zeros(1, 2)  # q = [1/2, 1/2]
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kd_kl(t_logits, s_logits).item() == pytest.approx(expected, rel=1e-6)
    a = 1 / (1 + math.sqrt(3))
    expected_t2 = 4 * (a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5))
    assert kd_kl(t_logits, s_logits, temperature=2.0).item() == pytest.approx(expected_t2, rel=1e-6)
    assert kd_kl(t_logits, t_logits.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_kl_per_sample_weights_divide_by_the_batch():
    """(1/B) Σ_i w_i KL_i: a masked sample adds nothing and the divisor stays B (here 2)."""
    t_logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # p = [1/4, 3/4], [1/2, 1/2]
    s_logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # q = [1/2, 1/2], [1/4, 3/4]
    kl_0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    kl_1 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kd_kl(t_logits, s_logits, weight=torch.tensor([1.0, 0.0])).item() == pytest.approx(kl_0 / 2, rel=1e-6)
    assert kd_kl(t_logits, s_logits, weight=torch.tensor([0.0, 1.0])).item() == pytest.approx(kl_1 / 2, rel=1e-6)
    ones = kd_kl(t_logits, s_logits, weight=torch.ones(2))
    assert ones.item() == pytest.approx(kd_kl(t_logits, s_logits).item(), rel=1e-6)
    assert kd_kl(t_logits, s_logits, 2.0, torch.ones(2)).item() == pytest.approx(kd_kl(t_logits, s_logits, 2.0).item())


def test_discrepancy_on_probs_and_logits():
    nat = torch.zeros(1, 2)
    rob = torch.tensor([[0.0, math.log(3.0)]])
    assert discrepancy(nat, rob, "probs").item() == pytest.approx(0.5, rel=1e-6)
    assert discrepancy(nat, rob, "logits").item() == pytest.approx(math.log(3.0), rel=1e-6)
    # batch mean
    assert discrepancy(torch.cat([nat, nat]), torch.cat([rob, nat]), "probs").item() == pytest.approx(0.25, rel=1e-6)


def test_total_variation():
    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    assert total_variation_loss(x).item() == pytest.approx(0.0 + 1.0)


def test_bn_loss_eq8_against_hand_statistics():
    bn = nn.BatchNorm2d(2)
    bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
    bn.running_var.copy_(torch.tensor([2.0, 1.0]))
    model = nn.Sequential(nn.Identity(), bn).eval()
    # channel 0 sees {1, 3}: μ=2, σ²=1; channel 1 sees {0, 4}: μ=2, σ²=4 (biased variance)
    x = torch.tensor([[[[1.0]], [[0.0]]], [[[3.0]], [[4.0]]]])
    with BNStatistics(model) as stats:
        model(x)
        loss = stats.loss()
    expected = math.sqrt(1.5**2 + 3.0**2) + math.sqrt((1 - 2) ** 2 + (4 - 1) ** 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert not bn._forward_hooks, "hooks must be removed on exit"


def test_bn_loss_without_batchnorm_is_zero_and_warns_once():
    class NoBN(nn.Linear):
        pass

    with pytest.warns(UserWarning, match="no BatchNorm"):
        stats = BNStatistics(NoBN(2, 2))
    with stats:
        stats.layers  # noqa: B018
    assert stats.loss().item() == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BNStatistics(NoBN(2, 2))  # second time: silent


def test_generator_loss_eq11_is_the_weighted_sum():
    from derd_scale.models import create_model

    torch.manual_seed(0)
    teacher = create_model("small_cnn", 10, in_chans=1, width=4).eval().requires_grad_(False)
    x = torch.rand(6, 1, 28, 28, requires_grad=True)
    total, logits, parts = generator_loss(teacher, x, 1.0, 0.1, 1.0, 5.0, 0.5)
    recomputed = parts["l_oh"] + 0.1 * parts["l_a"] + parts["l_bn"] + 5.0 * parts["l_ie"] + 0.5 * parts["l_tv"]
    assert total.item() == pytest.approx(recomputed.item(), rel=1e-6)
    assert parts["l_bn"].item() > 0
    total.backward()
    assert x.grad is not None and all(p.grad is None for p in teacher.parameters())


def test_generator_loss_with_lambda_bn_zero_reads_no_batchnorm_statistics():
    """λ_BN = 0 (the ViT configs): L_BN is not computed — logged 0, no hook left, no warning for a
    teacher without BatchNorm — and L_G is the other four terms' weighted sum."""
    from derd_scale.models import create_model

    torch.manual_seed(0)
    teacher = create_model("small_cnn", 10, in_chans=1, width=4).eval().requires_grad_(False)
    x = torch.rand(6, 1, 28, 28)
    total, _, parts = generator_loss(teacher, x, 1.0, 0.1, 0.0, 5.0, 0.5)
    assert parts["l_bn"].item() == 0.0
    assert total.item() == pytest.approx(
        (parts["l_oh"] + 0.1 * parts["l_a"] + 5.0 * parts["l_ie"] + 0.5 * parts["l_tv"]).item(), rel=1e-6
    )
    assert not any(m._forward_hooks for m in teacher.modules())

    class NoBN(nn.Module):  # a fresh type: BNStatistics warns once per model type
        def forward_with_features(self, x):
            feats = x.flatten(1)[:, :10]
            return feats, feats

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generator_loss(NoBN(), x, 1.0, 0.1, 0.0, 5.0)


def test_diversified_weights_scale_each_lambda_by_its_own_draw():
    """DataFreeShield's DSS on G's objective: λ_i·u_i per term, hand values; an off term stays off."""
    weights = {"lambda_oh": 2.0, "lambda_bn": 0.0, "lambda_ie": 5.0}
    got = diversified_weights(weights, torch.tensor([0.5, 0.9, 0.2]))
    assert list(got) == ["lambda_oh", "lambda_bn", "lambda_ie"]
    assert got["lambda_oh"] == pytest.approx(1.0)
    assert got["lambda_bn"] == 0.0
    assert got["lambda_ie"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 weights need as many uniforms"):
        diversified_weights(weights, torch.tensor([0.5, 0.9]))
