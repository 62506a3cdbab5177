"""TRADES (Zhang et al., ICML 2019; BASELINES.md §B2).

Sources: arXiv:1901.08573; yaodongyu/TRADES (trades.py, train_trades_cifar10.py). On the real
training split, with p_S(x) the student's clean prediction:

    x' = PGD_K on Σ_i KL(p_S(x_i) ‖ p_S(x'_i)) in B_ε(x), start x + 0.001·N(0, I), S in eval
         (p_S(x) recomputed, not differentiated w.r.t. x')
    L  = CE(S(x), y) + β·KL_B(p_S(x) ‖ p_S(x'))     (S in train; gradient through both terms)

β = 6 (CIFAR-10). The repo's KL is KL_B (sum ÷ B), so ``kl_scale`` changes nothing here.
The repo's step 0.007 at ε = 0.031 is ε/4.4; we take ε/4 (the project protocol, §B2's Decision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..derd.losses import kl_per_sample
from ..linf import clean_log_probs, kl_sum, pgd, start_normal
from .base import Batch, Context, Method, mode


def trades_loss(
    clean_logits: torch.Tensor, adv_logits: torch.Tensor, labels: torch.Tensor, beta: float
) -> torch.Tensor:
    """CE(S(x), y) + β·KL_B(p_S(x) ‖ p_S(x')), differentiable in both logits."""
    return F.cross_entropy(clean_logits.float(), labels) + beta * kl_per_sample(clean_logits, adv_logits).mean()


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    x = batch.x
    with mode(ctx.plain_student, False):
        log_p_clean = clean_log_probs(ctx.plain_student, x)
        start = start_normal(x, ctx.noise(tuple(x.shape)))
        x_adv = pgd(ctx.plain_student, kl_sum(log_p_clean), x, start, ctx.eps, ctx.alpha, ctx.settings.attack_steps)
    clean = ctx.student(x)
    adv = ctx.student(x_adv)
    loss = trades_loss(clean, adv, batch.y, ctx.settings.trades.beta)
    return loss, {"l_s": loss.detach()}


METHOD = Method(name="trades", data="real", student_objective=_student)
