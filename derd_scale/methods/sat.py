"""SAT — PGD adversarial training (Madry et al., ICLR 2018; BASELINES.md §B1).

Sources: arXiv:1706.06083; MadryLab/cifar10_challenge (config.json: ε = 8, step 2, 10 steps,
random start; the TF graph is built in train mode). On the real training split:

    x' = PGD_K on Σ_i CE(S(x'_i), y_i) in B_ε(x), start Π_ε(x + U(−ε, ε)), S in train mode
    L  = CE(S(x'), y)                       (adversarial examples only, no clean term)

``baselines.attack_bn=eval`` attacks the student in eval mode instead (BASELINES.md §B0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..linf import ce_sum, pgd, start_uniform
from .base import Batch, Context, Method, mode


def pgd_ce(ctx: Context, x: torch.Tensor, y: torch.Tensor, source_mode_train: bool) -> torch.Tensor:
    """The student's PGD-CE example from a uniform start (SAT, ARD, IAD)."""
    train = source_mode_train and ctx.settings.attack_bn == "source"
    start = start_uniform(x, ctx.eps, ctx.uniform(tuple(x.shape)))
    with mode(ctx.plain_student, train):
        return pgd(ctx.plain_student, ce_sum(y), x, start, ctx.eps, ctx.alpha, ctx.settings.attack_steps)


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    x_adv = pgd_ce(ctx, batch.x, batch.y, source_mode_train=True)
    logits = ctx.student(x_adv).float()
    loss = F.cross_entropy(logits, batch.y)
    return loss, {"l_s": loss.detach(), "train_adv_acc": (logits.argmax(1) == batch.y).float().mean()}


METHOD = Method(name="sat", data="real", student_objective=_student)
