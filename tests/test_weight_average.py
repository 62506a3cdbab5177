"""derd_scale/weight_average.py: the EMA update against hand values, and the shipped student
of a run with ``stage2.student_ema`` (exported = the average, resumed bitwise)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import assert_same_student, interrupted_run, student_weights, train_tiny

from derd_scale.weight_average import StudentAverage, ema_update, warmup_decay


def test_warmup_decay_hand_values():
    assert warmup_decay(0.99, 1) == pytest.approx(2 / 11)  # (1 + 1) / (10 + 1): the first steps weigh in fast
    assert warmup_decay(0.99, 80) == pytest.approx(81 / 90)
    assert warmup_decay(0.99, 1000) == 0.99  # the configured decay once (1 + t) / (10 + t) passes it


def _net(value: float) -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for t in net.state_dict().values():
            t.fill_(value)
    return net


@pytest.mark.parametrize("average_buffers", [False, True])
def test_ema_update_hand_values(average_buffers):
    ema, current = _net(1.0), _net(3.0)
    ema_update(ema, current.state_dict(), 0.75, average_buffers=average_buffers)
    sd = ema.state_dict()
    assert torch.equal(sd["0.weight"], torch.full((2, 2), 1.5))  # 0.75·1 + 0.25·3
    assert torch.equal(sd["1.bias"], torch.full((2,), 1.5))
    running = 1.5 if average_buffers else 3.0  # BatchNorm statistics averaged, or copied
    assert torch.equal(sd["1.running_mean"], torch.full((2,), running))
    assert torch.equal(sd["1.running_var"], torch.full((2,), running))
    assert int(sd["1.num_batches_tracked"]) == 3  # an integer buffer is always copied


def test_student_average_off_keeps_nothing_and_bad_decay_is_refused():
    average = StudentAverage(0.0)
    average.start(student=None)  # off: never touches the student
    average.update(student=None, step=1)
    assert average.module is None and average.state_dict() is None
    with pytest.raises(ValueError, match="stage2.student_ema"):
        StudentAverage(1.0)


def test_the_exported_student_is_the_stage2_average(tmp_path):
    from derd_scale.checkpoint import read_checkpoint_state

    run = train_tiny(tmp_path, "stage2.student_ema=0.9")
    blob = read_checkpoint_state(run.path / "checkpoints" / "stage2-00000004")
    average, live = blob["student_average"], blob["models"]["student"]["model"]
    exported = student_weights(run.path)
    strip = {k[len("model.") :]: v for k, v in average.items() if k.startswith("model.")} or average
    assert exported.keys() == strip.keys()
    for k in exported:
        assert torch.equal(exported[k], strip[k]), k
    # ... and not the last iterate: four steps of warm-up decay leave the average behind it.
    live = {k[len("model.") :]: v for k, v in live.items() if k.startswith("model.")} or live
    assert any(not torch.equal(exported[k], live[k]) for k in exported if exported[k].is_floating_point())


def test_a_resumed_run_averages_as_an_uninterrupted_one(tmp_path, monkeypatch):
    straight = train_tiny(tmp_path, "stage2.student_ema=0.9", name="straight")
    run_path = interrupted_run(tmp_path, monkeypatch, "stage2:3", "stage2.student_ema=0.9")  # resumes from step 2
    train_tiny(tmp_path, "stage2.student_ema=0.9")
    assert_same_student(straight.path, run_path)
