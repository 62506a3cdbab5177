"""Each baseline's loss against values computed by hand (derd_scale/methods; docs/baselines.md)."""

import math

import pytest
import torch
import torch.nn as nn

from derd_scale.methods import (
    augment,
    base,
    dafl,
    deepinversion,
    dfad,
    dfard,
    dfhl_rs,
    ferd,
    iad,
    mtard,
    rslad,
    trades,
    zskt,
)
from derd_scale.methods.ard import ard_loss

L3 = math.log(3.0)
KL_HALF_VS_QUARTER = 0.5 * math.log(4 / 3)  # KL([.5, .5] ‖ [.25, .75]) = 0.143841
CE_THREE_QUARTERS = -math.log(0.75)  # CE of p = [.25, .75] on class 1


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_kl_batchmean_and_temperature():
    assert base.kl_b(t([0, 0]), t([0, L3])).item() == pytest.approx(KL_HALF_VS_QUARTER, rel=1e-5)
    # τ² KL at τ = 2: student [0, 2 ln 3] / 2 = [0, ln 3] again, times 4.
    assert base.kl_b(t([0, 0]), t([0, 2 * L3]), 2.0).item() == pytest.approx(4 * KL_HALF_VS_QUARTER, rel=1e-5)


def test_rslad_loss_weights_adversarial_and_clean_terms():
    loss = rslad.rslad_loss(t([0, 0]), t([0, L3]), t([0, 0]), clean_weight=1 / 6)
    assert loss.item() == pytest.approx(5 / 6 * KL_HALF_VS_QUARTER, rel=1e-5)  # 0.119868


def test_dfad_discrepancy_is_the_mean_absolute_logit_gap():
    d = dfad.logit_discrepancy(t([1, 2]), t([0, 4]))
    assert d.item() == pytest.approx(1.5)
    assert dfad.dfad_generator_loss(d).item() == pytest.approx(-1.5)
    assert dfad.dfad_generator_loss(d, "log_l1").item() == pytest.approx(-math.log(2.5), rel=1e-6)


def test_dafl_generator_loss_at_code_scales():
    assert dafl.dafl_entropy_loss(t([0, 0], [5, 5])).item() == pytest.approx(math.log10(0.5), rel=1e-6)
    total, parts = dafl.dafl_generator_loss(t([0, L3]), t([1, -3]), 1.0, 0.1, 5.0)
    l_ie = 0.25 * math.log10(0.25) + 0.75 * math.log10(0.75)  # −0.244219
    assert parts["l_oh"].item() == pytest.approx(CE_THREE_QUARTERS, rel=1e-5)
    assert parts["l_a"].item() == pytest.approx(-2.0)
    assert parts["l_ie"].item() == pytest.approx(l_ie, rel=1e-5)
    assert total.item() == pytest.approx(CE_THREE_QUARTERS - 0.2 + 5 * l_ie, rel=1e-5)  # −1.133414


def test_zskt_attention_transfer():
    a_t = torch.tensor([3.0, 4.0]).view(1, 1, 1, 2)
    a_s = torch.tensor([4.0, 3.0]).view(1, 1, 1, 2)
    norm = math.sqrt(81 + 256)
    assert zskt.attention_map(a_t).flatten().tolist() == pytest.approx([9 / norm, 16 / norm], rel=1e-6)
    assert zskt.attention_loss([a_t], [a_s]).item() == pytest.approx((7 / norm) ** 2, rel=1e-5)  # 0.145401


def test_deepinversion_tv_and_competition():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    # right: (−1, −1) → √2; down: (−2, −2) → √8; diagonals: 2 − 1 = 1 and 0 − 3 = −3.
    assert deepinversion.tv_l2(x).item() == pytest.approx(math.sqrt(2) + math.sqrt(8) + 1 + 3, rel=1e-6)
    assert deepinversion.js_competition(t([1, 2]), t([1, 2])).item() == pytest.approx(1.0)  # agree: JS = 0
    # Confident disagreement: P, Q clip to [.01, .99] / [.99, .01], M = [.5, .5]: JS = 1.61 → clipped to 1.
    assert deepinversion.js_competition(t([0, 100]), t([100, 0])).item() == pytest.approx(0.0, abs=1e-6)


def test_dfard_generator_balance():
    loss, w_bn = dfard.dfard_generator_loss(torch.tensor(2.0), torch.tensor(4.0), torch.tensor(1.0), 1, 1, 0.5, "none")
    assert (loss.item(), w_bn) == (2.5, 1)
    loss, w_bn = dfard.dfard_generator_loss(torch.tensor(2.0), torch.tensor(4.0), torch.tensor(1.0), 1, 1, 0.5, "ratio")
    assert (loss.item(), w_bn) == (0.5, 0.5)  # λ_bn = |L_adv| / R_BN


def test_dfhl_rs_targets_generator_loss_and_entropy():
    targets = dfhl_rs.smoothed_targets(torch.tensor([1]), 3, 0.2)
    assert targets[0].tolist() == pytest.approx([0.1, 0.8, 0.1])
    loss, kl, div = dfhl_rs.dfhl_generator_loss(t([0, 0, 0]), targets, 3.0)
    want_kl = 0.2 * math.log(0.3) + 0.8 * math.log(2.4)  # 0.459581
    assert kl.item() == pytest.approx(want_kl, rel=1e-5)
    assert div.item() == pytest.approx(math.log10(1 / 3), rel=1e-6)
    assert loss.item() == pytest.approx(want_kl + 3 * math.log10(1 / 3), rel=1e-5)
    assert dfhl_rs.entropy_sum(t([0, 0], [0, 0])).item() == pytest.approx(2 * math.log(2), rel=1e-6)


def test_ferd_class_sampling_and_reweighting():
    y = ferd.sample_classes(torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.1, 0.25, 0.6, 0.99]))
    assert y.tolist() == [0, 1, 2, 2]
    sums, counts = ferd.class_losses(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([0, 0, 2]), 3)
    assert sums.tolist() == [4.0, 0.0, 2.0] and counts.tolist() == [2.0, 0.0, 1.0]
    probs = ferd.reweight(torch.tensor([1.0, 2.0, 3.0]), 0.05, 0.2)  # [.05, .125, .2] / .375
    assert probs.tolist() == pytest.approx([0.05 / 0.375, 0.125 / 0.375, 0.2 / 0.375], rel=1e-5)


def test_trades_loss():
    loss = trades.trades_loss(t([0, L3]), t([0, 0]), torch.tensor([1]), beta=6.0)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)  # KL(p_S(x) ‖ p_S(x')) = 0.130812
    assert loss.item() == pytest.approx(CE_THREE_QUARTERS + 6 * kl, rel=1e-5)


def test_ard_loss_with_and_without_the_ce_term():
    assert ard_loss(t([0, 0]), t([0, L3]), None, torch.tensor([1]), 1.0, 1.0).item() == pytest.approx(
        KL_HALF_VS_QUARTER, rel=1e-5
    )
    mixed = ard_loss(t([0, 0]), t([0, L3]), t([0, L3]), torch.tensor([1]), 0.5, 1.0, kl_scale=0.5)
    assert mixed.item() == pytest.approx(0.25 * KL_HALF_VS_QUARTER + 0.5 * CE_THREE_QUARTERS, rel=1e-5)


def test_iad_trust_and_both_variants():
    trust = iad.trust_weights(t([0, L3]), torch.tensor([1]), beta=0.5)
    assert trust.tolist() == pytest.approx([math.sqrt(0.75)], rel=1e-6)
    half = torch.tensor([0.5])
    # IAD-II: teacher = ½·KL(T_rob ‖ S(x̃)) + ½·KL(S(x) ‖ S(x̃)) = KL; natural term 0; CE on x̃.
    loss2 = iad.iad2_loss(t([0, 0]), t([0, L3]), t([0, L3]), t([0, 0]), torch.tensor([1]), half, 0.5, 0.25, 1.0)
    assert loss2.item() == pytest.approx(0.5 * KL_HALF_VS_QUARTER + 0.25 * CE_THREE_QUARTERS, rel=1e-5)
    warm = iad.iad2_loss(t([0, 0]), t([0, L3]), t([0, L3]), None, torch.tensor([1]), None, 0.5, 0.25, 1.0)
    assert warm.item() == pytest.approx(0.5 * KL_HALF_VS_QUARTER + 0.25 * CE_THREE_QUARTERS, rel=1e-5)
    loss1 = iad.iad1_loss(t([0, 0]), t([0, L3]), t([0, 0]), torch.tensor([1]), half, 1.0, 1.0)
    assert loss1.item() == pytest.approx(1.5 * KL_HALF_VS_QUARTER, rel=1e-5)


def test_mtard_weight_update():
    state: dict = {}
    assert mtard.update_weights(state, 2.0, 1.0, 0.025, 1.0) == pytest.approx((0.5, 0.5))  # first batch: r = 1, 1
    w_adv, w_nat = mtard.update_weights(state, 1.0, 1.0, 0.025, 1.0)  # r_adv = ½, r_nat = 1: target 2/3
    assert w_nat == pytest.approx(0.5 - 0.025 * (0.5 - 2 / 3)) and w_adv == pytest.approx(1 - w_nat)


def test_augmentations():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(augment.crop_flip(x, torch.tensor([[0.5, 0.5, 0.0]])), x)  # offsets (4, 4): identity
    assert torch.equal(augment.crop_flip(x, torch.tensor([[0.5, 0.5, 0.9]])), x.flip(-1))
    shifted = augment.crop_flip(x, torch.tensor([[0.5, 0.6, 0.0]]))  # column offset 5: one pixel left
    assert torch.equal(shifted[..., :3], x[..., 1:]) and shifted[..., 3].abs().sum() == 0
    assert torch.equal(augment.jitter(x, torch.tensor([0.5, 0.5]), 2), x)
    assert torch.equal(augment.jitter(x, torch.tensor([0.99, 0.0]), 2), torch.roll(x, (2, -2), (2, 3)))


def test_the_image_gradient_trick_gives_the_generators_own_gradient():
    """G backpropagates ⟨x, ∂L/∂x⟩ (trainer._method_generator_update): the same ∇_θG as L itself."""
    torch.manual_seed(0)
    gen, student = nn.Linear(3, 4), nn.Linear(4, 2)
    z = torch.randn(5, 3)
    direct = torch.autograd.grad(-dfad.logit_discrepancy(torch.zeros(5, 2), student(gen(z))), list(gen.parameters()))
    x = gen(z)
    leaf = x.detach().requires_grad_(True)
    (gx,) = torch.autograd.grad(-dfad.logit_discrepancy(torch.zeros(5, 2), student(leaf)), leaf)
    trick = torch.autograd.grad((x * gx).sum(), list(gen.parameters()))
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(direct, trick))
