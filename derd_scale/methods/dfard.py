"""DFARD-recon — a provisional reconstruction of DFARD (Wang et al., AAAI 2024; BASELINES.md §A5).

DFARD's method section could not be read and it has no public code; this instantiates its stated
structure (a generator, a robust teacher, a robust student; ITA and AGB as slots) with the nearest
published components. Its rows must not be labelled "DFARD".

    L_G = −w_adv·KL_B(p_Trob(x) ‖ p_S(x)) + w_bn·R_BN(T_rob; x) (+ w_oh·CE(T_rob(x), argmax T_rob(x)))
          AGB slot: ``agb=ratio`` sets w_bn = |L_adv| / R_BN (both detached) each step — a stand-in
    L_S = RSLAD's objective on the detached pseudo batch with T_rob soft labels, at temperature τ
          (×τ²; ITA slot: only the constant τ = 1 is specified)

1 G step : 5 student steps (DFAD's ratio), S in train mode during G's step (as DFAD).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..derd.losses import BNStatistics
from .base import Batch, Context, Method, kl_b
from .rslad import rslad_objective


def dfard_generator_loss(
    l_adv: torch.Tensor, r_bn: torch.Tensor, l_oh: torch.Tensor, w_adv: float, w_bn: float, w_oh: float, agb: str
) -> tuple[torch.Tensor, float]:
    """−w_adv·L_adv + w_bn·R_BN + w_oh·L_oh, with w_bn replaced by |L_adv|/R_BN under agb=ratio."""
    if agb == "ratio":
        w_bn = float(l_adv.detach().abs() / r_bn.detach().clamp_min(1e-12))
    return -w_adv * l_adv + w_bn * r_bn + w_oh * l_oh, w_bn


def _generator(ctx: Context, x: torch.Tensor, y: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    s = ctx.settings.dfard
    with BNStatistics(ctx.robust_teacher, ctx.batch_mean) as bn:
        t_logits = ctx.robust_teacher(x)
    r_bn = bn.loss().to(x.device)
    l_adv = kl_b(t_logits, ctx.plain_student(x))
    l_oh = F.cross_entropy(t_logits.float(), t_logits.detach().argmax(1)) if s.lambda_oh else torch.zeros(())
    loss, w_bn = dfard_generator_loss(l_adv, r_bn, l_oh, s.lambda_adv, s.lambda_bn, s.lambda_oh, s.agb)
    return loss, {"l_g": loss.detach(), "l_adv": l_adv.detach(), "l_bn": r_bn.detach(), "w_bn": w_bn}


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    return rslad_objective(ctx, batch.x, ctx.robust_teacher, temperature=ctx.settings.dfard.temperature)


METHOD = Method(
    name="dfard",
    data="free",
    student_objective=_student,
    generator_objective=_generator,
    generator_steps=1,
    student_steps=5,
    student_batches="fresh",
    student_mode_in_generator_step="train",
)
