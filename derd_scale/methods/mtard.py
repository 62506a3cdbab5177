"""MTARD — Multi-Teacher Adversarial Robustness Distillation (Zhao et al., ECCV 2022; BASELINES.md §B6).

Sources: ECCV 2022 "Enhanced Accuracy and Robustness via Multi-Teacher Adversarial
Distillation"; zhaoshiji123/MTARD (mtard/mtard_loss.py, mtard_resnet18_cifar10.py). On the real
training split, x' = PGD_K on Σ CE(S(x'), y), start x + 0.001·N, S in eval:

    L_adv = KL(p_Trob(x') ‖ p_S(x')),   L_nat = KL(p_Tnat(x) ‖ p_S(x))
    r_adv = (L_adv / L_adv⁰)^b,  r_nat = (L_nat / L_nat⁰)^b      (L⁰: the first batch's values; detached)
    w_nat ← w_nat − η·(w_nat − r_nat / (r_adv + r_nat)),  w_adv = 1 − w_nat   (before the step, same batch)
    L     = w_adv·L_adv + w_nat·L_nat

w⁰ = ½, η = 0.025, b = 1. The repo multiplies η by 0.1 with each lr drop; here η is constant
(Decision: the project's schedules are cosine). The weights live in ``ctx.state`` (checkpointed)
and are updated from the global-batch losses, so every rank keeps the same weights. With
gradient accumulation they update once per micro-batch. Repo scale: KL_E (KL_B/10 on CIFAR-10).
"""

from __future__ import annotations

import torch

from ..linf import ce_sum, pgd, start_normal
from .base import Batch, Context, Method, kl_b, mode

SOURCE_KL_DIVISOR = 10.0


def update_weights(state: dict, l_adv: float, l_nat: float, eta: float, power: float) -> tuple[float, float]:
    """One MTARD weight update in place on ``state`` (keys w_nat, l_adv0, l_nat0); returns (w_adv, w_nat)."""
    if "l_adv0" not in state:
        state.update(w_nat=0.5, l_adv0=l_adv, l_nat0=l_nat)
    r_adv = (l_adv / state["l_adv0"]) ** power
    r_nat = (l_nat / state["l_nat0"]) ** power
    state["w_nat"] = state["w_nat"] - eta * (state["w_nat"] - r_nat / (r_adv + r_nat))
    return 1 - state["w_nat"], state["w_nat"]


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    x, y = batch.x, batch.y
    with mode(ctx.plain_student, False):
        start = start_normal(x, ctx.noise(tuple(x.shape)))
        x_adv = pgd(ctx.plain_student, ce_sum(y), x, start, ctx.eps, ctx.alpha, ctx.settings.attack_steps)
    with torch.no_grad():
        t_rob = ctx.robust_teacher(x_adv).float()
        t_nat = ctx.natural_teacher(x).float()
    scale = ctx.kl_scale(SOURCE_KL_DIVISOR)
    l_adv = scale * kl_b(t_rob, ctx.student(x_adv))
    l_nat = scale * kl_b(t_nat, ctx.student(x))
    values = ctx.global_mean(torch.stack([l_adv.detach(), l_nat.detach()]).float())
    s = ctx.settings.mtard
    w_adv, w_nat = update_weights(ctx.state, float(values[0]), float(values[1]), s.eta, s.power)
    loss = w_adv * l_adv + w_nat * l_nat
    return loss, {"l_s": loss.detach(), "l_adv": l_adv.detach(), "l_nat": l_nat.detach(), "w_nat": w_nat}


METHOD = Method(name="mtard", data="real", student_objective=_student)
