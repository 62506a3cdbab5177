"""derd_scale/optim.py: the student's two-stage schedule against hand values."""

import math

import pytest
import torch

from derd_scale.config import ConfigError, OptimizerConfig, config_from_dict
from derd_scale.optim import build_optimizer, build_two_stage_scheduler


def _lrs(stage1: int, stage2: int, oc: OptimizerConfig, stage2_scale: float = 1.0) -> list[float]:
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], oc)
    sched = build_two_stage_scheduler(opt, stage1, stage2, oc, stage2_scale)
    out = []
    for _ in range(stage1 + stage2):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_the_schedule_restarts_at_stage_two_from_the_same_peak():
    # cosine over 4 steps from 0.1: 0.1, 0.1·(1+cos(π/4))/2, 0.05, 0.1·(1+cos(3π/4))/2; then again.
    lrs = _lrs(4, 4, OptimizerConfig(lr=0.1))
    one = [0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05, 0.1 * (1 + math.cos(3 * math.pi / 4)) / 2]
    assert lrs == pytest.approx(one + one)


def test_stage2_lr_scale_sets_stage_two_peak_and_leaves_stage_one_alone():
    lrs = _lrs(2, 2, OptimizerConfig(lr=0.1), stage2_scale=0.2)
    # Stage I: 0.1, 0.05 (cosine over 2); Stage II: the same shape from 0.02.
    assert lrs == pytest.approx([0.1, 0.05, 0.02, 0.01])


def test_stage2_lr_scale_must_be_positive():
    with pytest.raises(ConfigError, match=r"^stage2\.lr_scale: must be > 0, got 0.0$"):
        config_from_dict({}, ["stage2.lr_scale=0.0"])
