"""The student's inner maximisation on synthetic data, and the robust-distillation objective.

Data-driven robust distillation (ARD, RSLAD, MTARD) is a min-max: an adversarial point is
found *for the student* inside the evaluation ε-ball of a clean input, and the student is
trained there towards targets taken on the clean input. DERD's Stage II gets this as a
switch (``stage2.eg.robust_data=x_adv``, ``stage2.adv.*``), with the clean anchor G(z) in
place of a real image:

    x_adv = Π_{B_ε(x)} PGD_K [ KL(t ‖ S(x')) ]        (ascent from x + 0.001·N(0,1), or from x_d)
    L_2   = (1 − β) · KL(t ‖ S(x_adv)) + β · KL(t ‖ S(x))                  (RSLAD: β = 1/6)

with x = G(z), t the robust target (T_rob(x) on the clean anchor, RSLAD's robust soft
labels) and S in eval mode during the ascent (RSLAD's reference code). ``stage2.adv.objective=self``
replaces the ascent's t by the student's own clean prediction S(x) (TRADES, Zhang et al. 2019,
Eq. 5 / Alg. 1: x' = argmax KL(S(x) ‖ S(x'))), L_2 keeping t: ``inner_max_target``. The ascent is
``derd_scale.linf.pgd`` (input gradients only; no parameter gradient is accumulated). The same inner maximisation
is the data-driven RSLAD bound's and every ``-RSLAD`` baseline's (``derd_scale.methods.rslad``).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..linf import clean_log_probs, kl_sum, pgd, project
from .losses import kd_kl, kl_per_sample


def inner_max_target(objective: str, target_logits: torch.Tensor, student, anchor: torch.Tensor) -> torch.Tensor:
    """log p of what the inner maximisation moves S(x') away from: log t for ``target`` (RSLAD), or
    log S(anchor) for ``self`` (TRADES; the student as the caller put it, no gradient).

    Note that ``self`` needs a start off the anchor: KL(S(x) ‖ S(x')) has zero gradient at x' = x
    (RSLAD's and TRADES's x + 0.001·N(0, 1), or x_d)."""
    if objective == "target":
        return torch.log_softmax(target_logits.float(), dim=1)
    if objective == "self":
        return clean_log_probs(student, anchor)
    raise ValueError(f"stage2.adv.objective: must be target or self, got {objective!r}")


def student_inner_max(
    student,
    target_log_probs: torch.Tensor,
    anchor: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    start: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """PGD maximising Σ_i KL(t_i ‖ S(x'_i)) (sum over the batch, so sign(∇) is per example) in the ε-ball of ``anchor``.

    ``target_log_probs`` is log t (log-softmax of the target logits). The ascent starts at
    ``start`` projected into the ball, or at ``anchor + 0.001·noise`` (RSLAD's start) when
    ``start`` is None. ``student`` must be in the mode the caller wants (RSLAD: eval)."""
    if start is None:
        start = anchor + 0.001 * noise if noise is not None else anchor
    return pgd(student, kl_sum(target_log_probs), anchor, project(start, anchor, eps), eps, alpha, steps)


def robust_distillation_loss(
    target_logits: torch.Tensor,
    student_logits_adv: torch.Tensor,
    student_logits_clean: Optional[torch.Tensor],
    temperature: float = 1.0,
    clean_weight: float = 0.0,
    weight: Optional[torch.Tensor] = None,
    self_weight: float = 0.0,
) -> torch.Tensor:
    """L_2 = (1 − β) KL(t ‖ S(x_r)) + β KL(t ‖ S(x)) + γ KL_B(S(x) ‖ S(x_r)); β = γ = 0 is the
    paper's L_2 on x_r alone, β = 1/6 RSLAD's. The γ term is TRADES's boundary term (Zhang et al.,
    ICML 2019: the KL it adds to the clean loss): S(x_r) must keep the student's own clean
    prediction, not a teacher's, with the gradient through both sides and no temperature, so it
    asks for a student that is flat around the anchor whatever the robust target says there.
    ``weight``: per-sample weights of every term (``kd_kl``), e.g. a 0/1 mask."""
    loss = kd_kl(target_logits, student_logits_adv, temperature, weight)
    if clean_weight:
        clean = kd_kl(target_logits, student_logits_clean, temperature, weight)
        loss = (1 - clean_weight) * loss + clean_weight * clean
    if self_weight:
        boundary = kl_per_sample(student_logits_clean, student_logits_adv)
        if weight is not None:
            boundary = weight.to(boundary.dtype) * boundary
        loss = loss + self_weight * boundary.mean()
    return loss
