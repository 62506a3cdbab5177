"""L∞ projected sign-gradient ascent: the one home of Π_ε and PGD in derd_scale.

Every input-space ascent in the project is this step, with its own objective and start:

    x^{k+1} = Π_ε(x^k + α · sign ∇_x objective(f(x^k)))        Π_ε: into {‖x − anchor‖∞ ≤ ε} ∩ [0, 1]

- the evaluator's FGSM / PGD_S / PGD_T / CW (``evaluation/attacks.py``: CE, KL to the clean
  prediction, the CW margin);
- DERD's self-adversary, Eqs. 13–16 (``derd/self_adversary.py``: the teachers' discrepancy, ε
  optional — the paper only clips to [0, 1]);
- the student's inner maximisation of robust distillation (``derd/student_adversary.py``:
  KL(t ‖ S(x')), RSLAD / TRADES) and every baseline's attack (``methods/``: CE or KL).

Objectives are sums over the batch (``ce_sum``, ``kl_sum``), so sign(∇) is per example and
independent of the batch size. Only the input gets a gradient (``torch.autograd.grad``); no
parameter gradient is accumulated, whatever mode the caller put the model in. Pure functions:
no device, process or randomness knowledge (starts are drawn by the caller).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def project(x: torch.Tensor, anchor: torch.Tensor, eps: Optional[float]) -> torch.Tensor:
    """Π_ε(x): into the L∞ ball of radius ε around ``anchor`` (skipped when eps is None), then [0, 1]."""
    if eps is not None:
        x = torch.min(torch.max(x, anchor - eps), anchor + eps)
    return x.clamp(0.0, 1.0)


def sign_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    alpha: float,
    anchor: Optional[torch.Tensor] = None,
    eps: Optional[float] = None,
) -> torch.Tensor:
    """One ascent step Π_ε(x + α·sign(grad)) (only [0, 1] when eps is None)."""
    return project(x + alpha * grad.sign(), anchor, eps)


def start_normal(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`N` (BASELINES.md §0.1): x + 0.001·N(0, I) from N(0, 1) draws, not projected before the first step."""
    return x + 0.001 * noise


def start_uniform(x: torch.Tensor, eps: float, uniform: torch.Tensor) -> torch.Tensor:
    """`U` (BASELINES.md §0.1, Madry): Π_ε(x + U(−ε, ε)) from U[0, 1) draws."""
    return project(x + (2 * uniform - 1) * eps, x, eps)


def input_grad(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """∇_x loss(x) at a detached copy of x (grad mode forced on: attacks run inside no_grad evaluation)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss(x), x)
    return grad


def pgd(
    model: nn.Module,
    objective: Callable[[torch.Tensor], torch.Tensor],
    anchor: torch.Tensor,
    start: torch.Tensor,
    eps: Optional[float],
    alpha: float,
    steps: int,
) -> torch.Tensor:
    """K steps x^{k+1} = Π_ε(x^k + α·sign ∇_x objective(model(x^k))) from ``start``; detached.

    ``objective`` maps the model's logits (cast to fp32) to a scalar summed over the batch. The
    start is used as given — the sources differ on projecting it (RSLAD's and TRADES's x + 0.001·N
    is not projected before the first step; Madry's uniform start is), so the caller decides. The
    caller also sets the model's mode (RSLAD: the student in eval mode)."""
    x = start.detach()
    for _ in range(steps):
        grad = input_grad(lambda z: objective(model(z).float()), x)
        x = sign_step(x.detach(), grad, alpha, anchor, eps)
    return x.detach()


def ce_sum(labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """PGD objective Σ_i CE(logits_i, y_i) (Madry's PGD, SAT/ARD/IAD/MTARD; sign(∇) = the mean's)."""
    return lambda logits: F.cross_entropy(logits, labels, reduction="sum")


def clean_log_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """log p_f(x) without gradient: the reference KL ascents move away from when the target is the
    model's own clean prediction (TRADES's inner maximisation, PGD_T, ``stage2.adv.objective=self``)."""
    with torch.no_grad():
        return F.log_softmax(model(x).float(), dim=1)


def kl_sum(target_log_probs: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """PGD objective Σ_i KL(t_i ‖ softmax(logits_i)) from log t (RSLAD; TRADES and PGD_T with t = p_f(x))."""
    return lambda logits: F.kl_div(
        F.log_softmax(logits, dim=1), target_log_probs.float(), reduction="sum", log_target=True
    )
