"""DeepInversion / Adaptive DeepInversion (Yin et al., CVPR 2020; BASELINES.md §A4.1, §A4.3).

Sources: arXiv:1912.08795; NVlabs/DeepInversion (cifar10/deepinversion_cifar10.py, README);
the student side of zju-vipa/CMI (datafree_kd.py). Images are optimised directly: here the
bank of ``generator.kind=implicit`` (sigmoid of free logits, so x ∈ [0, 1]) is the image pool,
each step optimises one batch of it and the student learns from a fresh batch of it.

    x̃      = roll(x, random (dy, dx) ∈ [−j, j]²)                              (j = 2 on CIFAR)
    R_BN   = Σ_l ‖μ_l(x̃) − running_mean_l‖₂ + ‖σ²_l(x̃) − running_var_l‖₂      (derd.losses.BNStatistics)
    R_TV2  = Σ_{4 directions} ‖x̃ − shift(x̃)‖₂                                  (right, down, two diagonals)
    R_adi  = 1 − clip(JS, 0, 1),  JS = ½KL_B(M ‖ P) + ½KL_B(M ‖ Q),  P = p_S^3(x̃), Q = p_T^3(x̃),
             M = (P + Q)/2, all clipped to [0.01, 0.99]                       (S in eval; ADI only)
    L_inv  = CE(T(x̃), y) + w_bn·R_BN + w_tv·R_TV2 + w_ℓ2·‖x‖₂ + w_adi·R_adi
    L_S    = τ²·KL_B(p_T^τ(x) ‖ p_S^τ(x)),  τ = 20

NVlabs' CIFAR-10 "paper parameters": w_bn 10, w_tv 2.5e-5, w_ℓ2 0, Adam lr 0.05, 2000 iterations per
batch of 256; w_adi = 0.01 when ADI is on. y: the bank's balanced labels (``generator.pseudo_labels=
sampled``) or, without them, argmax T(x). Deviations (docs/baselines.md): the pool's images keep
being optimised while the student trains (the source freezes each batch after its 2000 iterations
and resets Adam), and R_TV2's norms are over this rank's batch.

``-KD``: invert T_nat. ``-RSLAD``: invert T_rob (its BN statistics); RSLAD's student objective.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..derd.losses import BNStatistics
from .augment import jitter
from .base import Batch, Context, Method, kd_teacher
from .rslad import kd_or_rslad_student


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    """Σ over right, down and the two diagonal neighbours of the L2 norm of the difference."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (d1, d2, d3, d4))


def js_competition(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 3.0):
    """R_adi = 1 − clip(JS(P, Q), 0, 1) with the NVlabs clipping; small where S and T disagree."""
    p = F.softmax(student_logits.float() / temperature, dim=1).clamp(0.01, 0.99)
    q = F.softmax(teacher_logits.float() / temperature, dim=1).clamp(0.01, 0.99)
    m = (
        0.5 * (F.softmax(student_logits.float() / temperature, 1) + F.softmax(teacher_logits.float() / temperature, 1))
    ).clamp(0.01, 0.99)
    js = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(q.log(), m, reduction="batchmean")
    return 1.0 - js.clamp(0.0, 1.0)


def _generator(ctx: Context, x: torch.Tensor, y: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    s = ctx.settings.deepinversion
    teacher = kd_teacher(ctx)
    x_j = jitter(x, ctx.shared_uniform((2,)), s.jitter)
    with BNStatistics(teacher, ctx.batch_mean) as bn:
        t_logits = teacher(x_j)
    targets = y if y is not None else t_logits.detach().argmax(1)
    l_ce = F.cross_entropy(t_logits.float(), targets)
    l_bn = bn.loss().to(x.device)
    l_tv = tv_l2(x_j)
    l_l2 = torch.linalg.vector_norm(x)
    loss = l_ce + s.lambda_bn * l_bn + s.lambda_tv * l_tv + s.lambda_l2 * l_l2
    parts = {"l_oh": l_ce.detach(), "l_bn": l_bn.detach(), "l_tv": l_tv.detach()}
    if s.lambda_adi:
        l_adi = js_competition(ctx.plain_student(x_j), t_logits)
        loss = loss + s.lambda_adi * l_adi
        parts["l_adi"] = l_adi.detach()
    parts["l_g"] = loss.detach()
    return loss, parts


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    return kd_or_rslad_student(ctx, batch.x, ctx.settings.deepinversion.student_temperature)


METHOD = Method(
    name="deepinversion",
    data="free",
    student_objective=_student,
    generator_objective=_generator,
    generator_steps=1,
    student_steps=1,
    student_batches="fresh",
    variants=("kd", "rslad"),
)
