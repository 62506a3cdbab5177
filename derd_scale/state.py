"""What a training run holds: the models by role, and where in the run it is.

A small module of its own so that the trainer, the checkpoint component and the benchmarks
share the types without importing each other. After ``distributed.prepare`` the trained
models and the natural expert have one owner each: ``par.student`` / ``par.generator``
(gradient adapters) and ``par.natural_expert`` (``derd_scale.natural_expert``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch.nn as nn

from .data import DatasetInfo

STAGES = ("stage1", "stage2")


@dataclass
class Models:
    natural_teacher: nn.Module
    robust_teacher: nn.Module
    student: nn.Module
    """The student as built. ``prepare`` replaces it by its adapter's ``module`` (the same
    object as ``par.student.module``, not a second copy): after it, ``par.student`` owns the student."""
    generator: Optional[nn.Module]
    """Likewise: after ``prepare``, ``par.generator.module``. None for a registered method that
    reads the real training split (``methods.base.Method.data == "real"``): nothing is generated,
    so no generator is built, wrapped, stepped or checkpointed."""
    info: DatasetInfo


@dataclass
class TrainState:
    stage: str = "stage1"
    step: int = 0
    train_seconds: float = 0.0
    """Wall time spent in the training loops, summed over every resume (saved in checkpoints)."""
    method_state: dict = field(default_factory=dict)
    """A baseline's running state (MTARD's weights, FERD's class probabilities; saved in checkpoints)."""
    replay: Any = None
    """Stage I's replay bank (``derd.replay.ReplayBank``) when stage1.replay_steps > 0; each rank
    saves its own beside the Stage-I checkpoints."""
    replay2: Any = None
    """Stage II's replay bank when stage2.replay_steps > 0; each rank saves its own beside the
    Stage-II checkpoints."""
