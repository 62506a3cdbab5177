"""ZSKT — Zero-shot Knowledge Transfer via Adversarial Belief Matching (Micaelli & Storkey,
NeurIPS 2019; BASELINES.md §A3).

Sources: arXiv:1905.09768; polo5/ZeroShotKnowledgeTransfer (solver.py, scripts/ZeroShot/*.sh).
One pseudo batch z per step, x_p = G(z), forward KL at τ = 1:

    generator (×1):  L_G = −KL(p_T(x_p) ‖ p_S(x_p))          (S in train mode, as in the solver)
    student (×10, the same z through the updated G):
        L_S = KL(p_T(x_p) ‖ p_S(x_p)) + β·Σ_l AT_l,
        a(A) = normalise_L2(mean_channels(A²) flattened per sample),  AT_l = mean (a(A_l^T) − a(A_l^S))²

β = 250 against the repo's KL_E (``kl_scale=source``; the Decision default is KL_B); both
optimisers Adam (G 1e-3, S 2e-3) with gradient norms clipped to 5 and cosine schedules in the
source (``optim.*`` in the bench's rows). Attention transfer needs layers of the same family in
teacher and student: ``baselines.zskt.attention_layers`` names them (empty = no AT term; the
README reports AT adds ≈ 2 points).

``-KD``: T = T_nat. ``-RSLAD``: G maximises KL(T_rob ‖ S); the student step is RSLAD's objective.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Batch, Context, Method, kd_teacher, kl_b
from .rslad import rslad_objective


def attention_map(activation: torch.Tensor) -> torch.Tensor:
    """a(A) = L2-normalised, per sample, of the channel mean of A² (flattened positions)."""
    return F.normalize(activation.float().pow(2).mean(dim=1).flatten(1), dim=1)


def attention_loss(teacher_acts: list, student_acts: list) -> torch.Tensor:
    """Σ_l mean over batch and positions of (a(A_l^T) − a(A_l^S))²."""
    return sum((attention_map(t.detach()) - attention_map(s)).pow(2).mean() for t, s in zip(teacher_acts, student_acts))


def _submodule(model: nn.Module, name: str) -> nn.Module:
    """``name`` in the backbone (derd_scale wraps it as ``model`` inside the normalisation)."""
    for candidate in (name, f"model.{name}"):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise ValueError(f"baselines.zskt.attention_layers: {type(model).__name__} has no module {name!r}")


@contextmanager
def capture(model: nn.Module, names: list) -> Iterator[list]:
    """The outputs of ``names`` during the forward passes inside the block (hooks removed on exit)."""
    acts: list = []
    handles = [_submodule(model, n).register_forward_hook(lambda m, i, o: acts.append(o)) for n in names]
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def _generator(ctx: Context, x: torch.Tensor, y: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    kl = ctx.kl_scale(ctx.num_classes) * kl_b(kd_teacher(ctx)(x), ctx.plain_student(x))
    return -kl, {"l_g": -kl.detach()}


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    if ctx.settings.variant == "rslad":
        return rslad_objective(ctx, batch.x, ctx.robust_teacher)
    layers = list(ctx.settings.zskt.attention_layers)
    with torch.no_grad(), capture(ctx.natural_teacher, layers) as t_acts:
        t_logits = ctx.natural_teacher(batch.x).float()
    with capture(ctx.plain_student, layers) as s_acts:
        s_logits = ctx.student(batch.x)
    kl = ctx.kl_scale(ctx.num_classes) * kl_b(t_logits, s_logits)
    loss, parts = kl, {"l_kl": kl.detach()}
    if layers:
        at = attention_loss(t_acts, s_acts)
        loss = loss + ctx.settings.zskt.beta * at
        parts["l_at"] = at.detach()
    parts["l_s"] = loss.detach()
    return loss, parts


METHOD = Method(
    name="zskt",
    data="free",
    student_objective=_student,
    generator_objective=_generator,
    generator_steps=1,
    student_steps=10,
    student_batches="regenerate",
    student_mode_in_generator_step="train",
    variants=("kd", "rslad"),
)
