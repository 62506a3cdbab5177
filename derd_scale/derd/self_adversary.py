"""Self-adversary (SA): discrepancy data between the two teachers, Eqs. 13–16.

Starting from x_d⁰ = G(z) (detached), K sign-ascent steps:

    x_d^{t+1} = clip_[0,1]( x_d^t + α · sign ∇_x [ D(T_nat(x_d^t), T_rob(x_d^t)) + λ_d CE(T_nat(x_d^t), ŷ) ] )

with ŷ = argmax T_nat(x_d⁰) and D the batch-mean L1 distance of the teachers' softmax
outputs (or logits). The paper has no ε-ball: only the pixel range is enforced. With
``eps`` (config ``stage2.sa.ball`` with radius ``stage2.eps``, our addition) each iterate is also projected into the
L∞ ball of radius ε_sa around x_d⁰ = G(z), so the discrepancy data stay perturbations of a
clean anchor — the geometry every data-driven robust distiller trains on. The teachers are frozen
(eval mode, no parameter gradients accumulated): gradients are taken w.r.t. x only with
``torch.autograd.grad``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..linf import sign_step
from .losses import discrepancy, frozen


@dataclass
class DiscrepancyData:
    x_d: torch.Tensor
    natural_labels: torch.Tensor
    """ŷ = argmax T_nat(x_d⁰)."""
    discrepancy_before: float
    discrepancy_after: float
    flip_rate: float
    """Share of x_d on which T_nat's prediction differs from ŷ."""
    teacher_agreement: float
    """Share of x_d on which T_nat and T_rob predict the same class."""
    natural_logits: torch.Tensor
    """T_nat(x_d) and T_rob(x_d) on the final x_d, reused as distillation targets (no extra forward)."""
    robust_logits: torch.Tensor
    anchor_natural_logits: torch.Tensor
    """T_nat(x_d⁰) and T_rob(x_d⁰) on the anchor G(z), computed for ŷ and D_before anyway (no extra forward)."""
    anchor_robust_logits: torch.Tensor


def ascent_objective(
    natural_logits: torch.Tensor, robust_logits: torch.Tensor, labels: torch.Tensor, lambda_d: float, on: str = "probs"
) -> torch.Tensor:
    """The quantity SA ascends: D(T_nat, T_rob) + λ_d CE(T_nat, ŷ). CE is a batch mean."""
    return discrepancy(natural_logits, robust_logits, on) + lambda_d * F.cross_entropy(natural_logits, labels)


def sa_step(
    x: torch.Tensor, grad: torch.Tensor, alpha: float, anchor: torch.Tensor | None = None, eps: float | None = None
) -> torch.Tensor:
    """One update of Eqs. 13–16: x + α·sign(∇), projected into ‖x − anchor‖∞ ≤ ε (when ``eps``
    is given), then clipped to [0, 1]."""
    return sign_step(x, grad, alpha, anchor, eps)


def craft_discrepancy_data(
    natural_teacher,
    robust_teacher,
    x0: torch.Tensor,
    steps: int,
    alpha: float,
    lambda_d: float = 1.0,
    on: str = "probs",
    chunk_size: int | None = None,
    eps: float | None = None,
) -> DiscrepancyData:
    """K sign-ascent steps from x0. With ``chunk_size`` the batch is crafted chunk by chunk:
    every term is a per-sample mean, so a chunk's gradient equals the full batch's up to a
    positive factor and sign(∇) — hence x_d — is unchanged (memory for ViTs at 224²)."""
    if chunk_size and chunk_size < x0.shape[0]:
        parts = [
            craft_discrepancy_data(natural_teacher, robust_teacher, c, steps, alpha, lambda_d, on, eps=eps)
            for c in x0.split(chunk_size)
        ]
        n = x0.shape[0]
        weights = [p.x_d.shape[0] / n for p in parts]

        def mean(attr: str) -> float:
            return sum(w * getattr(p, attr) for w, p in zip(weights, parts))

        return DiscrepancyData(
            torch.cat([p.x_d for p in parts]),
            torch.cat([p.natural_labels for p in parts]),
            mean("discrepancy_before"),
            mean("discrepancy_after"),
            mean("flip_rate"),
            mean("teacher_agreement"),
            torch.cat([p.natural_logits for p in parts]),
            torch.cat([p.robust_logits for p in parts]),
            torch.cat([p.anchor_natural_logits for p in parts]),
            torch.cat([p.anchor_robust_logits for p in parts]),
        )
    x0 = x0.detach()
    with frozen(natural_teacher), frozen(robust_teacher):
        if not steps:
            with torch.no_grad():
                nat0, rob0 = natural_teacher(x0), robust_teacher(x0)
        x = x0.clone()
        for k in range(steps):
            x.requires_grad_(True)
            nat_k, rob_k = natural_teacher(x), robust_teacher(x)
            if k == 0:
                # The first ascent step's forward is the anchor's: ŷ and D_before come from it
                # (the same values as a no-grad forward, one pass of both teachers fewer).
                nat0, rob0 = nat_k.detach(), rob_k.detach()
                labels = nat0.argmax(dim=1)
            objective = ascent_objective(nat_k, rob_k, labels, lambda_d, on)
            (grad,) = torch.autograd.grad(objective, x)
            x = sa_step(x.detach(), grad, alpha, x0, eps)
        labels = nat0.argmax(dim=1)
        d_before = discrepancy(nat0, rob0, on).item()
        with torch.no_grad():
            # No ascent (SA off): x_d = x_d⁰ and the anchor's outputs are the targets — no second forward.
            nat, rob = (natural_teacher(x), robust_teacher(x)) if steps else (nat0, rob0)
            pred_nat = nat.argmax(dim=1)
            d_after = discrepancy(nat, rob, on).item()
            flip = (pred_nat != labels).float().mean().item()
            agree = (pred_nat == rob.argmax(dim=1)).float().mean().item()
    return DiscrepancyData(x.detach(), labels, d_before, d_after, flip, agree, nat, rob, nat0, rob0)
