"""Expert guiding's switches (derd/expert_guiding.py): the paper's Eq. 17 at the defaults, each
variant's inputs and targets, and one student forward per distinct input."""

import pytest
import torch
import torch.nn as nn

from derd_scale.config import EGConfig, StudentAdversaryConfig
from derd_scale.derd.expert_guiding import (
    agreed_robust_target,
    class_balance_weights,
    concat_batches,
    prior_corrected_logits,
    replayed_batch,
    robust_mask_weight,
    student_batch,
    student_losses,
)
from derd_scale.derd.losses import kd_kl
from derd_scale.derd.self_adversary import craft_discrepancy_data


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _setup():
    torch.manual_seed(0)
    nat, rob = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x = torch.rand(6, 3, 2, 2)
    return x, craft_discrepancy_data(nat, rob, x, steps=3, alpha=0.05, eps=0.1), Counting()


def test_defaults_are_eq_17_on_x_d():
    x, dd, student = _setup()
    eg = EGConfig()
    batch = student_batch(eg, StudentAdversaryConfig(), x, dd)
    out = student_losses(student, batch, eg, temperature=1.0)
    s = student.net(dd.x_d)
    assert out.natural.item() == pytest.approx(kd_kl(dd.natural_logits, s).item())
    assert out.robust.item() == pytest.approx(kd_kl(dd.robust_logits, s).item())
    assert student.calls == 1  # x_d goes through the student once for both terms


def test_anchor_targets_x_adv_and_weights():
    x, dd, student = _setup()
    eg = EGConfig(
        natural_data="gz",
        robust_target="anchor",
        robust_data="x_adv",
        robust_clean_weight=0.25,
        lambda_nat=0.5,
        lambda_rob=2.0,
    )
    adv = StudentAdversaryConfig(alpha=0.02, steps=3, start="x_d")
    batch = student_batch(eg, adv, x, dd, attack_student=student, eps=0.05)
    assert (batch.robust_input - x).abs().max() <= 0.05 + 1e-6
    assert torch.equal(batch.robust_target, dd.anchor_robust_logits) and batch.natural_input is x
    assert student.training  # the attack ran in eval mode and restored the mode
    student.calls = 0
    out = student_losses(student, batch, eg, temperature=1.0)
    s_adv, s_x = student.net(batch.robust_input), student.net(x)
    l_2 = 0.75 * kd_kl(dd.anchor_robust_logits, s_adv) + 0.25 * kd_kl(dd.anchor_robust_logits, s_x)
    assert out.robust.item() == pytest.approx(2.0 * l_2.item(), rel=1e-6)
    assert out.robust_kl.item() == pytest.approx(l_2.item(), rel=1e-6)
    assert out.natural.item() == pytest.approx(0.5 * kd_kl(dd.anchor_natural_logits, s_x).item(), rel=1e-6)
    assert student.calls == 2  # x_adv and G(z); G(z) serves the clean robust term and L_1


def test_boundary_term_uses_the_anchor_forward_and_joins_l_2():
    x, dd, student = _setup()
    eg = EGConfig(natural_data="gz", robust_target="anchor", robust_data="x_adv", robust_self_weight=3.0)
    batch = student_batch(eg, StudentAdversaryConfig(alpha=0.02, steps=3, start="x_d"), x, dd, student, eps=0.05)
    student.calls = 0
    out = student_losses(student, batch, eg, temperature=1.0)
    s_adv, s_x = student.net(batch.robust_input), student.net(x)
    p, q = torch.log_softmax(s_x, 1), torch.log_softmax(s_adv, 1)
    boundary = (p.exp() * (p - q)).sum(1).mean()
    l_2 = kd_kl(dd.anchor_robust_logits, s_adv) + 3.0 * boundary
    assert out.robust.item() == pytest.approx(l_2.item(), rel=1e-6)
    assert student.calls == 2  # x_adv and G(z), as with β > 0: no forward of its own


def test_robust_only_is_unweighted():
    x, dd, student = _setup()
    eg = EGConfig(lambda_rob=4.0)
    out = student_losses(student, student_batch(eg, StudentAdversaryConfig(), x, dd), eg, 1.0, natural_term=False)
    assert out.robust.item() == pytest.approx(kd_kl(dd.robust_logits, student.net(dd.x_d)).item())
    assert out.natural.item() == 0.0


def test_agreed_robust_target_keeps_t_rob_where_the_experts_agree_and_t_nat_elsewhere():
    natural = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    robust = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 2.0], [0.1, 0.2, 0.3]])
    # sample 0: both say class 0 → T_rob's row; sample 1: T_nat 1, T_rob 2 → T_nat's row; sample 2: both 2.
    expected = torch.tensor([[1.0, 0.5, 0.0], [0.0, 3.0, 0.0], [0.1, 0.2, 0.3]])
    assert torch.equal(agreed_robust_target(natural, robust), expected)
    # wired through student_batch: the anchors' targets, mixed per sample
    x, dd, _ = _setup()
    batch = student_batch(EGConfig(robust_target="agreed"), StudentAdversaryConfig(), x, dd)
    assert torch.equal(batch.robust_target, agreed_robust_target(dd.anchor_natural_logits, dd.anchor_robust_logits))


def test_robust_mask_agreed_keeps_l2_where_the_experts_agree_on_the_anchor():
    """robust_mask=agreed: L_2 = (1/B) Σ_i 1[argmax T_rob(G(z)_i) = argmax T_nat(G(z)_i)] KL_i; L_1 untouched."""
    x, dd, student = _setup()
    nat = torch.zeros(6, 4)
    nat[torch.arange(6), torch.tensor([0, 1, 2, 3, 0, 1])] = 5.0
    rob = torch.zeros(6, 4)
    rob[torch.arange(6), torch.tensor([0, 1, 3, 3, 2, 1])] = 2.0  # agrees on samples 0, 1, 3, 5
    dd.anchor_natural_logits, dd.anchor_robust_logits = nat, rob
    assert robust_mask_weight(EGConfig(), dd) is None
    eg = EGConfig(natural_data="gz", robust_target="anchor", robust_mask="agreed")
    batch = student_batch(eg, StudentAdversaryConfig(), x, dd)
    assert batch.robust_weight.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    out = student_losses(student, batch, eg, temperature=1.0)
    s_d = student.net(dd.x_d)
    per_sample = [kd_kl(rob[i : i + 1], s_d[i : i + 1]).item() for i in range(6)]
    assert out.robust.item() == pytest.approx(sum(per_sample[i] for i in (0, 1, 3, 5)) / 6, rel=1e-5)
    assert out.natural.item() == pytest.approx(kd_kl(nat, student.net(x)).item(), rel=1e-6)


def test_class_balance_weights_give_each_present_class_the_same_total_weight():
    """w_i = N / (C · n_{y_i}): counts (3, 1, 0, 2) over N = 6 with C = 3 classes present →
    class 0: 6 / 9 each, class 1: 2, class 3: 1; each class sums to N / C = 2, the mean is 1."""
    counts = torch.tensor([3, 1, 0, 2])
    labels = torch.tensor([0, 0, 1, 3, 0, 3])
    w = class_balance_weights(labels, counts)
    assert torch.allclose(w, torch.tensor([2 / 3, 2 / 3, 2.0, 1.0, 2 / 3, 1.0]))
    assert w.mean().item() == pytest.approx(1.0)


def test_class_balance_weighs_both_terms_and_multiplies_the_robust_mask():
    x, dd, student = _setup()
    nat = torch.zeros(6, 4)
    nat[torch.arange(6), torch.tensor([0, 0, 0, 0, 1, 2])] = 5.0
    rob = torch.zeros(6, 4)
    rob[torch.arange(6), torch.tensor([0, 3, 0, 0, 1, 2])] = 2.0  # disagrees on sample 1
    dd.anchor_natural_logits, dd.anchor_robust_logits = nat, rob
    w = class_balance_weights(nat.argmax(1), torch.bincount(nat.argmax(1), minlength=4))
    assert torch.allclose(w, torch.tensor([0.5, 0.5, 0.5, 0.5, 2.0, 2.0]))
    eg = EGConfig(natural_data="gz", robust_target="anchor", robust_mask="agreed", class_balance=True)
    batch = student_batch(eg, StudentAdversaryConfig(), x, dd, sample_weight=w)
    assert batch.robust_weight.tolist() == [0.5, 0.0, 0.5, 0.5, 2.0, 2.0] and torch.equal(batch.natural_weight, w)
    out = student_losses(student, batch, eg, temperature=1.0)
    s_d, s_x = student.net(dd.x_d), student.net(x)
    kl = [kd_kl(rob[i : i + 1], s_d[i : i + 1]).item() for i in range(6)]
    assert out.robust.item() == pytest.approx(sum(wi * k for wi, k in zip([0.5, 0, 0.5, 0.5, 2, 2], kl)) / 6, rel=1e-5)
    kl_n = [kd_kl(nat[i : i + 1], s_x[i : i + 1]).item() for i in range(6)]
    assert out.natural.item() == pytest.approx(sum(wi * k for wi, k in zip(w.tolist(), kl_n)) / 6, rel=1e-5)


def test_prior_corrected_logits_divide_the_target_by_the_batch_marginal_to_the_power_tau():
    """softmax(z − τ log p̄) ∝ p / p̄^τ: p = (0.6, 0.3, 0.1), p̄ = (0.5, 0.25, 0.25), τ = 1 →
    (1.2, 1.2, 0.4) / 2.8 = (3/7, 3/7, 1/7); τ = 0.5 → p / √p̄ = (0.8485, 0.6, 0.2) / 1.6485."""
    p = torch.tensor([[0.6, 0.3, 0.1]])
    z = torch.log(p) + 1.7  # logits up to a constant
    prior = torch.tensor([0.5, 0.25, 0.25])
    full = torch.softmax(prior_corrected_logits(z, prior, 1.0), 1)
    assert torch.allclose(full, torch.tensor([[3 / 7, 3 / 7, 1 / 7]]), atol=1e-6)
    half = torch.softmax(prior_corrected_logits(z, prior, 0.5), 1)
    assert torch.allclose(half, torch.tensor([[0.8485, 0.6, 0.2]]) / 1.6485, atol=1e-4)
    assert torch.allclose(torch.softmax(prior_corrected_logits(z, prior, 0.0), 1), p, atol=1e-6)
    # a class absent from the marginal is floored, not infinite
    assert torch.isfinite(prior_corrected_logits(z, torch.tensor([1.0, 0.0, 0.0]), 1.0)).all()


def test_student_batch_corrects_the_anchor_target_and_needs_the_marginal():
    x, dd, student = _setup()
    eg = EGConfig(natural_data="gz", robust_target="anchor", robust_prior_correction=1.0)
    prior = torch.softmax(dd.anchor_robust_logits, 1).mean(0)
    batch = student_batch(eg, StudentAdversaryConfig(), x, dd, robust_prior=prior)
    assert torch.allclose(batch.robust_target, dd.anchor_robust_logits - torch.log(prior))
    # the corrected targets' batch marginal is more even than T_rob's own
    spread = torch.softmax(batch.robust_target, 1).mean(0)
    assert (spread.max() - spread.min()) < (prior.max() - prior.min())
    with pytest.raises(ValueError, match="needs robust_prior"):
        student_batch(eg, StudentAdversaryConfig(), x, dd)


def test_replayed_batch_learns_the_stored_targets_on_the_anchor_and_its_inner_maximiser():
    """stage2.replay_steps: L_1 = KL(T_nat(x) ‖ S(x)), L_2 towards T_rob(x) from x_adv in the ε-ball
    of x (RSLAD's start); ``agreed`` mixes the stored logits per sample."""
    torch.manual_seed(1)
    x = torch.rand(3, 3, 2, 2)
    natural = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    robust = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.1, 0.2, 0.3, 0.0]])
    student = Counting()
    eg = EGConfig(natural_data="gz", robust_target="anchor", robust_data="x_adv")
    adv = StudentAdversaryConfig(alpha=0.02, steps=2)
    b = replayed_batch(eg, adv, x, natural, robust, student, torch.zeros_like(x), eps=0.05)
    assert b.natural_input is x and b.anchor is x
    assert torch.equal(b.natural_target, natural) and torch.equal(b.robust_target, robust)
    assert 0 < (b.robust_input - x).abs().max() <= 0.05 + 1e-6 and student.training
    agreed = replayed_batch(EGConfig(robust_target="agreed"), adv, x, natural, robust, student, None, eps=0.05)
    # rows 0 and 2: the experts agree (0, 2) → T_rob's row; row 1: T_nat 1, T_rob 2 → T_nat's row
    assert torch.equal(agreed.robust_target, torch.stack([robust[0], natural[1], robust[2]]))
    # ε = 0: the ascent cannot move, x_adv = x
    zero = replayed_batch(eg, adv, x, natural, robust, student, None, eps=0.0)
    assert torch.equal(zero.robust_input, x)


def test_concat_batches_stacks_rows_and_keeps_one_forward_per_distinct_input():
    x, dd, student = _setup()
    eg = EGConfig(natural_data="gz", robust_target="anchor", robust_data="x_adv")
    adv = StudentAdversaryConfig(alpha=0.02, steps=2, start="x_d")
    current = student_batch(eg, adv, x, dd, attack_student=student, eps=0.05)
    old_x = torch.rand(4, 3, 2, 2)
    old_nat, old_rob = torch.randn(4, 4), torch.randn(4, 4)
    earlier = replayed_batch(eg, adv, old_x, old_nat, old_rob, student, torch.zeros_like(old_x), eps=0.05)
    both = concat_batches(current, earlier)
    assert both.natural_input is both.anchor and both.anchor.shape[0] == 10
    assert torch.equal(both.robust_target[6:], old_rob) and torch.equal(
        both.natural_target[:6], dd.anchor_natural_logits
    )
    student.calls = 0
    out = student_losses(student, both, eg, temperature=1.0)
    assert student.calls == 2  # [x_adv; old x_adv] and [G(z); old x] once each
    s_x = student.net(both.anchor)
    expected = kd_kl(torch.cat([dd.anchor_natural_logits, old_nat]), s_x)
    assert out.natural.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="per-sample weights"):
        concat_batches(student_batch(eg, adv, x, dd, student, eps=0.05, sample_weight=torch.ones(6)), earlier)
