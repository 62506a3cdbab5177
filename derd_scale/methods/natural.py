"""The natural student: cross-entropy on the real training split, no attack, no teacher
(the tables' "natural" row: what the student architecture reaches without robustness).

    L = CE(S(x), y)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, Context, Method


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    loss = F.cross_entropy(ctx.student(batch.x).float(), batch.y)
    return loss, {"l_s": loss.detach()}


METHOD = Method(name="natural", data="real", student_objective=_student)
