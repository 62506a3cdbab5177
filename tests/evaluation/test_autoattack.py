"""The standard AutoAttack: the reference's budgets, worst case over its four attacks, seeding."""

import pytest
import torch
import torch.nn as nn

from derd_scale.evaluation import attacks as A
from derd_scale.evaluation import evaluate
from derd_scale.evaluation.autoattack import STANDARD, autoattack_standard, build_standard_components
from derd_scale.evaluation.runner import Protocol


class TinyLinear(nn.Module):
    """10-class linear model on 1×8×8 images: exact L∞ robustness is computable."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(64, 10)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(10, 64, generator=g) * 0.3)
            self.fc.bias.copy_(torch.randn(10, generator=g) * 0.1)

    def forward(self, x):
        return self.fc(x.flatten(1))


def exact_robust(model: TinyLinear, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Per example: no point of the ε-ball ∩ [0, 1] box changes the prediction (a linear margin is minimised per coordinate)."""
    W, b = model.fc.weight.detach(), model.fc.bias.detach()
    xf = x.flatten(1)
    lo, hi = (xf - eps).clamp(0, 1), (xf + eps).clamp(0, 1)
    out = []
    for i in range(len(y)):
        w = W[y[i]] - W  # (classes, features): margin of y over every class j
        worst = (torch.where(w > 0, lo[i], hi[i]) * w).sum(1) + b[y[i]] - b
        worst[y[i]] = float("inf")
        out.append(bool((worst > 0).all()))
    return torch.tensor(out)


@pytest.fixture(scope="module")
def tiny():
    model = TinyLinear().eval()
    x = 0.2 + 0.6 * torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two clean mistakes
    return model, x, y


def test_components_have_the_reference_standard_budgets(tiny):
    model = tiny[0]
    parts = build_standard_components(model, 8 / 255, 10, seed=3)
    assert [name for name, _ in parts] == ["apgd-ce", "apgd-t", "fab-t", "square"]  # the reference's order
    apgd, apgdt, fab, square = (attack for _, attack in parts)
    assert (apgd.steps, apgd.n_restarts, apgd.thr_decr, apgd.loss, apgd.eot_iter, apgd.norm) == (
        100,
        1,
        0.75,
        "ce",
        1,
        "Linf",
    )
    assert (apgdt.steps, apgdt.n_restarts, apgdt.n_target_classes, apgdt.thr_decr, apgdt.eot_iter) == (
        100,
        1,
        9,
        0.75,
        1,
    )
    assert (fab.steps, fab.n_restarts, fab.n_target_classes, fab.multi_targeted) == (100, 1, 9, True)
    assert (fab.alpha_max, fab.eta, fab.beta) == (0.1, 1.05, 0.9)
    assert (square.n_queries, square.n_restarts, square.p_init, square.loss, square.rescale_schedule) == (
        5000,
        1,
        0.8,
        "margin",
        False,
    )
    assert all(attack.seed == 3 and attack.eps == 8 / 255 for _, attack in parts)
    # torchattacks would attack n_classes − 1 targets; the reference fixes 9 (fewer only when the model has fewer classes)
    assert build_standard_components(model, 0.03, 100)[1][1].n_target_classes == 9
    assert build_standard_components(model, 0.03, 100)[2][1].n_target_classes == 9
    assert build_standard_components(model, 0.03, 5)[1][1].n_target_classes == 4
    with pytest.raises(ValueError, match="at least 4 classes"):
        build_standard_components(model, 0.03, 3)
    # the runner's torchattacks default really is the cheap one (issue #196)
    import torchattacks

    fast = torchattacks.AutoAttack(
        model, norm="Linf", eps=0.03, version="standard", n_classes=10, seed=0
    )._autoattack.attacks
    assert [a.steps for a in fast[:3]] == [10, 10, 10] and fast[3].rescale_schedule is True
    assert STANDARD.as_dict(10)["apgdt_target_classes"] == 9 and STANDARD.as_dict(10)["square_queries"] == 5000


def test_standard_aa_is_exact_on_a_linear_model_and_deterministic(tiny):
    model, x, y = tiny
    eps = 0.08
    truth = exact_robust(model, x, y, eps) & (model(x).argmax(1) == y)
    assert 0 < int(truth.sum()) < 14  # some robust, some not: the test can fail both ways
    result = autoattack_standard(model, x, y, eps, 10, seed=0)
    assert torch.equal(result.correct, truth)  # sound (never below the truth) and complete here
    assert result.fooled_by[:2] == ["clean", "clean"]
    fooled = ~result.correct & (model(x).argmax(1) == y)
    assert bool((model(result.x_adv[fooled]).argmax(1) != y[fooled]).all())
    assert (result.x_adv - x).abs().max() <= eps + 1e-5 and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    state = torch.get_rng_state()
    again = autoattack_standard(model, x, y, eps, 10, seed=0)
    assert torch.equal(again.x_adv, result.x_adv) and again.fooled_by == result.fooled_by
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is untouched


def test_standard_aa_below_aa_fast_below_pgd_below_clean(tiny):
    model, x, y = tiny
    data = list(zip(x, y.tolist()))
    report = evaluate(model, data, ["pgd_s", "aa_fast", "aa"], Protocol("t", 0.08, 0.02, 5, 16), progress=False)
    acc = report.accuracy
    assert acc("aa") <= acc("aa_fast") <= acc("pgd_s") <= acc("clean")
    c = {a: report.correct[:, report.attacks.index(a)] for a in report.attacks}
    assert bool((c["aa"] <= c["pgd_s"]).all()) and bool((c["pgd_s"] <= c["clean"]).all())
    assert (
        report.results["aa"]["autoattack"]["apgd_steps"] == 100
        and report.results["aa_fast"]["autoattack"]["apgd_steps"] == 10
    )
    md = report.markdown()
    header = next(line for line in md.splitlines() if line.startswith("| |"))
    assert "| aa_fast |" in header and header.count("AA") == 1  # aa_fast is never called AA
    assert "not AutoAttack" in md


def test_aa_fast_is_the_old_torchattacks_call(tiny):
    model, x, y = tiny
    a = A.autoattack_fast(model, x, y, 0.08, 10, seed=0)
    b = A.autoattack_fast(model, x, y, 0.08, 10, seed=0)
    assert torch.equal(a, b) and (a - x).abs().max() <= 0.08 + 1e-6
