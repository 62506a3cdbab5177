"""The L∞ sign-gradient step shared by every attack (derd_scale/linf.py), against hand values."""

import math

import pytest
import torch
import torch.nn as nn

from derd_scale.linf import (
    ce_sum,
    clean_log_probs,
    input_grad,
    kl_sum,
    pgd,
    project,
    sign_step,
    start_normal,
    start_uniform,
)


class _Sum(nn.Module):
    """logits = [Σ pixels, 0]: ∂ logit_0 / ∂x = 1 everywhere."""

    def forward(self, x):
        return torch.stack([x.flatten(1).sum(1), torch.zeros(x.shape[0])], dim=1)


def test_project_hand_values():
    anchor = torch.tensor([0.5, 0.0, 1.0])
    # into [anchor − 0.1, anchor + 0.1], then [0, 1]
    assert project(torch.tensor([0.7, -0.2, 0.95]), anchor, 0.1).tolist() == pytest.approx([0.6, 0.0, 0.95])
    # no ball: the pixel range only
    assert project(torch.tensor([1.3, -0.2, 0.4]), anchor, None).tolist() == pytest.approx([1.0, 0.0, 0.4])


def test_sign_step_hand_values():
    anchor = torch.tensor([0.50, 0.50, 0.98, 0.01])
    x = torch.tensor([0.52, 0.45, 0.99, 0.02])
    grad = torch.tensor([2.0, -0.5, 1e-3, -7.0])  # only the signs count
    # x + 0.05·sign = [0.57, 0.40, 1.04, −0.03] → ball ±0.03 → [0.53, 0.47, 1.01 → 1, 0.0]
    assert sign_step(x, grad, 0.05, anchor, 0.03).tolist() == pytest.approx([0.53, 0.47, 1.0, 0.0])
    assert sign_step(x, grad, 0.05).tolist() == pytest.approx([0.57, 0.40, 1.0, 0.0])


def test_pgd_hand_values_and_the_start_is_not_projected():
    x = torch.full((2, 1, 2, 2), 0.5)
    up = pgd(_Sum(), lambda logits: logits[:, 0].sum(), x, x, eps=0.1, alpha=0.03, steps=5)
    assert torch.allclose(up, torch.full_like(x, 0.6))  # 5 × 0.03 = 0.15, projected to ε = 0.1
    free = pgd(_Sum(), lambda logits: logits[:, 0].sum(), x, x, eps=None, alpha=0.2, steps=5)
    assert torch.equal(free, torch.ones_like(x))  # no ball: the pixel range only
    # zero steps return the start as given, outside the ball too (RSLAD's x + 0.001·N is not projected)
    far = x + 0.3
    assert torch.equal(pgd(_Sum(), lambda logits: logits[:, 0].sum(), x, far, 0.1, 0.03, 0), far)


def test_the_step_leaves_no_parameter_gradient_and_works_under_no_grad():
    model = nn.Linear(3, 2)
    x = torch.rand(4, 3)
    with torch.no_grad():
        out = pgd(model, ce_sum(torch.tensor([0, 1, 0, 1])), x, x, 0.1, 0.05, 2)
    assert (out - x).abs().max() <= 0.1 + 1e-7
    assert all(p.grad is None for p in model.parameters())


def test_objectives_hand_values():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    # CE summed: −log(1/4) for label 0 of row 0, −log(1/2) for row 1
    assert ce_sum(torch.tensor([0, 1]))(logits).item() == pytest.approx(math.log(4) + math.log(2))
    # KL(t ‖ softmax): t = [1/2, 1/2] against [1/4, 3/4], and t = softmax against itself (0)
    t = torch.log_softmax(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), dim=1)
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_sum(t)(logits).item() == pytest.approx(kl)


def test_input_grad_hand_value():
    x = torch.tensor([1.0, -2.0, 3.0])
    assert input_grad(lambda z: (z**2).sum(), x).tolist() == pytest.approx([2.0, -4.0, 6.0])
    assert not x.requires_grad


def test_clean_log_probs_is_the_detached_log_softmax():
    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    x = torch.tensor([[math.log(2.0), 0.0]])  # logits [ln 2, 0, 0] → p = [1/2, 1/4, 1/4]
    out = clean_log_probs(model, x)
    assert torch.exp(out).tolist()[0] == pytest.approx([0.5, 0.25, 0.25])
    assert not out.requires_grad


def test_the_sources_starts_hand_values():
    x = torch.full((2, 1, 2, 2), 0.5)
    u = start_uniform(x, 0.1, torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand_as(x))
    assert torch.allclose(u[0], torch.full_like(x[0], 0.4)) and torch.allclose(u[1], torch.full_like(x[1], 0.6))
    assert torch.allclose(start_normal(x, torch.ones_like(x)), x + 0.001)
