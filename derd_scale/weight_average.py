"""Exponential moving averages of the student's weights: the one home of the EMA update.

Two users:

- ``StudentAverage`` (``stage2.student_ema``): the student that is probed, exported and
  evaluated is an EMA of its Stage-II weights. Weight averaging is a standard lever of robust
  training (Gowal et al. 2020, "Uncovering the limits of adversarial training", §4: an EMA of
  the weights adds robustness at no training cost): every Stage-II step of a data-free
  student sees a new synthetic batch and a new adversary, so the last iterate is noisy, and
  the average is a flatter point of the same trajectory.
- ``natural_expert.NaturalExpert`` in ``ema`` mode: an EMA of the student plays T_nat.

The update, after student step t (1-based) with warm-up (timm's ``ModelEmaV3``: early steps
weigh in fast, so a short Stage II is not dominated by where it started):

    d_t = min(decay, (1 + t) / (10 + t))
    θ̄_t = d_t θ̄_{t−1} + (1 − d_t) θ_t

for parameters and, with ``average_buffers``, floating-point buffers (BatchNorm's running
statistics follow the averaged weights); other buffers (counters) are copied.

``StudentAverage`` talks to the student only through its gradient adapter's ``snapshot`` and
``full_state_dict`` (collectives on the sharded backends, so every rank calls ``start``,
``update`` and ``load_state_dict``). Its state is part of every checkpoint, so a resumed run
averages exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def warmup_decay(decay: float, step: int) -> float:
    """d_t = min(decay, (1 + t) / (10 + t)) for student step ``step`` = t ≥ 1."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, current: dict, decay: float, average_buffers: bool = False) -> None:
    """θ̄ ← decay·θ̄ + (1 − decay)·θ for the parameters (and floating buffers with
    ``average_buffers``); the other buffers are copied from ``current`` (a full state dict)."""
    for name, e in ema.named_parameters():
        e.mul_(decay).add_(current[name].to(e.device, e.dtype), alpha=1 - decay)
    for name, b in ema.named_buffers():
        if name not in current:
            continue
        if average_buffers and b.is_floating_point():
            b.mul_(decay).add_(current[name].to(b.device, b.dtype), alpha=1 - decay)
        else:
            b.copy_(current[name])


def restored_snapshot(student, weights: dict) -> nn.Module:
    """A frozen copy of ``student`` (its ``snapshot()``) holding ``weights`` — how a checkpointed
    averaged/copied student comes back on resume, whatever wraps the live student."""
    copy = student.snapshot()
    copy.load_state_dict(weights)
    return copy


class StudentAverage:
    """The EMA of the student over Stage II (``stage2.student_ema``; 0 = off, the paper)."""

    def __init__(self, decay: float = 0.0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"stage2.student_ema: must be in [0, 1), got {decay}")
        self.decay = decay
        self.module: Optional[nn.Module] = None
        """The averaged student (frozen, unsharded, eval mode) once ``start`` ran; None when off."""

    @property
    def enabled(self) -> bool:
        return self.decay > 0.0

    def start(self, student) -> None:
        """At the start of Stage II: the average begins as a snapshot of ``student`` (a gradient
        adapter), unless it is off or a checkpoint restored it."""
        if self.enabled and self.module is None:
            self.module = student.snapshot()

    def update(self, student, step: int) -> None:
        """After Stage-II student step ``step`` (1-based): the average follows the student."""
        if self.module is not None:
            ema_update(self.module, student.full_state_dict(), warmup_decay(self.decay, step), average_buffers=True)

    def state_dict(self) -> Optional[dict]:
        return None if self.module is None else self.module.state_dict()

    def load_state_dict(self, entry: Optional[dict], student) -> None:
        """Restore what ``state_dict`` saved (a snapshot of ``student`` receives the weights)."""
        if entry is None or not self.enabled:
            return
        self.module = restored_snapshot(student, entry)
