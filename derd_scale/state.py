"""What a training run holds: the models by role, and where in the run it is.

A small module of its own so that the trainer, the checkpoint component and the benchmarks
share the types without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn as nn

from .data import DatasetInfo

STAGES = ("stage1", "stage2")


@dataclass
class Models:
    natural_teacher: nn.Module
    robust_teacher: nn.Module
    student: nn.Module
    generator: nn.Module
    info: DatasetInfo
    natural_expert: Optional[nn.Module] = None
    """Who plays T_nat in Stage II: the natural teacher, a frozen student snapshot, or an EMA of the student."""


@dataclass
class TrainState:
    stage: str = "stage1"
    step: int = 0
    ema: Optional[nn.Module] = None
    """EMA of the student when it plays the natural expert (stage2.eg.natural_teacher=ema)."""
    train_seconds: float = 0.0
    """Wall time spent in the training loops, summed over every resume (saved in checkpoints)."""
