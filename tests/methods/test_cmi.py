"""CMI's pieces against hand-computed values (derd_scale/methods/cmi.py; docs/baselines.md).

.venv/bin/python -m pytest tests/methods/test_cmi.py -q
"""

import math

import pytest
import torch
import torch.nn as nn

from derd_scale.methods import cmi
from derd_scale.methods.augment import resized_crop_flip

L3 = math.log(3.0)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_agreement_adv_counts_only_the_images_where_student_and_teacher_agree():
    student = t([0, L3], [0, L3])  # p_S = [.25, .75] twice, argmax 1
    teacher = t([0, 2 * math.log(3.0)], [1, 0])  # p_T = [.1, .9] (agrees), then argmax 0 (disagrees)
    kl = 0.1 * math.log(0.1 / 0.25) + 0.9 * math.log(0.9 / 0.75)
    assert cmi.agreement_adv(student, teacher).item() == pytest.approx(-kl / 2, rel=1e-5)


def test_contrastive_loss_current_and_bank_rows_are_averaged_apart():
    eye = torch.eye(2)
    one_row = math.log(1 + math.exp(-1))  # −log(e / (e + 1)) at τ = 1
    assert cmi.contrastive_loss(eye, eye, 2, 1.0).item() == pytest.approx(one_row, rel=1e-6)
    # One current row and one bank row: the two means add up.
    assert cmi.contrastive_loss(eye, eye, 1, 1.0).item() == pytest.approx(2 * one_row, rel=1e-6)
    # τ = 0.5 doubles the logits: −log(e² / (e² + 1)).
    assert cmi.contrastive_loss(eye, eye, 2, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    anchors, keys = eye.clone().requires_grad_(True), eye.clone().requires_grad_(True)
    cmi.contrastive_loss(anchors, keys, 2, 1.0).backward()
    assert anchors.grad is not None and keys.grad is None  # keys are detached, as in the source


def test_mlp_head_by_hand():
    params = [torch.eye(2), torch.zeros(2), t([1, 0], [1, 1]), torch.zeros(2)]
    out = cmi.mlp_head(params, t([2, -1]))  # relu([2, −1]) = [2, 0] → [2, 2] → unit length
    assert torch.allclose(out, t([1 / math.sqrt(2), 1 / math.sqrt(2)]))


def test_init_head_has_linear_default_bounds_and_shapes():
    u = torch.rand(cmi.head_parameter_count(4, 3), generator=torch.Generator().manual_seed(0))
    w1, b1, w2, b2 = cmi.init_head(4, 3, u)
    assert [tuple(p.shape) for p in (w1, b1, w2, b2)] == [(4, 4), (4,), (3, 4), (3,)]
    assert all(p.abs().max() <= 0.5 for p in (w1, b1, w2, b2))  # 1/√fan_in = 1/2
    assert torch.equal(w1.flatten(), (2 * u[:16] - 1) * 0.5)


def test_adam_step_matches_torch_adam():
    g = torch.Generator().manual_seed(1)
    p0 = [torch.randn(3, 2, generator=g), torch.randn(2, generator=g)]
    grads = [[torch.randn(3, 2, generator=g), torch.randn(2, generator=g)] for _ in range(3)]
    ref = [p.clone().requires_grad_(True) for p in p0]
    opt = torch.optim.Adam(ref, lr=0.01)
    ours, state = [p.clone() for p in p0], {}
    for gs in grads:
        for p, gr in zip(ref, gs):
            p.grad = gr.clone()
        opt.step()
        old, snapshot = ours, [p.clone() for p in ours]
        ours = cmi.adam_step(old, gs, state, 0.01)
        assert all(torch.equal(a, b) for a, b in zip(old, snapshot))  # new tensors; the inputs stay as they were
    assert state["t"] == 3
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b.detach(), atol=1e-7)


def test_bank_ring_buffer_and_sampling_without_replacement():
    bank = torch.zeros(4, 1)
    new, ptr = cmi.bank_add(bank, 3, t([1], [2]))
    assert new.flatten().tolist() == [2, 0, 0, 1] and ptr == 1
    assert bank.abs().sum() == 0  # a new tensor: the old one may sit in an autograd graph
    picked = cmi.bank_sample(t([10], [20], [30], [40]), 3, 2, torch.tensor([0.5, 0.1, 0.9]))
    assert picked.flatten().tolist() == [20, 10]  # the two smallest draws, among the 3 filled rows
    assert cmi.bank_sample(bank, 0, 2, torch.tensor([0.3])).shape == (0, 1)
    assert cmi.bank_sample(t([10], [20]), 2, 5, torch.tensor([0.9, 0.1])).flatten().tolist() == [20, 10]


def test_resized_crop_identity_flip_and_a_quarter_crop():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    whole = torch.tensor([[1.0, 0.5, 0.3, 0.7, 0.0]])  # area 1, aspect 1 (u = 0.5), no flip
    assert torch.allclose(resized_crop_flip(x, whole), x, atol=1e-5)
    flipped = whole.clone()
    flipped[0, 4] = 1.0
    assert torch.allclose(resized_crop_flip(x, flipped), x.flip(-1), atol=1e-5)
    # Area 1/4 (u₀ = 0 with scale [0.25, 1]), aspect 1, top-left: the 2×2 corner upsampled ×2. On the
    # column ramp, bilinear sampling at input columns −0.25, 0.25, 0.75, 1.25 (border-clamped at 0).
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    corner = resized_crop_flip(ramp, torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.0]]))
    assert torch.allclose(corner[0, 0, 0], t(0.0, 0.25, 0.75, 1.25), atol=1e-5)
    x.requires_grad_(True)
    resized_crop_flip(x, whole).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # differentiable: G learns through the view


def test_instance_means_are_per_sample_channel_means_of_layer_inputs():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 1, 1, bias=False), nn.BatchNorm2d(1)).eval()
    nn.init.constant_(model[1].weight, 1.0)
    x = torch.ones(2, 2, 2, 2)
    x[0, 0] = t([1, 2], [3, 4])  # channel mean 2.5
    with cmi.instance_means(model, []) as feats:
        model(x)
    # The first BN's input: x's channel means. The second BN's input: the conv's sum over the first
    # BN's outputs, x / √(1 + 1e-5) in eval with the fresh running statistics (mean 0, var 1).
    scale = 1 / math.sqrt(1 + 1e-5)
    assert len(feats) == 1 and feats[0].shape == (2, 3)
    assert torch.allclose(feats[0], t([2.5, 1.0, 3.5 * scale], [1.0, 1.0, 2.0 * scale]))
    with cmi.instance_means(model, ["1"]) as feats:  # a named layer: the conv's input
        model(x)
    assert torch.allclose(feats[0], t([2.5 * scale, scale], [scale, scale]))
    with pytest.raises(ValueError, match="baselines.cmi.feature_layers: .* has no module 'nope'"):
        with cmi.instance_means(model, ["nope"]):
            pass
