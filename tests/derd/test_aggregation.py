"""GA (Eqs. 18–21) in its three cases, the SGA term (Eqs. 22–26) and the deterministic r."""

import math

import pytest
import torch

from derd_scale.derd.aggregation import (
    aggregate_gradients,
    balance_scales,
    ga_coefficients,
    hash32,
    sga_gradient,
    sga_noise,
    sga_tau,
)


def _agg(g1, g2, **kw):
    out, stats = aggregate_gradients([torch.tensor(g1)], [torch.tensor(g2)], **kw)
    return out[0].tolist(), stats


def test_ga_acute_keeps_the_sum():
    g, s = _agg([1.0, 0.0], [1.0, 1.0], method="ga")
    assert g == [2.0, 1.0] and s.tau1 == 1.0 and s.tau2 == 1.0
    assert s.cos == pytest.approx(1 / math.sqrt(2))


def test_ga_obtuse_rescales_both():
    # g1·g2 = −1, ‖g1‖² = 1, ‖g2‖² = 2 → τ1 = 2, τ2 = 1.5 → g = [2, 0] + [−1.5, 1.5]
    g, s = _agg([1.0, 0.0], [-1.0, 1.0], method="ga")
    assert s.tau1 == pytest.approx(2.0) and s.tau2 == pytest.approx(1.5)
    assert g == pytest.approx([0.5, 1.5])
    assert s.dot == pytest.approx(-1.0) and s.norm2 == pytest.approx(math.sqrt(2))


def test_ga_leaves_each_task_the_share_one_minus_cos_squared_of_its_own_progress():
    # Under conflict, g·g1 = ‖g1‖²(1 − cos²) and g·g2 = ‖g2‖²(1 − cos²) (from Eqs. 18–21):
    # the aggregate never increases either loss to first order, but at cos ≈ −0.95 each task
    # gets only ~10 % of the progress it would make alone; scaling g2 (λ_rob) leaves g·g1
    # unchanged (docs/derd.md).
    torch.manual_seed(0)
    base = torch.randn(50)
    g1 = base + 0.3 * torch.randn(50)
    for scale in (1.0, 4.0):
        g2 = -scale * (base + 0.3 * torch.randn(50))
        (g,), s = aggregate_gradients([g1], [g2], "ga")
        assert s.cos < -0.8
        assert float(g @ g1) == pytest.approx(float(g1 @ g1) * (1 - s.cos**2), rel=1e-4)
        assert float(g @ g2) == pytest.approx(float(g2 @ g2) * (1 - s.cos**2), rel=1e-4)
        if scale > 1:  # ‖g2‖·|cos| > ‖g1‖: the plain sum would undo task 1, GA does not
            assert float((g1 + g2) @ g1) < 0 < float(g @ g1)


def test_norm_balance_hand_value_equal_weights():
    # ‖g1‖ = 3, ‖g2‖ = 1 → m = 2, s1 = 2/3, s2 = 2 → g1' = (2, 0), g2' = (−1.2, 1.6);
    # g1'·g2' = −2.4, ‖g1'‖² = ‖g2'‖² = 4 → τ1 = τ2 = 1.6 → g = (3.2 − 1.92, 2.56) = (1.28, 2.56)
    g, s = _agg([3.0, 0.0], [-0.6, 0.8], method="ga", balance="norm")
    assert g == pytest.approx([1.28, 2.56])
    assert s.scale1 == pytest.approx(2 / 3) and s.scale2 == pytest.approx(2.0)
    assert s.tau1 == pytest.approx(1.6) and s.tau2 == pytest.approx(1.6)
    assert s.norm1 == pytest.approx(3.0) and s.norm2 == pytest.approx(1.0)  # the gradients as given
    assert s.dot == pytest.approx(-1.8) and s.cos == pytest.approx(-0.6)
    # each task's first-order progress g·g_i' is now the same: 4 (1 − 0.36) = 2.56; unbalanced GA gives
    # the larger gradient 9× the smaller's (9 · 0.64 against 1 · 0.64)
    out = torch.tensor(g)
    g1b, g2b = s.scale1 * torch.tensor([3.0, 0.0]), s.scale2 * torch.tensor([-0.6, 0.8])
    assert float(out @ g1b) == pytest.approx(2.56) and float(out @ g2b) == pytest.approx(2.56)


def test_norm_balance_follows_the_lambdas():
    # weights (λ_nat, λ_rob) = (1, 2); g2 = ∇(2 L_2) = (−0.6, 0.8), so ‖∇L_2‖ = 0.5 → m = (3 + 0.5)/2 = 1.75,
    # ‖g1'‖ = 1.75, ‖g2'‖ = 3.5: g1' = (1.75, 0), g2' = (−2.1, 2.8); dot −3.675 → τ1 = 2.2, τ2 = 1.3
    # → g = (3.85 − 2.73, 3.64) = (1.12, 3.64)
    g, s = _agg([3.0, 0.0], [-0.6, 0.8], method="ga", balance="norm", weights=(1.0, 2.0))
    assert g == pytest.approx([1.12, 3.64])
    assert s.scale1 == pytest.approx(1.75 / 3) and s.scale2 == pytest.approx(3.5)
    assert s.tau1 == pytest.approx(2.2) and s.tau2 == pytest.approx(1.3)
    g, s = _agg([3.0, 0.0], [-0.6, 0.8], method="sum", balance="norm", weights=(1.0, 2.0))
    assert g == pytest.approx([1.75 - 2.1, 2.8]) and s.tau1 == 1.0  # sum: g1' + g2'
    # per tensor: the same global scales, then τ per tensor on the scaled sums. Hand values: tensor 0
    # is g1' = 1.75, g2' = −2.1 (one-dimensional and opposed: GA keeps ‖g_i‖²(1 − cos²) = 0 of each,
    # the output is 0); tensor 1 is g1' = 0, g2' = 2.8 (no conflict: τ = 1, the output is 2.8). The
    # sums and the combine run in fp32 (as on bf16 shards), so the cancellation leaves fp32 rounding
    # of the operands (|g'| ≤ 2.8, ~4 × 2⁻²³), not a bit-exact 0.
    g1 = [torch.tensor([3.0]), torch.tensor([0.0])]
    g2 = [torch.tensor([-0.6]), torch.tensor([0.8])]
    out, _ = aggregate_gradients(g1, g2, "ga", "per_tensor", balance="norm", weights=(1.0, 2.0))
    assert [t.item() for t in out] == pytest.approx([0.0, 2.8], abs=4 * 4 * 2**-23)


def test_norm_balance_edge_cases():
    s1, s2 = balance_scales(torch.tensor(4.0), torch.tensor(0.0), (2.0, 1.0))
    assert s1.item() == pytest.approx(1.0) and s2.item() == 0.0  # g2 = 0: nothing to balance against, no NaN
    s1, s2 = balance_scales(torch.tensor(0.0), torch.tensor(0.0))
    assert s1.item() == 0.0 and s2.item() == 0.0
    with pytest.raises(ValueError, match="balance weights must be > 0"):
        balance_scales(torch.tensor(1.0), torch.tensor(1.0), (0.0, 1.0))
    with pytest.raises(ValueError, match="balance: 'l2'; allowed: none, norm"):
        _agg([1.0], [1.0], method="ga", balance="l2")


def test_ga_orthogonal_is_not_a_conflict():
    g, s = _agg([1.0, 0.0], [0.0, 1.0], method="ga")
    assert g == [1.0, 1.0] and s.tau1 == 1.0 and s.tau2 == 1.0 and s.cos == 0.0


def test_sum_method_ignores_conflict():
    g, s = _agg([1.0, 0.0], [-1.0, 1.0], method="sum")
    assert g == [0.0, 1.0] and s.tau1 == 1.0


def test_global_vs_per_tensor():
    g1 = [torch.tensor([1.0]), torch.tensor([1.0])]
    g2 = [torch.tensor([-1.0]), torch.tensor([3.0])]
    # global: dot = −1 + 3 = 2 > 0 → plain sum
    out, _ = aggregate_gradients(g1, g2, "ga", "global")
    assert [t.item() for t in out] == [0.0, 4.0]
    # per tensor: first tensor conflicts (dot −1, both norms² 1 → τ = 2, 2), second does not
    out, _ = aggregate_gradients(g1, g2, "ga", "per_tensor")
    assert out[0].item() == pytest.approx(2 * 1.0 + 2 * -1.0) and out[1].item() == pytest.approx(4.0)


def test_all_reduce_hook_sees_one_small_tensor():
    calls = []

    def fake_all_reduce(t):
        calls.append(t.shape)
        return t * 2  # as if a second rank held an identical shard

    aggregate_gradients([torch.ones(3)], [-torch.ones(3)], "ga", all_reduce=fake_all_reduce)
    assert calls == [torch.Size([1, 3])]


def test_ga_coefficients_elementwise():
    t1, t2 = ga_coefficients(torch.tensor([-2.0, 1.0]), torch.tensor([4.0, 1.0]), torch.tensor([1.0, 1.0]))
    assert t1.tolist() == [1.5, 1.0] and t2.tolist() == [3.0, 1.0]


def test_sga_gradient_matches_autograd():
    torch.manual_seed(0)
    params = [torch.randn(3, 2), torch.randn(4)]
    noise = [torch.randn(3, 2) * 0.01, torch.randn(4) * 0.01]
    tau = 1.7
    leaves = [p.clone().requires_grad_(True) for p in params]
    norm = torch.sqrt(sum(((r * p) ** 2).sum() for r, p in zip(noise, leaves)))
    (tau * norm).backward()
    grads, value = sga_gradient(params, noise, tau)
    assert value == pytest.approx(norm.item(), rel=1e-6)
    for g, leaf in zip(grads, leaves):
        assert torch.allclose(g, leaf.grad, rtol=1e-5, atol=1e-9)


def test_sga_tau_modes():
    assert sga_tau(2.0, 1.5, "mean") == 1.75 and sga_tau(2.0, 1.5, "sum") == 3.5 and sga_tau(2.0, 1.5, "one") == 1.0


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def test_hash32_matches_reference_integer_arithmetic():
    xs = [0, 1, 2, 12345, 0xDEADBEEF, 0xFFFFFFFF]
    assert hash32(torch.tensor(xs, dtype=torch.int64)).tolist() == [_lowbias32(x) for x in xs]


def test_sga_noise_is_deterministic_and_shard_consistent():
    full = sga_noise(7, 3, "layer1.weight", torch.arange(10_000), 0.01)
    again = sga_noise(7, 3, "layer1.weight", torch.arange(10_000), 0.01)
    assert torch.equal(full, again)
    # any shard of the indices reproduces the same elements
    shard = sga_noise(7, 3, "layer1.weight", torch.arange(2_500, 5_000), 0.01)
    assert torch.equal(shard, full[2_500:5_000])
    # a different step, name or seed gives a different draw
    assert not torch.equal(full, sga_noise(7, 4, "layer1.weight", torch.arange(10_000), 0.01))
    assert not torch.equal(full, sga_noise(7, 3, "layer2.weight", torch.arange(10_000), 0.01))
    assert not torch.equal(full, sga_noise(8, 3, "layer1.weight", torch.arange(10_000), 0.01))
    # N(0, σ²)
    assert abs(full.mean().item()) < 0.0005 and full.std().item() == pytest.approx(0.01, rel=0.05)


def test_aggregate_is_the_one_home_of_the_method():
    from types import SimpleNamespace

    from derd_scale.derd.aggregation import aggregate

    p = torch.tensor([1.0, -2.0, 0.5])
    views = [SimpleNamespace(name="w", param=p, indices=torch.arange(3))]
    g1, g2 = [torch.tensor([1.0, 0.0, 0.0])], [torch.tensor([-1.0, 1.0, 0.0])]
    summed, s = aggregate(g1, g2, views, "sum")
    assert summed[0].tolist() == [0.0, 1.0, 0.0] and s.sga_norm == 0.0
    ga, s_ga = aggregate(g1, g2, views, "ga")
    assert ga[0].tolist() == pytest.approx([0.5, 1.5, 0.0]) and s_ga.sga_norm == 0.0
    sga, s_sga = aggregate(g1, g2, views, "sga", seed=3, step=7, sigma_r=0.01, lambda_sga=2.0, tau_mode="mean")
    r = sga_noise(3, 7, "w", torch.arange(3), 0.01)
    tau = 0.5 * (2.0 + 1.5)
    extra = 2.0 * tau * r * r * p / (r * p).norm()
    assert torch.allclose(sga[0], ga[0] + extra, atol=1e-7)
    assert s_sga.sga_norm == pytest.approx(extra.norm().item(), rel=1e-5)
    with pytest.raises(ValueError, match="allowed: sum, ga, sga"):
        aggregate(g1, g2, views, "pcgrad")


def test_host_key_hash_equals_the_tensor_hash():
    from derd_scale.derd.aggregation import _hash32_int

    xs = [0, 1, 7, 0x5BD1E995, 0xFFFFFFFF, 123456789, 2**31]
    assert [_hash32_int(x) for x in xs] == hash32(torch.tensor(xs, dtype=torch.int64)).tolist()


def test_sga_noise_many_equals_the_per_tensor_noise_bit_for_bit():
    from derd_scale.derd.aggregation import sga_noise_many

    names = ["conv.weight", "bn.bias", "fc.weight"]
    indices = [torch.arange(0, 300), torch.arange(5, 9), torch.arange(2**33, 2**33 + 50)]  # a shard, a >2³² offset
    many = sga_noise_many(11, 4, names, indices, 0.02)
    for n, i, r in zip(names, indices, many):
        assert torch.equal(r, sga_noise(11, 4, n, i, 0.02))
    assert sga_noise_many(11, 4, [], [], 0.02) == []
