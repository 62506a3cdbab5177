"""Expert guiding (Eq. 17) and its measured variants: what the student learns from, per micro-batch.

The paper's Eq. 17 on the discrepancy data x_d:

    L_Dis = L_1 + λ_rob L_2,   L_1 = KL(T_nat(x_d) ‖ S(x_d)),   L_2 = KL(T_rob(x_d) ‖ S(x_d))

Each factor of it is a switch (``stage2.eg.*``, ``stage2.adv.*``; docs/derd.md has the table
and the measurements behind the recommended preset):

    natural_data   x_d | gz        the input of L_1 (T_nat's targets are on that same input)
    robust_target  x_d | anchor    t = T_rob(x_d) (paper) or T_rob(G(z)) (RSLAD's robust soft labels)
                   | agreed        T_rob(G(z)) where the experts' labels agree on G(z), else T_nat(G(z))
    robust_data    x_d | x_adv     x_r = x_d (paper) or the student's inner maximiser x_adv
    robust_mask    none | agreed   L_2 on every sample (paper) or only where the experts' labels
                                   agree on G(z) (w_i = 1[argmax T_rob(G(z)_i) = argmax T_nat(G(z)_i)])
    class_balance  false | true    per-sample weights N / (C · n_ŷ) on L_1 and L_2, ŷ = T_nat's label
                                   of G(z), n_c its count in the global batch, C the classes present
    robust_clean_weight β          L_2 = (1−β) KL(t ‖ S(x_r)) + β KL(t ‖ S(G(z)))
    robust_self_weight γ           L_2 += γ KL_B(S(G(z)) ‖ S(x_r)), TRADES's boundary term (the
                                   student's own clean prediction, gradient through both sides)
    robust_prior_correction τ      t = softmax(z_t − τ log p̄), z_t the target's logits, p̄ their
                                   mean softmax over the global batch (``prior_corrected_logits``)
    lambda_nat, lambda_rob         L_1 and L_2 weights (they scale g1, g2 before GA/SGA)

With ``stage2.replay_steps`` each micro-batch also carries an earlier step's anchors from the
bank, with their stored targets (``replayed_batch``, ``concat_batches``).

So with every switch at the paper's value this is Eq. 17 exactly, and with
``robust_target=anchor, robust_data=x_adv, β=1/6`` and no natural term it is RSLAD's
objective on G(z). The teachers' outputs are never recomputed: SA already has them on the
anchor and on the final x_d (``DiscrepancyData``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .losses import kd_kl
from .self_adversary import DiscrepancyData
from .student_adversary import inner_max_target, robust_distillation_loss, student_inner_max


@dataclass
class StudentBatch:
    """The inputs and targets of one micro-batch's student losses."""

    anchor: torch.Tensor
    """G(z), the clean pseudo image."""
    robust_input: torch.Tensor
    """x_r: x_d or x_adv."""
    robust_target: torch.Tensor
    """Logits of the robust target t: T_rob(x_d) or T_rob(G(z))."""
    natural_input: torch.Tensor
    """x_d or G(z)."""
    natural_target: torch.Tensor
    """T_nat on ``natural_input``."""
    robust_weight: Optional[torch.Tensor] = None
    """Per-sample weights of L_2 (``robust_mask`` × ``class_balance``); None = every sample, weight 1."""
    natural_weight: Optional[torch.Tensor] = None
    """Per-sample weights of L_1 (``class_balance``); None = weight 1."""


@dataclass
class StudentLosses:
    """One micro-batch's student terms (scalars with graphs) and its predictions for logging."""

    natural: torch.Tensor
    """λ_nat · L_1 (zero with no natural term: SA only)."""
    robust: torch.Tensor
    """λ_rob · L_2."""
    robust_kl: torch.Tensor
    """L_2, unweighted and detached (logged as l_2)."""
    prediction: torch.Tensor
    """argmax S(x_r), detached."""


def agreed_robust_target(anchor_natural_logits: torch.Tensor, anchor_robust_logits: torch.Tensor) -> torch.Tensor:
    """``robust_target=agreed``: per sample, T_rob(G(z)) where argmax T_rob(G(z)) = argmax T_nat(G(z)),
    else T_nat(G(z)) (logits, the robust ones' dtype).

    Why: G's images are made for T_nat (Eq. 11), and T_rob reads many of them off its own data
    manifold — after the Fashion-MNIST Stage I it gave T_nat's label on only 22–50 % of G(z) for six
    of ten classes (trousers read as dresses), so RSLAD's robust soft labels there teach the student
    a wrong class (its real trouser accuracy fell to 21 %). Where the experts agree the student keeps
    T_rob's robust soft labels; where they disagree it is asked, inside the ε-ball, for the class
    the image was made to show — ARD's use of a natural teacher for robustness."""
    agree = experts_agree(anchor_natural_logits, anchor_robust_logits)
    return torch.where(agree[:, None], anchor_robust_logits, anchor_natural_logits.to(anchor_robust_logits.dtype))


def experts_agree(anchor_natural_logits: torch.Tensor, anchor_robust_logits: torch.Tensor) -> torch.Tensor:
    """1[argmax T_rob(G(z)) = argmax T_nat(G(z))] per sample (bool)."""
    return anchor_robust_logits.argmax(1) == anchor_natural_logits.argmax(1)


def robust_mask_weight(eg, dd: DiscrepancyData) -> Optional[torch.Tensor]:
    """``robust_mask=agreed``: w_i = 1 where the experts give G(z)_i the same label, else 0; None for ``none``.

    Why: where T_rob reads an image G made for T_nat as another class (trousers as dresses on
    Fashion-MNIST), both RSLAD's robust soft labels (they teach the other class) and T_nat's label
    (robustness on features T_rob is not robust on; ``robust_target=agreed``) have hurt a class.
    Masking asks for robustness only where the experts agree and leaves the rest to L_1."""
    if eg.robust_mask == "none":
        return None
    return experts_agree(dd.anchor_natural_logits, dd.anchor_robust_logits).float()


def prior_corrected_logits(robust_logits: torch.Tensor, mean_probs: torch.Tensor, tau: float) -> torch.Tensor:
    """``robust_prior_correction``: z − τ·log p̄ per sample (fp32 logits), with ``mean_probs`` p̄ the
    mean of softmax(z) over the global batch (each entry floored at 1e-8).

    This is logit adjustment (Menon et al. 2021, "Long-tail learning via logit adjustment",
    Eq. 10's post-hoc form): softmax(z − τ log p̄) ∝ p(y|x) / p̄(y)^τ. At τ = 1 a class T_rob reads
    into many pseudo images loses exactly that excess; τ = 0 is the target unchanged. Why: G's
    images are made for T_nat, and on the CIFAR-10 recipe's G(z) T_rob files 21–30 % as cat and 2–4 %
    as deer or dog (its marginal, not the images' content: T_nat's labels there are far more even),
    and every robust student learnt that marginal as a cat sink on real images."""
    return robust_logits.float() - tau * torch.log(mean_probs.float().clamp_min(1e-8))


def class_balance_weights(labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``class_balance``: w_i = N / (C · n_{y_i}), with n_c = ``counts[c]`` the global batch's count of
    class c (N = Σ n_c samples, C = the number of classes present), so every present class carries
    the same total weight N / C and the weights average 1 over the global batch.

    Why: G's images are far from class-balanced as the student sees them — after the Fashion-MNIST
    Stage I, T_nat called 42 of 2048 G(z) shirts against 234–307 for the easy classes (L_ie
    balances T_nat's mean softmax, not its labels), and every recommended student gets 7–17 % of
    real shirts. Re-weighting gives a rare class's few images the weight of a common class's many."""
    counts = counts.to(torch.float32)
    present = int((counts > 0).sum())
    return counts.sum() / (present * counts[labels].clamp(min=1.0))


def robust_target_logits(eg, dd: DiscrepancyData) -> torch.Tensor:
    """The robust target t's logits per ``robust_target``: T_rob(x_d), T_rob(G(z)) or the agreed mix
    (before any ``robust_prior_correction``)."""
    if eg.robust_target == "agreed":
        return agreed_robust_target(dd.anchor_natural_logits, dd.anchor_robust_logits)
    return dd.anchor_robust_logits if eg.robust_target == "anchor" else dd.robust_logits


def student_batch(
    eg,
    adv,
    anchor: torch.Tensor,
    dd: DiscrepancyData,
    attack_student=None,
    noise: Optional[torch.Tensor] = None,
    eps: float = 0.0,
    sample_weight: Optional[torch.Tensor] = None,
    robust_prior: Optional[torch.Tensor] = None,
) -> StudentBatch:
    """Pick inputs and targets per the switches; with ``robust_data=x_adv`` run the student's inner
    maximisation in the ε-ball of the anchor (``attack_student``: the student's plain module, put in
    eval mode here as in RSLAD; step size ``adv.alpha`` or ε/4). ``sample_weight``: per-sample
    weights of both terms (``class_balance_weights``), multiplied into ``robust_mask``'s.
    ``robust_prior``: the robust targets' mean softmax over the global batch, needed when
    ``robust_prior_correction`` > 0 (the target, hence the inner maximisation's too, is corrected)."""
    target = robust_target_logits(eg, dd)
    if eg.robust_prior_correction:
        if robust_prior is None:
            raise ValueError(
                "student_batch: robust_prior_correction > 0 needs robust_prior (the robust targets' mean softmax over the global batch)"
            )
        target = prior_corrected_logits(target, robust_prior, eg.robust_prior_correction)
    natural_input, natural_target = (
        (dd.x_d, dd.natural_logits) if eg.natural_data == "x_d" else (anchor, dd.anchor_natural_logits)
    )
    robust_input = dd.x_d
    if eg.robust_data == "x_adv":
        was = attack_student.training
        attack_student.eval()
        log_t = inner_max_target(adv.objective, target, attack_student, anchor)
        start = dd.x_d if adv.start == "x_d" else None
        alpha = adv.alpha if adv.alpha is not None else eps / 4
        robust_input = student_inner_max(attack_student, log_t, anchor, eps, alpha, adv.steps, start=start, noise=noise)
        attack_student.train(was)
    robust_weight = robust_mask_weight(eg, dd)
    if sample_weight is not None:
        robust_weight = sample_weight if robust_weight is None else robust_weight * sample_weight
    return StudentBatch(anchor, robust_input, target, natural_input, natural_target, robust_weight, sample_weight)


def replayed_batch(
    eg,
    adv,
    anchor: torch.Tensor,
    natural_logits: torch.Tensor,
    robust_logits: torch.Tensor,
    attack_student,
    noise: Optional[torch.Tensor],
    eps: float,
) -> StudentBatch:
    """``stage2.replay_steps``: the student's inputs and targets on an earlier step's anchor x (from
    the bank, with T_nat(x) and T_rob(x) stored beside it). Only the anchor-side switches apply
    (config validation refuses the others): L_1 = KL(T_nat(x) ‖ S(x)); L_2 on x_adv, the student's
    inner maximiser in the ε-ball of x started at RSLAD's x + 0.001·noise (a replayed anchor has
    no x_d), towards t = T_rob(x) (``anchor``) or ``agreed_robust_target`` (``agreed``)."""
    target = (
        agreed_robust_target(natural_logits, robust_logits) if eg.robust_target == "agreed" else robust_logits
    ).float()
    was = attack_student.training
    attack_student.eval()
    alpha = adv.alpha if adv.alpha is not None else eps / 4
    robust_input = student_inner_max(
        attack_student,
        inner_max_target(adv.objective, target, attack_student, anchor),
        anchor,
        eps,
        alpha,
        adv.steps,
        noise=noise,
    )
    attack_student.train(was)
    return StudentBatch(anchor, robust_input, target, anchor, natural_logits.float())


def concat_batches(current: StudentBatch, earlier: StudentBatch) -> StudentBatch:
    """One micro-batch of [current; earlier] rows. Inputs that are one tensor in ``current`` (the
    natural term's input is the anchor G(z)) stay one tensor, so ``student_losses`` still sends
    each distinct input through the student once. Weighted batches are not concatenated
    (replay refuses robust_mask and class_balance)."""
    if current.robust_weight is not None or current.natural_weight is not None:
        raise ValueError("concat_batches: per-sample weights are not supported with replay")
    anchor = torch.cat([current.anchor, earlier.anchor])
    natural_input = (
        anchor if current.natural_input is current.anchor else torch.cat([current.natural_input, earlier.natural_input])
    )
    return StudentBatch(
        anchor,
        torch.cat([current.robust_input, earlier.robust_input]),
        torch.cat([current.robust_target.float(), earlier.robust_target.float()]),
        natural_input,
        torch.cat([current.natural_target.float(), earlier.natural_target.float()]),
    )


def student_losses(student, batch: StudentBatch, eg, temperature: float, natural_term: bool = True) -> StudentLosses:
    """λ_nat L_1 and λ_rob L_2 on one micro-batch; each distinct input goes through the student once
    (in this order: x_r, G(z), x_n — BatchNorm's running statistics see them in that order)."""
    logits: dict[int, torch.Tensor] = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        if id(x) not in logits:
            logits[id(x)] = student(x)
        return logits[id(x)]

    s_r = forward(batch.robust_input)
    s_clean = forward(batch.anchor) if eg.robust_clean_weight or eg.robust_self_weight else None
    l_2 = robust_distillation_loss(
        batch.robust_target,
        s_r,
        s_clean,
        temperature,
        eg.robust_clean_weight,
        batch.robust_weight,
        self_weight=eg.robust_self_weight,
    )
    l_1 = (
        eg.lambda_nat * kd_kl(batch.natural_target, forward(batch.natural_input), temperature, batch.natural_weight)
        if natural_term
        else torch.zeros((), device=l_2.device)
    )
    return StudentLosses(l_1, eg.lambda_rob * l_2 if natural_term else l_2, l_2.detach(), s_r.detach().argmax(1))
