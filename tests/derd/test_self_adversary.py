"""Eqs. 13–16: one sign-ascent step and the clip, on hand values and on tiny teachers."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from derd_scale.derd.self_adversary import ascent_objective, craft_discrepancy_data, sa_step


def test_sa_step_sign_ascent_and_clip():
    x = torch.tensor([0.5, 0.995, 0.004, 0.3])
    grad = torch.tensor([2.0, 0.1, -3.0, 0.0])
    out = sa_step(x.clone(), grad, alpha=0.01)
    assert torch.allclose(out, torch.tensor([0.51, 1.0, 0.0, 0.3]))


def _linear_teacher(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def test_one_crafting_step_equals_the_formula_and_teachers_stay_frozen():
    nat, rob = _linear_teacher(0), _linear_teacher(1)
    before = [p.detach().clone() for p in list(nat.parameters()) + list(rob.parameters())]
    x0 = torch.rand(5, 3, 2, 2)
    out = craft_discrepancy_data(nat, rob, x0, steps=1, alpha=0.05, lambda_d=0.7)
    for p, q in zip(list(nat.parameters()) + list(rob.parameters()), before):
        assert torch.equal(p, q) and p.grad is None and p.requires_grad
    assert nat.training  # mode restored
    # straight-line reference
    x = x0.clone().requires_grad_(True)
    labels = nat(x0).argmax(1)
    d = (F.softmax(nat(x), 1) - F.softmax(rob(x), 1)).abs().sum(1).mean()
    obj = d + 0.7 * F.cross_entropy(nat(x), labels)
    obj.backward()
    expected = (x0 + 0.05 * x.grad.sign()).clamp(0, 1)
    assert torch.allclose(out.x_d, expected)
    assert torch.equal(out.natural_labels, labels)


def test_ascent_increases_the_objective_and_reports_flip_rate():
    nat, rob = _linear_teacher(2), _linear_teacher(3)
    x0 = torch.rand(64, 3, 2, 2)
    out = craft_discrepancy_data(nat, rob, x0, steps=10, alpha=0.02, lambda_d=1.0)
    labels = out.natural_labels
    with torch.no_grad():
        before = ascent_objective(nat(x0), rob(x0), labels, 1.0)
        after = ascent_objective(nat(out.x_d), rob(out.x_d), labels, 1.0)
    assert after > before
    assert out.discrepancy_after > out.discrepancy_before
    assert 0.0 <= out.flip_rate <= 1.0 and 0.0 <= out.teacher_agreement <= 1.0
    assert out.x_d.min() >= 0 and out.x_d.max() <= 1
    # no ε-ball: the data may move further than any fixed small radius after enough steps
    assert (out.x_d - x0).abs().max() > 0.1
    assert torch.allclose(out.natural_logits, nat(out.x_d))


def test_chunked_crafting_is_exact():
    nat, rob = _linear_teacher(4), _linear_teacher(5)
    x0 = torch.rand(10, 3, 2, 2)
    full = craft_discrepancy_data(nat, rob, x0, steps=3, alpha=0.03)
    chunked = craft_discrepancy_data(nat, rob, x0, steps=3, alpha=0.03, chunk_size=4)
    assert torch.equal(full.x_d, chunked.x_d)
    assert abs(full.flip_rate - chunked.flip_rate) < 1e-9


class _CountingTeacher(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
        )
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_the_first_ascent_forward_is_the_anchor_forward():
    """K steps cost K forwards of each teacher plus one at the final x_d (the anchor's outputs
    come from the first ascent step's forward) and those outputs equal a no-grad forward bit for bit."""
    nat, rob = _CountingTeacher(0).eval(), _CountingTeacher(1).eval()
    x0 = torch.rand(6, 3, 4, 4)
    out = craft_discrepancy_data(nat, rob, x0, steps=3, alpha=0.02)
    assert (nat.calls, rob.calls) == (4, 4)
    with torch.no_grad():
        assert torch.equal(out.anchor_natural_logits, nat(x0))
        assert torch.equal(out.anchor_robust_logits, rob(x0))
        assert torch.equal(out.natural_labels, nat(x0).argmax(1))
    nat.calls = rob.calls = 0
    craft_discrepancy_data(nat, rob, x0, steps=0, alpha=0.02)
    assert (nat.calls, rob.calls) == (1, 1)  # no ascent: the anchor's outputs are the targets
