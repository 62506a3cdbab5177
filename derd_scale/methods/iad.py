"""IAD — Introspective Adversarial Distillation (Zhu et al., ICLR 2022; BASELINES.md §B5).

Sources: arXiv:2106.04928; ZFancy/IAD (IAD-I.py, IAD-II.py). The student trusts the teacher per
sample as much as the teacher is right on the student's adversarial example, and otherwise
falls back on its own clean prediction. On the real training split, x̃ = the student's PGD-CE
example (start U, S in train mode), per sample (no gradient):

    α_i = p_Trob(x̃_i)_{y_i} ^ β,    β = 0.1

IAD-I (ARD-based, T_rob sees the clean x), after the warm-up:

    L = a·τ²KL_B(p_T^τ(x) ‖ p_S^τ(x̃)) + a·mean_i (1 − α_i)·KL(p_S(x_i) ‖ p_S(x̃_i)) + (1 − a)·CE(S(x), y)

IAD-II (AKD2-based, both teachers, on x̃), after the warm-up:

    L = (1 − a₁ − a₂)·CE(S(x̃), y)
        + a₁·τ²·[ mean_i α_i·KL(p_Trob^τ(x̃_i) ‖ p_S^τ(x̃_i)) + mean_i (1 − α_i)·KL(p_S(x_i) ‖ p_S(x̃_i)) ]
        + a₂·τ²·KL_B(p_Tnat^τ(x̃) ‖ p_S^τ(x̃))

During the warm-up (the source's E_warm of 200 epochs: I 60, II 40 → 0.3, 0.2 of the steps)
α_i = 1, i.e. plain ARD / AKD2. As in the code, the self-target p_S(x) is not detached and in
IAD-I the teacher term is not weighted by α_i. The repo's KL is τ²·KL_B (no scale change).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..derd.losses import kl_per_sample
from .base import Batch, Context, Method
from .sat import pgd_ce

SOURCE_WARMUP = {"I": 60 / 200, "II": 40 / 200}


def trust_weights(robust_teacher_adv_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """α_i = p_Trob(x̃_i)_{y_i} ^ β, detached."""
    p = torch.softmax(robust_teacher_adv_logits.detach().float(), dim=1)
    return p.gather(1, labels[:, None]).squeeze(1).pow(beta)


def iad1_loss(t_clean, s_adv, s_clean, labels, trust, a: float, tau: float) -> torch.Tensor:
    """IAD-I; ``trust`` = None during the warm-up (no introspection term)."""
    loss = a * tau * tau * kl_per_sample(t_clean.detach(), s_adv, tau).mean()
    if trust is not None:
        loss = loss + a * ((1 - trust) * kl_per_sample(s_clean, s_adv)).mean()
    if a < 1:
        loss = loss + (1 - a) * F.cross_entropy(s_clean.float(), labels)
    return loss


def iad2_loss(t_rob_adv, t_nat_adv, s_adv, s_clean, labels, trust, a1: float, a2: float, tau: float) -> torch.Tensor:
    """IAD-II; ``trust`` = None during the warm-up (α_i = 1: AKD2)."""
    rob = kl_per_sample(t_rob_adv.detach(), s_adv, tau)
    if trust is None:
        teacher = rob.mean()
    else:
        teacher = (trust * rob).mean() + ((1 - trust) * kl_per_sample(s_clean, s_adv)).mean()
    nat = kl_per_sample(t_nat_adv.detach(), s_adv, tau).mean()
    loss = a1 * tau * tau * teacher + a2 * tau * tau * nat
    if a1 + a2 < 1:
        loss = loss + (1 - a1 - a2) * F.cross_entropy(s_adv.float(), labels)
    return loss


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    s = ctx.settings.iad
    warm = s.warmup if s.warmup is not None else SOURCE_WARMUP[s.variant]
    introspect = ctx.progress >= warm
    x, y = batch.x, batch.y
    x_adv = pgd_ce(ctx, x, y, source_mode_train=True)
    with torch.no_grad():
        t_rob_adv = ctx.robust_teacher(x_adv).float()
        t_nat_adv = ctx.natural_teacher(x_adv).float() if s.variant == "II" else None
        t_clean = ctx.robust_teacher(x).float() if s.variant == "I" else None
    trust = trust_weights(t_rob_adv, y, s.beta) if introspect else None
    s_adv = ctx.student(x_adv)
    need_clean = introspect or (s.variant == "I" and s.a < 1)
    s_clean = ctx.student(x) if need_clean else None
    if s.variant == "I":
        loss = iad1_loss(t_clean, s_adv, s_clean, y, trust, s.a, s.temperature)
    else:
        loss = iad2_loss(t_rob_adv, t_nat_adv, s_adv, s_clean, y, trust, s.a1, s.a2, s.temperature)
    parts = {"l_s": loss.detach()}
    if trust is not None:
        parts["trust_mean"] = trust.mean()
    return loss, parts


METHOD = Method(name="iad", data="real", student_objective=_student)
