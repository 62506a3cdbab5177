"""FERD-recon — Fairness-Enhanced Data-Free Robustness Distillation, as its code reads.

Source: mayaobuduyao/FERD (test.py, IBD_module_cmi.py, query_sample.py, losses.py; the README's
CIFAR-10 command: batch 256, N_G 200, N_S 400, lr 0.1, lr_G 2e-3, adv 1, bn 5, oh 1, uni 5,
warm-up 20 of 220 epochs). The robust teacher T_rob is the only teacher. Per step:

    class probabilities π (start uniform): y_i ~ Categorical(π)
    x̃ = crop_flip(G(z));  L_G = w_bn·R_BN(T_rob; x̃) − w_adv·KL_B(p_Trob(x̃) ‖ p_S(x̃)) + w_oh·CE(T_rob(x̃), y)   (S in eval)
    class reweighting: c_k = mean CE(T_rob(x̃_i), y_i) over the batch's samples of class k (0 if none),
        π ← normalise( class_min + (class_max − class_min)·(c − min c)/(max c − min c + 1e-8) )
    L_S = 5/6·KL(p_Trob(x) ‖ p_S(x)) + 1/6·KL(p_Trob(x) ‖ p_S(x')),  x' = PGD_10 on KL (start N, S in eval)

Deviations (docs/baselines.md): the code's generator adversarial term is a "DKL" loss (a
pairwise logit-difference MSE weighted by softened teacher probabilities, plus a cross-entropy);
we use KL_B. Its uniform term on the teacher's non-robust features (an informative-feature
package with its own attack) is left out. The generator is not re-initialised each epoch and
there is no image pool: the student's batches are fresh draws of the current G (1 G : 2 student
steps, the code's 200 : 400). The student loss as stored minimises the *negative* KLs (it calls
the generator's loss helper); we read that as a slip and minimise the KLs. No student warm-up.
π lives in ``ctx.state`` (checkpointed) and is updated from global-batch sums.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..derd.losses import BNStatistics
from .augment import crop_flip
from .base import Batch, Context, Method, kl_b
from .rslad import rslad_objective


def sample_classes(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """y_i = the class whose cumulative probability first exceeds u_i (inverse CDF)."""
    cdf = probs.cumsum(0)
    return torch.searchsorted(cdf / cdf[-1], u.contiguous()).clamp(max=probs.numel() - 1)


def class_losses(per_sample: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ loss, count) per class."""
    sums = torch.zeros(num_classes, device=per_sample.device).index_add_(0, labels, per_sample.float())
    counts = torch.zeros(num_classes, device=per_sample.device).index_add_(
        0, labels, torch.ones_like(per_sample).float()
    )
    return sums, counts


def reweight(class_loss: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Min–max scale the per-class losses into [low, high], then normalise to a distribution."""
    scaled = (class_loss - class_loss.min()) / (class_loss.max() - class_loss.min() + 1e-8)
    probs = scaled * (high - low) + low
    return probs / probs.sum()


def _generator(ctx: Context, x: torch.Tensor, y: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    s, k = ctx.settings.ferd, ctx.num_classes
    probs = torch.tensor(ctx.state.get("class_probs", [1.0 / k] * k), device=x.device)
    labels = sample_classes(probs, ctx.uniform((x.shape[0],)).to(x.device))
    x_aug = crop_flip(x, ctx.uniform((x.shape[0], 3)))
    with BNStatistics(ctx.robust_teacher, ctx.batch_mean) as bn:
        t_logits = ctx.robust_teacher(x_aug).float()
    r_bn = bn.loss().to(x.device)
    l_adv = kl_b(t_logits, ctx.plain_student(x_aug))
    ce = F.cross_entropy(t_logits, labels, reduction="none")
    loss = s.lambda_bn * r_bn - s.lambda_adv * l_adv + s.lambda_oh * ce.mean()
    sums, counts = class_losses(ce.detach(), labels, k)
    both = ctx.global_mean(torch.cat([sums, counts]))  # the ratio of means is the ratio of global sums
    ctx.state["class_probs"] = reweight(both[:k] / (both[k:] + 1e-8), s.class_min, s.class_max).tolist()
    return loss, {"l_g": loss.detach(), "l_bn": r_bn.detach(), "l_adv": l_adv.detach(), "l_oh": ce.mean().detach()}


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    return rslad_objective(ctx, batch.x, ctx.robust_teacher, clean_weight=ctx.settings.ferd.clean_weight)


METHOD = Method(
    name="ferd",
    data="free",
    student_objective=_student,
    generator_objective=_generator,
    generator_steps=1,
    student_steps=2,
    student_batches="fresh",
)
