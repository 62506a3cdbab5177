"""What every registered method shares: the registry entry, the context a step hands it, and the
small pure pieces several baselines use (KL at a stated scale; the PGD step, its objectives
and the sources' starts live in ``derd_scale.linf``).

A method (``Method``) is two objectives and a schedule, never a loop:

    generator_objective(ctx, x, y) -> (L_G, parts)   x = G(z) (a leaf the loop differentiates),
                                                    y = G's labels or None; data-free methods only
    student_objective(ctx, batch)  -> (L_S, parts)   one micro-batch of the student's update

``derd_scale.trainer.method_step`` runs, per step, ``generator_steps`` G steps then
``student_steps`` student steps through the same gradient adapters as DERD (docs/baselines.md).
Everything here is pure: no process, optimiser or device knowledge. Randomness comes from
``ctx.noise`` — a draw for the *global* batch from (seed, step, …), sliced to this rank — so a
2-process run draws what the 1-process run draws.

Notation (BASELINES.md §0.1): KL_B(P ‖ Q) = (1/B) Σ_i Σ_c P_ic (log P_ic − log Q_ic) (batch
mean); KL_E = KL_B / K (PyTorch's element mean, which several repos use).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn as nn

from ..derd.losses import kl_per_sample


@dataclass
class Batch:
    """One micro-batch of the student's update: pixels in [0, 1] and, when there are any, labels
    (the real labels for the data-driven methods, G's sampled labels for a conditioned generator)."""

    x: torch.Tensor
    y: Optional[torch.Tensor] = None


@dataclass
class Context:
    """What an objective may use. Teachers are frozen and in eval mode; ``student`` is the module
    to train through (the backend's wrapper), ``plain_student`` the user's module inside it
    (input-gradient attacks and the generator's steps: no parameter gradient leaves them)."""

    natural_teacher: nn.Module
    robust_teacher: nn.Module
    student: nn.Module
    plain_student: nn.Module
    settings: Any
    """The run's ``baselines`` section (``config.BaselinesConfig``)."""
    eps: float
    """Training radius (stage2.eps, or the evaluation protocol's ε)."""
    num_classes: int
    progress: float = 0.0
    """Share of the run's steps done before this step (IAD's warm-up)."""
    state: dict = field(default_factory=dict)
    """The method's own running state (MTARD's weights, FERD's class probabilities): checkpointed."""
    noise: Callable[[tuple], torch.Tensor] = None  # type: ignore[assignment]
    """noise(shape) → N(0, 1) of this rank's share of a global draw; each call is a fresh stream."""
    uniform: Callable[[tuple], torch.Tensor] = None  # type: ignore[assignment]
    """uniform(shape) → U[0, 1) likewise (shape[0] is this rank's batch)."""
    shared_uniform: Callable[[tuple], torch.Tensor] = None  # type: ignore[assignment]
    """shared_uniform(shape) → U[0, 1), the same on every rank (e.g. one jitter for the whole batch)."""
    global_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    """Mean over ranks of a per-rank value (no gradient): running state stays equal on every rank."""
    all_gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    """This rank's rows of a global batch → the global batch's rows, in rank order (no gradient):
    running state built from batches (CMI's memory bank) stays equal on every rank."""
    batch_mean: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    """Differentiable global-batch mean of a per-rank batch mean (BN statistics, p̄); None in one process."""

    @property
    def alpha(self) -> float:
        """PGD step: baselines.attack_alpha, or ε/4 (2/255 at 8/255, the sources' value)."""
        a = self.settings.attack_alpha
        return a if a is not None else self.eps / 4

    def kl_scale(self, source_divisor: float) -> float:
        """1 (KL_B, the project's Decision) or 1/divisor (the repo's own scale, BASELINES.md §0.2)."""
        return 1.0 if self.settings.kl_scale == "batchmean" else 1.0 / source_divisor


@dataclass
class Method:
    """A registry entry (``derd_scale.methods.METHODS``)."""

    name: str
    data: str
    """"free" (a generator makes the batches) or "real" (the training split)."""
    student_objective: Callable[[Context, Batch], tuple[torch.Tensor, dict]]
    generator_objective: Optional[Callable[[Context, torch.Tensor, Optional[torch.Tensor]], tuple]] = None
    generator_steps: int = 0
    student_steps: int = 1
    student_batches: str = "fresh"
    """Where the student's batches come from: "fresh" (new z, or new real images, every student
    step), "reuse" (the last G step's images, as generated before that step: DAFL's joint step),
    "regenerate" (the last G step's z through the updated G: ZSKT)."""
    student_mode_in_generator_step: str = "eval"
    """BatchNorm mode of the student while G's objective runs through it ("train": batch statistics
    and running-statistics updates, as DFAD and ZSKT do)."""
    variants: tuple = ()
    """("kd", "rslad") for the clean-KD data-free methods (baselines.variant picks one)."""


# --------------------------------------------------------------------------------------
# KL and its scales
# --------------------------------------------------------------------------------------


def kl_b(target_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """τ²·KL_B(p_T^τ ‖ p_S^τ) with the target detached (a teacher's or a fixed soft label)."""
    t = temperature
    return kl_per_sample(target_logits.detach(), student_logits, t).mean() * (t * t)


@contextmanager
def mode(module: nn.Module, train: bool) -> Iterator[nn.Module]:
    """The module in train or eval mode for the duration, then back."""
    was = module.training
    module.train(train)
    try:
        yield module
    finally:
        module.train(was)


def kd_teacher(ctx: Context) -> nn.Module:
    """The teacher of a clean-KD data-free method: T_nat for ``-KD``, T_rob for ``-RSLAD`` (§0.3.2)."""
    return ctx.robust_teacher if ctx.settings.variant == "rslad" else ctx.natural_teacher
