"""ARD — Adversarially Robust Distillation (Goldblum et al., AAAI 2020; BASELINES.md §B3).

Sources: arXiv:1905.09747; goldblum/AdversariallyRobustDistillation (main.py). On the real
training split, teacher T_rob seeing the *clean* x, the student attacked with the true labels:

    x' = PGD_K on Σ_i CE(S(x'_i), y_i) in B_ε(x), start U, S in train mode
    L  = α·τ²·KL(p_T^τ(x) ‖ p_S^τ(x')) + (1 − α)·CE(S(x), y),    α = 1, τ = 30

The repo's KL is τ²·KL_E (÷K; ``kl_scale=source``); the Decision default is τ²·KL_B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, Context, Method, kl_b
from .sat import pgd_ce


def ard_loss(
    teacher_clean_logits: torch.Tensor,
    student_adv_logits: torch.Tensor,
    student_clean_logits,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    kl_scale: float = 1.0,
) -> torch.Tensor:
    """α·scale·τ²KL_B(p_T^τ(x) ‖ p_S^τ(x')) + (1 − α)·CE(S(x), y) (the CE term only when α < 1)."""
    loss = alpha * kl_scale * kl_b(teacher_clean_logits, student_adv_logits, temperature)
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_clean_logits.float(), labels)
    return loss


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    s = ctx.settings.ard
    x_adv = pgd_ce(ctx, batch.x, batch.y, source_mode_train=True)
    with torch.no_grad():
        t_logits = ctx.robust_teacher(batch.x).float()
    s_adv = ctx.student(x_adv)
    s_clean = ctx.student(batch.x) if s.alpha < 1 else None
    loss = ard_loss(t_logits, s_adv, s_clean, batch.y, s.alpha, s.temperature, ctx.kl_scale(ctx.num_classes))
    return loss, {"l_s": loss.detach()}


METHOD = Method(name="ard", data="real", student_objective=_student)
