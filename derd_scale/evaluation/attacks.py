"""White-box L∞ attacks in [0, 1] pixel space (normalisation lives inside the model).

All functions take a model in eval mode, images x ∈ [0, 1] and labels y, and return
x_adv with ‖x_adv − x‖∞ ≤ ε and x_adv ∈ [0, 1]. Gradients are taken w.r.t. the input only
(``torch.autograd.grad``), so no parameter gradient is ever accumulated. Random starts
draw from an explicit ``torch.Generator`` so results are deterministic under a seed.

- FGSM:  x' = clip(x + ε · sign ∇_x CE(f(x), y))                       (one step, no start)
- PGD_S: Madry et al.: x⁰ = x + U(−ε, ε);  x^{t+1} = Π_ε(x^t + α · sign ∇ CE(f(x^t), y))
- PGD_T: TRADES-style: x⁰ = x + 0.001·N(0, 1); ascend KL(f(x) ‖ f(x^t)) — the clean
         prediction is the reference distribution
- CW:    PGD on the CW margin loss  max(Z_y − max_{j≠y} Z_j, −κ)  (descended), any #classes

AutoAttack proper (``aa``) is ``autoattack.autoattack_standard``; ``autoattack_fast`` here is
torchattacks' 10-iteration default (``aa_fast``), which is not the standard AutoAttack.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def _input_grad(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(x), x)
    return grad


def fgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    grad = _input_grad(lambda z: F.cross_entropy(model(z), y, reduction="sum"), x)
    return _project(x + eps * grad.sign(), x, eps)


def _pgd(loss_fn, x: torch.Tensor, eps: float, alpha: float, steps: int, x0: torch.Tensor) -> torch.Tensor:
    x_adv = _project(x0, x, eps)
    for _ in range(steps):
        grad = _input_grad(loss_fn, x_adv)
        x_adv = _project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()


def pgd_s(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Madry PGD on cross-entropy with a uniform random start in the ε-ball."""
    x0 = x
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x0 = x + (2 * noise - 1) * eps
    return _pgd(lambda z: F.cross_entropy(model(z), y, reduction="sum"), x, eps, alpha, steps, x0)


def pgd_t(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """TRADES-style PGD: start at x + 0.001·N(0,1), ascend KL(f(x) ‖ f(x'))."""
    with torch.no_grad():
        clean_log_p = F.log_softmax(model(x), dim=1)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    x0 = x + 0.001 * noise

    def loss(z: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(model(z), dim=1), clean_log_p, reduction="sum", log_target=True)

    return _pgd(loss, x, eps, alpha, steps, x0)


def cw_margin(logits: torch.Tensor, y: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """Per-example CW margin max(Z_y − max_{j≠y} Z_j, −κ); negative = misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return torch.clamp(true - other, min=-kappa)


def cw_pgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    kappa: float = 0.0,
    random_start: bool = True,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """L∞ PGD minimising the CW margin (i.e. ascending its negative)."""
    x0 = x
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x0 = x + (2 * noise - 1) * eps
    return _pgd(lambda z: -cw_margin(model(z), y, kappa).sum(), x, eps, alpha, steps, x0)


def autoattack_fast(model, x: torch.Tensor, y: torch.Tensor, eps: float, n_classes: int, seed: int = 0) -> torch.Tensor:
    """``aa_fast``: ``torchattacks.AutoAttack(version="standard")`` as torchattacks builds it — NOT AutoAttack.

    torchattacks 3.5.1 gives APGD-CE, APGD-T and FAB-T its default 10 iterations (the
    reference runs 100), n_classes − 1 target classes (reference: 9) and Square's rescaled
    schedule. A cheap screen, ~10× faster; report it as ``aa_fast``, never as AA. The
    standard version is ``autoattack.autoattack_standard``.
    """
    import torchattacks

    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=seed)
    return attack(x, y).detach()


def square(model, x: torch.Tensor, y: torch.Tensor, eps: float, n_queries: int = 5000, seed: int = 0) -> torch.Tensor:
    """Query-based black-box Square attack (Andriushchenko et al.) through torchattacks."""
    import torchattacks

    attack = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=n_queries, n_restarts=1, seed=seed)
    return attack(x, y).detach()
