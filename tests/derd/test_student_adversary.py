"""The student's inner maximisation and the robust-distillation loss (derd/student_adversary.py),
and the ε-ball of the self-adversary (derd/self_adversary.py)."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from derd_scale.derd.self_adversary import craft_discrepancy_data, sa_step
from derd_scale.derd.student_adversary import inner_max_target, robust_distillation_loss, student_inner_max
from derd_scale.linf import project


def test_sa_step_projects_into_the_ball_then_clips():
    anchor = torch.tensor([0.50, 0.50, 0.98, 0.01])
    x = torch.tensor([0.52, 0.45, 0.99, 0.02])
    grad = torch.tensor([1.0, -1.0, 1.0, -1.0])
    # x + 0.05·sign = [0.57, 0.40, 1.04, −0.03] → ball ±0.03 around anchor → [0.53, 0.47, 1.01→1, 0.0]
    out = sa_step(x.clone(), grad, 0.05, anchor, 0.03)
    assert out.tolist() == pytest.approx([0.53, 0.47, 1.0, 0.0])
    # without eps: only the pixel clip (the paper)
    assert sa_step(x.clone(), grad, 0.05).tolist() == pytest.approx([0.57, 0.40, 1.0, 0.0])


def test_crafting_with_eps_stays_in_the_ball_and_returns_the_anchor_outputs():
    torch.manual_seed(0)
    nat, rob = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x0 = torch.rand(6, 3, 2, 2)
    dd = craft_discrepancy_data(nat, rob, x0, steps=5, alpha=0.05, eps=0.04)
    assert (dd.x_d - x0).abs().max() <= 0.04 + 1e-6
    assert (dd.x_d - x0).abs().max() > 0.03  # it moved to the border
    with torch.no_grad():
        assert torch.allclose(dd.anchor_natural_logits, nat(x0)) and torch.allclose(dd.anchor_robust_logits, rob(x0))
        assert torch.allclose(dd.robust_logits, rob(dd.x_d))
    # no ascent: the final outputs are the anchor's (no second forward)
    dd0 = craft_discrepancy_data(nat, rob, x0, steps=0, alpha=0.05)
    assert torch.equal(dd0.x_d, x0) and torch.equal(dd0.natural_logits, dd0.anchor_natural_logits)


def test_robust_distillation_loss_hand_value():
    # t = softmax([0, ln 3]) = [1/4, 3/4]; S(x_r) uniform; S(x) = t.
    t = torch.tensor([[0.0, math.log(3.0)]])
    s_adv = torch.zeros(1, 2)
    kl_adv = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert robust_distillation_loss(t, s_adv, None).item() == pytest.approx(kl_adv, rel=1e-6)
    # β = 1/6: (5/6)·KL(t‖S(x_adv)) + (1/6)·KL(t‖t) = (5/6)·kl_adv
    assert robust_distillation_loss(t, s_adv, t.clone(), clean_weight=1 / 6).item() == pytest.approx(
        5 / 6 * kl_adv, rel=1e-6
    )


def test_robust_distillation_loss_boundary_term_hand_value_and_gradient():
    # S(x) = softmax([0, ln 3]) = [1/4, 3/4], S(x_r) uniform: KL(S(x) ‖ S(x_r)) = kl (as above).
    t = torch.tensor([[0.0, math.log(3.0)]])
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    s_clean = t.clone().requires_grad_(True)
    s_adv = torch.zeros(1, 2, requires_grad=True)
    # KL(t ‖ S(x_r)) + 2·KL(S(x) ‖ S(x_r)) = kl + 2·kl
    loss = robust_distillation_loss(t, s_adv, s_clean, self_weight=2.0)
    assert loss.item() == pytest.approx(3 * kl, rel=1e-6)
    loss.backward()
    # TRADES differentiates the clean side too: d/ds KL(softmax(s) ‖ q) at s = t is nonzero
    assert s_clean.grad is not None and s_clean.grad.abs().sum() > 0
    # with β = 1/6 as well: (5/6)·kl + (1/6)·KL(t ‖ t) + 2·kl
    assert robust_distillation_loss(t, s_adv, t, clean_weight=1 / 6, self_weight=2.0).item() == pytest.approx(
        (5 / 6 + 2) * kl, rel=1e-6
    )
    # a per-sample mask reaches the boundary term and keeps the batch-size denominator: two copies of
    # the sample above (kl + kl each); the second masked out → (kl + kl) / 2, unmasked → kl + kl
    two_t, two_adv = torch.cat([t, t]), torch.zeros(2, 2)
    masked = robust_distillation_loss(two_t, two_adv, two_t, weight=torch.tensor([1.0, 0.0]), self_weight=1.0)
    assert masked.item() == pytest.approx((kl + kl) / 2, rel=1e-6)
    assert robust_distillation_loss(two_t, two_adv, two_t, self_weight=1.0).item() == pytest.approx(2 * kl, rel=1e-6)


def test_inner_max_stays_in_the_ball_and_raises_the_kl():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    anchor = torch.rand(8, 3, 2, 2)
    with torch.no_grad():
        log_t = F.log_softmax(student(anchor) + torch.randn(8, 5), dim=1)

    def kl(x):
        with torch.no_grad():
            return F.kl_div(F.log_softmax(student(x), 1), log_t, reduction="sum", log_target=True).item()

    noise = torch.randn(anchor.shape, generator=torch.Generator().manual_seed(1))
    x_adv = student_inner_max(student, log_t, anchor, eps=0.05, alpha=0.02, steps=5, noise=noise)
    assert (x_adv - anchor).abs().max() <= 0.05 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert kl(x_adv) > kl(anchor)
    assert not any(p.grad is not None for p in student.parameters())
    # one step from a given start equals the formula: Π(x + α·sign ∇KL)
    start = anchor + 0.01
    x = start.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.kl_div(F.log_softmax(student(x), 1), log_t, reduction="sum", log_target=True), x)
    expected = project(start + 0.02 * g.sign(), anchor, 0.05)
    assert torch.allclose(student_inner_max(student, log_t, anchor, 0.05, 0.02, 1, start=start), expected)


def test_inner_max_target_hand_values():
    # target: log t; self: log S(anchor) with S(x) = W x, W = [[1, 0], [0, 2]] on x = [ln 2, 0] → logits [ln 2, 0]
    student = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    anchor = torch.tensor([[math.log(2.0), 0.0]])
    t = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    assert inner_max_target("target", t, student, anchor).exp().tolist()[0] == pytest.approx([0.25, 0.75])
    log_self = inner_max_target("self", t, student, anchor)
    assert log_self.exp().tolist()[0] == pytest.approx([2 / 3, 1 / 3]) and not log_self.requires_grad
    with pytest.raises(ValueError, match="stage2.adv.objective"):
        inner_max_target("student", t, student, anchor)


def test_self_objective_ascends_the_students_own_kl():
    # TRADES's inner maximisation: from a start off the anchor, one step is Π(x + α·sign ∇ KL(S(x) ‖ S(x'))),
    # and the ascent raises that KL, not the one to the robust target.
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    anchor = torch.rand(8, 3, 2, 2)
    log_self = inner_max_target("self", torch.zeros(8, 5), student, anchor)
    start = anchor + 0.01
    x = start.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.kl_div(F.log_softmax(student(x), 1), log_self, reduction="sum", log_target=True), x)
    expected = project(start + 0.02 * g.sign(), anchor, 0.05)
    assert torch.allclose(student_inner_max(student, log_self, anchor, 0.05, 0.02, 1, start=start), expected)

    def kl_self(x):
        with torch.no_grad():
            return F.kl_div(F.log_softmax(student(x), 1), log_self, reduction="sum", log_target=True).item()

    noise = torch.randn(anchor.shape, generator=torch.Generator().manual_seed(1))
    x_adv = student_inner_max(student, log_self, anchor, eps=0.05, alpha=0.02, steps=5, noise=noise)
    assert kl_self(anchor) == pytest.approx(0.0, abs=1e-6) and kl_self(x_adv) > 1e-4
