"""RSLAD — Robust Soft Label Adversarial Distillation (Zi et al., ICCV 2021), and the student
objective of every ``-RSLAD`` data-free variant (BASELINES.md §B4, §0.3.2).

Sources: arXiv:2108.07969; zibojia/RSLAD (rslad_loss.py, resnet18_rslad_cifar10.py). With the
robust teacher's soft labels t = p_T(x) on the *clean* input (no hard labels anywhere):

    x' = PGD_K on Σ_i KL(t_i ‖ p_S(x'_i)) in B_ε(x), start x + 0.001·N(0, I), S in eval
    L  = (1 − β)·KL(t ‖ p_S(x')) + β·KL(t ‖ p_S(x)),   β = 1/6, τ = 1

Scale: KL_B (Decision, ``baselines.kl_scale=batchmean``) or the repo's KL_E on CIFAR-10 and
10·KL_E on CIFAR-100, i.e. KL_B/10 on both (``source``). The data-driven bound runs it on the
real training split (``method: rslad``); ``-RSLAD`` variants on the detached pseudo batch with
T_rob. The same inner maximisation is DERD's (``derd/student_adversary.py``), which this
reuses: the bound and DERD's switch cannot drift apart.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..derd.student_adversary import student_inner_max
from ..linf import start_normal
from .base import Batch, Context, Method, kl_b, mode

SOURCE_KL_DIVISOR = 10.0  # KL_E on CIFAR-10 = KL_B/10; the CIFAR-100 script's 10·KL_E = KL_B/10 too


def rslad_loss(
    target_logits: torch.Tensor,
    student_logits_adv: torch.Tensor,
    student_logits_clean: torch.Tensor,
    clean_weight: float,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(1 − β)·τ²KL_B(t ‖ S(x')) + β·τ²KL_B(t ‖ S(x)) (τ = 1 in RSLAD; DFARD-recon's ITA slot sets τ)."""
    adv = kl_b(target_logits, student_logits_adv, temperature)
    clean = kl_b(target_logits, student_logits_clean, temperature)
    return (1 - clean_weight) * adv + clean_weight * clean


def rslad_objective(
    ctx: Context, x: torch.Tensor, teacher: nn.Module, temperature: float = 1.0, clean_weight: Optional[float] = None
) -> tuple[torch.Tensor, dict]:
    """RSLAD on inputs ``x`` with ``teacher``'s soft labels (the student's inner max included)."""
    with torch.no_grad():
        t_logits = teacher(x).float()
    with mode(ctx.plain_student, False):
        x_adv = student_inner_max(
            ctx.plain_student,
            torch.log_softmax(t_logits, dim=1),
            x,
            ctx.eps,
            ctx.alpha,
            ctx.settings.attack_steps,
            start=start_normal(x, ctx.noise(tuple(x.shape))),
        )
    s_adv = ctx.student(x_adv)  # adversarial first, then clean: BN running statistics see them in this order
    s_clean = ctx.student(x)
    beta = ctx.settings.rslad_clean_weight if clean_weight is None else clean_weight
    loss = ctx.kl_scale(SOURCE_KL_DIVISOR) * rslad_loss(t_logits, s_adv, s_clean, beta, temperature)
    return loss, {"l_s": loss.detach(), "student_agree": (s_adv.argmax(1) == t_logits.argmax(1)).float().mean()}


def kd_or_rslad_student(ctx: Context, x: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The student objective of a clean-KD baseline's two variants (BASELINES.md §0.3): ``-KD``
    distils T_nat's soft labels at ``temperature`` (KL, batch mean), ``-RSLAD`` runs RSLAD with T_rob."""
    if ctx.settings.variant == "rslad":
        return rslad_objective(ctx, x, ctx.robust_teacher)
    with torch.no_grad():
        t_logits = ctx.natural_teacher(x).float()
    loss = kl_b(t_logits, ctx.student(x), temperature)
    return loss, {"l_s": loss.detach()}


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    return rslad_objective(ctx, batch.x, ctx.robust_teacher)


METHOD = Method(name="rslad", data="real", student_objective=_student)
