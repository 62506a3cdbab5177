"""DFAD — Data-Free Adversarial Distillation (Fang et al., 2019; BASELINES.md §A2).

Sources: arXiv:1912.11006; VainF/Data-Free-Adversarial-Distillation (DFAD_cifar.py,
network/gan.py). A min–max on the model discrepancy, the mean absolute error of the *logits*:

    D(T, S; x) = (1 / (B·K)) Σ_i ‖T(x_i) − S(x_i)‖₁
    student step (×5, fresh z each):  min_S D(T, S; G(z) detached)
    generator step (×1, fresh z):     min_G −D(T, S; G(z))      (T and S frozen, S in train mode)

(``baselines.dfad.generator_loss=log_l1``: −log(D + 1), the code's commented alternative.)
Source defaults (CIFAR): batch 256, d_z 256, S SGD lr 0.1 / momentum 0.9 / wd 5e-4, G Adam 1e-3.
The source runs the 5 student steps before the G step of an iteration; here G's step comes first
(the same alternation, shifted by half an iteration).

``-KD``: T = T_nat, student on D. ``-RSLAD``: G maximises D against T_rob; the student step is
RSLAD's objective on the pseudo batch with T_rob (what METHOD.md's "DFAD (data-free)" row must
mean, BASELINES.md §0.3.2).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .base import Batch, Context, Method, kd_teacher
from .rslad import rslad_objective


def logit_discrepancy(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """D = mean over batch and classes of |T(x) − S(x)| (PyTorch's l1_loss, 'mean')."""
    return F.l1_loss(student_logits.float(), teacher_logits.float())


def dfad_generator_loss(d: torch.Tensor, form: str = "l1") -> torch.Tensor:
    """−D, or −log(D + 1)."""
    return -torch.log(d + 1) if form == "log_l1" else -d


def _generator(ctx: Context, x: torch.Tensor, y: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    d = logit_discrepancy(kd_teacher(ctx)(x), ctx.plain_student(x))
    loss = dfad_generator_loss(d, ctx.settings.dfad.generator_loss)
    return loss, {"l_g": loss.detach(), "discrepancy": d.detach()}


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    if ctx.settings.variant == "rslad":
        return rslad_objective(ctx, batch.x, ctx.robust_teacher)
    with torch.no_grad():
        t_logits = ctx.natural_teacher(batch.x)
    loss = logit_discrepancy(t_logits, ctx.student(batch.x))
    return loss, {"l_s": loss.detach()}


METHOD = Method(
    name="dfad",
    data="free",
    student_objective=_student,
    generator_objective=_generator,
    generator_steps=1,
    student_steps=5,
    student_batches="fresh",
    student_mode_in_generator_step="train",
    variants=("kd", "rslad"),
)
