"""The attacked copy: BatchNorm folded, channels-last, frozen — the same network up to fp32 rounding."""

import torch
import torch.nn as nn

from derd_scale.evaluation import Protocol, evaluate
from derd_scale.evaluation.inference import ChannelsLast, fold_batchnorm, optimized_copy


def _bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )
    # Non-trivial running statistics, so a wrong fold could not pass by the identity map.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


def test_the_copy_computes_the_same_function_and_input_gradient_without_batchnorm():
    net = _bn_cnn().train()
    x = torch.rand(6, 3, 8, 8, requires_grad=True)
    copy = optimized_copy(net)
    assert net.training and all(p.requires_grad for p in net.parameters())  # the caller's model untouched
    assert isinstance(copy, ChannelsLast) and not copy.training
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in copy.modules())
    assert not any(p.requires_grad for p in copy.parameters())
    net.eval()
    torch.testing.assert_close(copy(x), net(x), rtol=1e-5, atol=1e-5)
    (g_net,) = torch.autograd.grad(net(x).logsumexp(1).sum(), x)
    (g_copy,) = torch.autograd.grad(copy(x).logsumexp(1).sum(), x)
    torch.testing.assert_close(g_copy, g_net, rtol=1e-4, atol=1e-5)


def test_a_model_that_does_not_trace_keeps_its_batchnorm_and_still_evaluates():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _bn_cnn()

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.net(x)
            return -self.net(x)

    model = Branchy().eval()
    assert fold_batchnorm(model) is model
    copy = optimized_copy(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(copy(x), model(x))


def test_a_model_without_parameters_or_batchnorm_is_left_unfolded():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 10)).eval()
    assert fold_batchnorm(linear) is linear
    assert optimized_copy(nn.Identity()) is not None  # no parameters: the model itself
    assert not isinstance(optimized_copy(linear), ChannelsLast)  # no 2-D convolution


def test_evaluate_gives_the_same_per_example_results_on_the_copy():
    net = _bn_cnn().eval()
    data = [(torch.rand(3, 8, 8), int(i % 10)) for i in range(40)]
    protocol = Protocol(name="t", eps=0.1, alpha=0.025, steps=5, batch_size=16)
    fast = evaluate(net, data, ["fgsm", "pgd_s"], protocol, progress=False, optimized=True)
    plain = evaluate(net, data, ["fgsm", "pgd_s"], protocol, progress=False, optimized=False)
    assert torch.equal(fast.correct, plain.correct)
    assert all(p.requires_grad for p in net.parameters())
