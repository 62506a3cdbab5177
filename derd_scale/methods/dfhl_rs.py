"""DFHL-RS — Data-Free Hard-Label Robustness Stealing (Yuan et al., AAAI 2024; BASELINES.md §A6).

Sources: arXiv:2312.05924; LetheSec/DFHL-RS-Attack (train.py, query_sample.py, losses.py). The
target T_rob answers with hard labels only; the clone (the student) must inherit its accuracy
and robustness. G never queries the target:

    y_i ~ U{1..K},  ỹ_i = (1 − s) on y_i, s/(K − 1) elsewhere                (s = 0.2 on CIFAR-10)
    L_G = KL_B(ỹ ‖ p_S(aug(G(z)))) + λ·Σ_c p̄_c log₁₀ p̄_c,  p̄ = batch mean of p_S   (λ = 3; S in eval)
    high-entropy examples: x⁰ = x + 0.001·N, x^{k+1} = clip_[0,1](x^k + η·sign ∇ H(p_S(x^k)))   (η 0.03, K 10, no ball)
    L_S = CE(S(x_HEE), argmax T_rob(x_HEE))                                              (S in train)

aug = random crop (pad 4) + horizontal flip. Deviations (docs/baselines.md): no memory bank of
past batches and no strong augmentation — the student's batches are fresh draws of the current
G; 1 G step : 5 student steps instead of 10 G steps on one z and 500 clone steps per epoch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..linf import pgd, start_normal
from .augment import crop_flip
from .base import Batch, Context, Method, mode


def smoothed_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """1 − s on the label, s/(K − 1) on every other class."""
    out = torch.full((labels.shape[0], num_classes), smoothing / (num_classes - 1), device=labels.device)
    return out.scatter_(1, labels[:, None], 1.0 - smoothing)


def dfhl_generator_loss(student_logits: torch.Tensor, targets: torch.Tensor, lambda_div: float, batch_mean=None):
    """KL_B(ỹ ‖ p_S) + λ·Σ p̄ log₁₀ p̄ (the first term's zeros of ỹ contribute 0)."""
    log_q = F.log_softmax(student_logits.float(), dim=1)
    kl = (torch.xlogy(targets, targets) - targets * log_q).sum(1).mean()
    p_mean = log_q.exp().mean(0)
    if batch_mean is not None:
        p_mean = batch_mean(p_mean)
    div = (p_mean * torch.log10(p_mean.clamp_min(1e-12))).sum()
    return kl + lambda_div * div, kl, div


def entropy_sum(logits: torch.Tensor) -> torch.Tensor:
    """Σ_i H(softmax(logits_i)) — the HEE ascent's objective."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum()


def _generator(ctx: Context, x: torch.Tensor, y: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    s = ctx.settings.dfhl_rs
    k = ctx.num_classes
    labels = (ctx.uniform((x.shape[0],)) * k).long().clamp(max=k - 1)
    x_aug = crop_flip(x, ctx.uniform((x.shape[0], 3)))
    loss, kl, div = dfhl_generator_loss(
        ctx.plain_student(x_aug), smoothed_targets(labels, k, s.label_smoothing), s.lambda_div, ctx.batch_mean
    )
    return loss, {"l_g": loss.detach(), "l_kl": kl.detach(), "l_div": div.detach()}


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    s = ctx.settings.dfhl_rs
    x = batch.x
    with mode(ctx.plain_student, False):
        x_hee = pgd(
            ctx.plain_student, entropy_sum, x, start_normal(x, ctx.noise(tuple(x.shape))), None, s.hee_step, s.hee_steps
        )
    with torch.no_grad():
        hard = ctx.robust_teacher(x_hee).argmax(1)
    loss = F.cross_entropy(ctx.student(x_hee).float(), hard)
    return loss, {"l_s": loss.detach()}


METHOD = Method(
    name="dfhl_rs",
    data="free",
    student_objective=_student,
    generator_objective=_generator,
    generator_steps=1,
    student_steps=5,
    student_batches="fresh",
)
