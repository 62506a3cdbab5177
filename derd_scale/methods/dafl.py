"""DAFL — Data-Free Learning of Student Networks (Chen et al., ICCV 2019; BASELINES.md §A1).

Sources: arXiv:1904.01186; huawei-noah/Data-Efficient-Model-Compression (DAFL/DAFL-train.py,
README.md). The frozen teacher T is a fixed critic; G never sees the student. With x = G(z),
f_T(x) the features entering T's classifier and p̄ = mean_i softmax(T(x_i)):

    L_oh = CE(T(x), argmax T(x))          L_a = −mean |f_T(x)|          L_ie = Σ_c p̄_c log₁₀ p̄_c
    L_G  = w_oh·L_oh + w_a·L_a + w_ie·L_ie                 (code scales; README CIFAR-10: 0.05, 0.01, 5)
    L_S  = KL_B(p_T(x̂) ‖ p_S(x̂)),  x̂ = G(z) detached   (the same batch: one joint step, 1 G : 1 S)

``-KD``: T = T_nat. ``-RSLAD``: the same G objective on T_rob, and RSLAD's student objective on x̂.
The paper writes L_a with the L1 norm and L_ie as −H(p̄)/K in natural log; the code's scales are
used (BASELINES.md's Decision). p̄ is the global batch's under data parallelism (``ctx.batch_mean``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..derd.losses import activation_loss, one_hot_loss
from .base import Batch, Context, Method, kd_teacher
from .rslad import kd_or_rslad_student


def dafl_entropy_loss(logits: torch.Tensor, batch_mean=None) -> torch.Tensor:
    """L_ie = Σ_c p̄_c log₁₀ p̄_c (DAFL's code: no 1/K, base 10); minimal for balanced classes."""
    p_mean = F.softmax(logits.float(), dim=1).mean(dim=0)
    if batch_mean is not None:
        p_mean = batch_mean(p_mean)
    return (p_mean * torch.log10(p_mean.clamp_min(1e-12))).sum()


def dafl_generator_loss(
    logits: torch.Tensor, features: torch.Tensor, w_oh: float, w_a: float, w_ie: float, batch_mean=None
) -> tuple[torch.Tensor, dict]:
    l_oh, l_a, l_ie = one_hot_loss(logits), activation_loss(features), dafl_entropy_loss(logits, batch_mean)
    total = w_oh * l_oh + w_a * l_a + w_ie * l_ie
    return total, {"l_oh": l_oh.detach(), "l_a": l_a.detach(), "l_ie": l_ie.detach(), "l_g": total.detach()}


def _generator(ctx: Context, x: torch.Tensor, y: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    s = ctx.settings.dafl
    logits, features = kd_teacher(ctx).forward_with_features(x)
    return dafl_generator_loss(logits, features, s.lambda_oh, s.lambda_a, s.lambda_ie, ctx.batch_mean)


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    return kd_or_rslad_student(ctx, batch.x)


METHOD = Method(
    name="dafl",
    data="free",
    student_objective=_student,
    generator_objective=_generator,
    generator_steps=1,
    student_steps=1,
    student_batches="reuse",
    variants=("kd", "rslad"),
)
