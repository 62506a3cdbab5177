"""White-box L∞ attacks in [0, 1] pixel space (normalisation lives inside the model).

All functions take a model in eval mode, images x ∈ [0, 1] and labels y, and return
x_adv with ‖x_adv − x‖∞ ≤ ε and x_adv ∈ [0, 1]. Gradients are taken w.r.t. the input only
(``torch.autograd.grad``), so no parameter gradient is ever accumulated; the step itself is
``derd_scale.linf``'s, shared with training's attacks. Random starts
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

from typing import Optional

import torch
import torch.nn.functional as F

from ..linf import ce_sum, clean_log_probs, input_grad, kl_sum, pgd, project, sign_step, start_normal, start_uniform


def fgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    grad = input_grad(lambda z: ce_sum(y)(model(z)), x)
    return sign_step(x, grad, eps, x, eps)


def _pgd(model, objective, x: torch.Tensor, eps: float, alpha: float, steps: int, x0: torch.Tensor) -> torch.Tensor:
    """The evaluator's PGD: its starts are projected into the ball first (Madry)."""
    return pgd(model, objective, x, project(x0, x, eps), eps, alpha, steps)


def _uniform_start(
    x: torch.Tensor, eps: float, random_start: bool, generator: Optional[torch.Generator]
) -> torch.Tensor:
    """Madry's start (``linf.start_uniform``) from U[0, 1) drawn by ``generator`` on the CPU (device-independent), or x itself."""
    if not (random_start and eps > 0):
        return x
    return start_uniform(x, eps, torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device))


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
    x0 = _uniform_start(x, eps, random_start, generator)
    return _pgd(model, ce_sum(y), x, eps, alpha, steps, x0)


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
    clean_log_p = clean_log_probs(model, x)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return _pgd(model, kl_sum(clean_log_p), x, eps, alpha, steps, start_normal(x, noise))


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
    x0 = _uniform_start(x, eps, random_start, generator)
    return _pgd(model, lambda logits: -cw_margin(logits, y, kappa).sum(), x, eps, alpha, steps, x0)


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
