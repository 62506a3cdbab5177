"""Optimisers and learning-rate schedules: the one builder the trainers, benchmarks and tests call.

optimizer = build_optimizer(model.parameters(), cfg.optim.student)
scheduler = build_two_stage_scheduler(optimizer, stage1_steps, stage2_steps, cfg.optim.student)
"""

from __future__ import annotations

import math

import torch

from .config import OptimizerConfig


def build_optimizer(params, oc: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if oc.name == "sgd":
        return torch.optim.SGD(params, lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay)
    if oc.name == "adam":
        return torch.optim.Adam(params, lr=oc.lr, betas=tuple(oc.betas), weight_decay=oc.weight_decay)
    return torch.optim.AdamW(params, lr=oc.lr, betas=tuple(oc.betas), weight_decay=oc.weight_decay)


def lr_multiplier(step: int, total: int, oc: OptimizerConfig) -> float:
    """Linear warm-up, then constant / cosine to 0 / step decay at fractions of the stage."""
    if oc.warmup_steps and step < oc.warmup_steps:
        return (step + 1) / oc.warmup_steps
    if oc.schedule == "constant" or total <= 0:
        return 1.0
    progress = min(1.0, (step - oc.warmup_steps) / max(1, total - oc.warmup_steps))
    if oc.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return oc.gamma ** sum(progress >= m for m in oc.milestones)


def build_scheduler(optimizer, total: int, oc: OptimizerConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, total, oc))


def build_two_stage_scheduler(
    optimizer, stage1_steps: int, stage2_steps: int, oc: OptimizerConfig, stage2_scale: float = 1.0
):
    """One LambdaLR over the student's whole life: Stage I's schedule, then Stage II's from the
    start, peaking at ``stage2_scale`` × ``oc.lr`` (1: the same peak as Stage I)."""

    def multiplier(s: int) -> float:
        if s < stage1_steps:
            return lr_multiplier(s, stage1_steps, oc)
        return stage2_scale * lr_multiplier(s - stage1_steps, stage2_steps, oc)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
