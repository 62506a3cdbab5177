"""DERD's losses as pure functions (equation numbers from docs/method.md).

Stage I generator loss, Eq. 11:
    L_G = λ_oh L_oh + λ_a L_a + λ_BN L_BN + λ_ie L_ie (+ λ_tv L_tv, our ViT prior)
Student losses: Eq. 12 (KL to T_nat on G(z)) and Eq. 17 (L_Dis = L_1 + λ_rob L_2 on x_d).
Discrepancy D (inside Eqs. 13–16): batch-mean L1 distance of the two teachers' outputs.

Every function works on a batch and returns a scalar; nothing here knows about devices,
processes or optimisers. The two losses built from *batch statistics* (L_BN, L_ie) take an
optional ``batch_mean``: a function that turns a per-process batch mean into the mean over
the global batch (identity in one process; a differentiable all-reduce when the batch is
split across processes — ``derd_scale.distributed`` passes it). Every other term is a
per-sample mean, which data-parallel gradient averaging already makes global.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def one_hot_loss(logits: torch.Tensor, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 6: L_oh = mean_i CE(T(G(z_i)), ŷ_i), ŷ = argmax T(G(z)) unless targets are given."""
    if targets is None:
        targets = logits.detach().argmax(dim=1)
    return F.cross_entropy(logits, targets)


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """Eq. 7: L_a = −mean |Feat(G(z))| (per-element mean, so the scale ignores the width)."""
    return -features.abs().mean()


BatchMean = Callable[[torch.Tensor], torch.Tensor]


def information_entropy_loss(logits: torch.Tensor, batch_mean: Optional[BatchMean] = None) -> torch.Tensor:
    """Eq. 10 (soft): L_ie = −H(p̄), p̄ = mean_i softmax(T(G(z_i))), H(p) = −(1/k) Σ_c p_c log p_c.

    Minimising it maximises the entropy of the batch's class distribution (balanced classes).
    p̄ is over the global batch when ``batch_mean`` is given (see the module docstring).
    """
    p_mean = F.softmax(logits.float(), dim=1).mean(dim=0)
    if batch_mean is not None:
        p_mean = batch_mean(p_mean)
    k = logits.shape[1]
    entropy = -(p_mean * torch.log(p_mean.clamp_min(1e-12))).sum() / k
    return -entropy


def total_variation_loss(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV prior: mean |x[h+1]−x[h]| + mean |x[w+1]−x[w]| (keeps ViT pseudo images smooth)."""
    dh = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean()
    dw = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean()
    return dh + dw


def kd_kl(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    temperature: float = 1.0,
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Eqs. 12/17: KL(softmax(T/t) ‖ softmax(S/t)), batch-mean, scaled by t² (Hinton) so the
    gradient magnitude does not depend on t.

    ``weight`` (B,): (1/B) Σ_i w_i KL_i instead — still divided by the batch size, not by Σ w, so
    a masked sample adds nothing and the normalisation does not depend on how many were kept
    (the same on every rank and micro-batch split)."""
    t = temperature
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    if weight is None:
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)
    per_sample = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)
    return (weight.to(per_sample.dtype) * per_sample).sum() / per_sample.shape[0] * (t * t)


def kl_per_sample(target_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_T^τ(x_i) ‖ p_S^τ(x_i)) per sample (no τ² factor); gradients flow into both arguments
    (TRADES's KL(p_S(x) ‖ p_S(x')) needs that; a teacher's target is detached by the caller)."""
    log_p = F.log_softmax(target_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def discrepancy(natural_logits: torch.Tensor, robust_logits: torch.Tensor, on: str = "probs") -> torch.Tensor:
    """D = mean_i ‖T_nat(x_i) − T_rob(x_i)‖₁ on softmax probabilities (Decision) or on logits."""
    if on == "probs":
        a, b = F.softmax(natural_logits, dim=1), F.softmax(robust_logits, dim=1)
    elif on == "logits":
        a, b = natural_logits, robust_logits
    else:
        raise ValueError(f"discrepancy_on: {on!r}; allowed: probs, logits")
    return (a - b).abs().sum(dim=1).mean()


# --------------------------------------------------------------------------------------
# Eq. 8: BatchNorm statistics via forward hooks
# --------------------------------------------------------------------------------------


class BNStatistics:
    """Collects, per BatchNorm layer of a model, the distance between the batch statistics
    of the layer's input and the layer's running statistics (Eq. 8):

        L_BN = Σ_l ‖μ_l(x) − running_mean_l‖₂ + ‖σ²_l(x) − running_var_l‖₂

    Use as a context manager so the hooks are always removed::

        with BNStatistics(teacher) as bn:
            logits = teacher(x)
            loss = bn.loss()

    The hooks record the first two moments of (x − running_mean) per channel, in fp32; μ and
    σ² (biased) follow from them. Shifting by the running mean (the same constant on every
    process) keeps the one-pass variance accurate, and lets ``batch_mean`` turn the
    per-process moments of all layers into global-batch moments with one collective.
    """

    _warned: set[int] = set()

    def __init__(self, model: nn.Module, batch_mean: Optional[BatchMean] = None):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.batch_mean = batch_mean
        self.handles: list = []
        self.moments: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        if not self.layers and id(type(model)) not in BNStatistics._warned:
            BNStatistics._warned.add(id(type(model)))
            warnings.warn(
                f"{type(model).__name__} has no BatchNorm layers: L_BN contributes 0 (use the TV/feature priors)",
                stacklevel=2,
            )

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        rm, rv = module.running_mean.detach().float(), module.running_var.detach().float()
        shape = [1, -1] + [1] * (x.dim() - 2)
        d = x - rm.view(shape)
        self.moments.append((d.mean(dim=dims), d.pow(2).mean(dim=dims), rm, rv))

    def __enter__(self) -> "BNStatistics":
        self.moments = []
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def loss(self) -> torch.Tensor:
        if not self.moments:
            return torch.zeros(())
        flat = torch.cat([torch.cat([m1, m2]) for m1, m2, _, _ in self.moments])
        if self.batch_mean is not None:
            flat = self.batch_mean(flat)  # one collective for all layers
        terms, offset = [], 0
        for _, _, rm, rv in self.moments:
            c = rm.numel()
            m1, m2 = flat[offset : offset + c], flat[offset + c : offset + 2 * c]
            offset += 2 * c
            mean, var = rm + m1, m2 - m1 * m1
            terms.append(torch.linalg.vector_norm(mean - rm) + torch.linalg.vector_norm(var - rv))
        return torch.stack(terms).sum()


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration (teachers while crafting)."""
    was_training = module.training
    flags = [p.requires_grad for p in module.parameters()]
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        module.train(was_training)
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def generator_loss(
    teacher,
    images: torch.Tensor,
    lambda_oh: float,
    lambda_a: float,
    lambda_bn: float,
    lambda_ie: float,
    lambda_tv: float = 0.0,
    targets: Optional[torch.Tensor] = None,
    batch_mean: Optional[BatchMean] = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 11 on a (frozen, eval-mode) teacher with ``forward_with_features``.

    Returns (L_G, teacher logits, parts) — the logits are reused as Stage I's KD target.
    ``batch_mean`` makes L_BN and L_ie global-batch statistics (module docstring). A term whose
    weight is 0 is not computed and is logged as 0 (L_BN, L_TV).
    """
    # λ_BN = 0 (the ViT configs: LayerNorm only) hooks nothing and so warns of no missing BatchNorm.
    with BNStatistics(teacher, batch_mean) if lambda_bn else nullcontext() as bn:
        logits, features = teacher.forward_with_features(images)
    l_oh = one_hot_loss(logits, targets)
    l_a = activation_loss(features)
    l_bn = bn.loss().to(images.device) if bn is not None else torch.zeros((), device=images.device)
    l_ie = information_entropy_loss(logits, batch_mean)
    l_tv = total_variation_loss(images) if lambda_tv > 0 else torch.zeros((), device=images.device)
    total = lambda_oh * l_oh + lambda_a * l_a + lambda_bn * l_bn + lambda_ie * l_ie + lambda_tv * l_tv
    parts = {
        "l_oh": l_oh.detach(),
        "l_a": l_a.detach(),
        "l_bn": l_bn.detach(),
        "l_ie": l_ie.detach(),
        "l_tv": l_tv.detach(),
        "l_g": total.detach(),
    }
    return total, logits, parts


GENERATOR_WEIGHTS = ("lambda_oh", "lambda_a", "lambda_bn", "lambda_ie", "lambda_tv", "lambda_adv", "lambda_robust_g")
"""The weights of G's objective (stage1.*): Eq. 11's five and the two additions."""


def diversified_weights(weights: dict[str, float], uniforms: torch.Tensor) -> dict[str, float]:
    """DataFreeShield's diversified sample synthesis (Lee et al., ICML 2024, Sec. 4.1) on G's objective:
    λ_i ← u_i·λ_i with u_i ~ U(0, 1), one draw per term and per G update (``uniforms``, ordered as
    ``weights``). The source samples its synthesis loss's coefficients per batch so that batches come
    from differently weighted objectives; here the configured λ keeps each term's scale and the draw
    varies the mix. Zero weights stay zero (a term that is off stays off)."""
    if uniforms.shape != (len(weights),):
        raise ValueError(
            f"diversified_weights: {len(weights)} weights need as many uniforms, got {tuple(uniforms.shape)}"
        )
    return {name: float(u) * w for (name, w), u in zip(weights.items(), uniforms.tolist())}
