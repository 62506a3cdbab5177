"""Multi-process CPU twins (gloo) of the data-parallel path."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY, launch_failure, two_cpu_processes

from derd_scale.trainer import check_ranks_in_sync

REPO = Path(__file__).resolve().parent.parent
# The toy run (conftest.TINY) with fewer steps: two processes pay for every step twice.
TINY_DDP = [*TINY, "stage1.steps=3", "stage2.steps=3"]


def test_digest_changes_with_any_parameter():
    from derd_scale.models import create_model

    m = create_model("small_cnn", 10, in_chans=1, width=4)
    a = check_ranks_in_sync(m)
    with torch.no_grad():
        next(m.parameters()).view(-1)[0] += 1e-7
    assert check_ranks_in_sync(m) != a


@pytest.mark.slow
def test_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    overrides = [x for item in TINY_DDP + [f"output.root={tmp_path}", "output.name=ddp"] for x in ("--set", item)]
    cmd, env = two_cpu_processes(REPO / "launch" / "train.py", *overrides)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert out.returncode == 0, launch_failure(out)
    summary = json.loads((tmp_path / "ddp" / "DONE").read_text())
    # Two synchronised processes (docs/platform.md's trap: a launch that starts one, or two that
    # never talk), and bit-identical replicas at the end (checked across ranks by the run).
    assert summary["world_size"] == 2
    assert len(summary["student_digest"]) == 64


@pytest.mark.slow
def test_the_sync_check_catches_an_unreduced_second_backward(tmp_path):
    cmd, env = two_cpu_processes(REPO / "tests" / "workers" / "silent_trap.py")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert out.returncode == 0, out.stdout[-1500:] + launch_failure(out)
    assert "TRAP_CAUGHT" in out.stdout and "diverged" in out.stdout


def test_mixed_precision_auto_follows_native_bf16(monkeypatch):
    import derd_scale.distributed as d

    cpu = torch.device("cpu")
    assert d.resolve_mixed_precision("no", cpu) == "no" and d.resolve_mixed_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(d, "native_bf16", lambda device: True)
    assert d.resolve_mixed_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(d, "native_bf16", lambda device: False)
    assert d.resolve_mixed_precision("auto", cpu) == "no"


def test_channels_last_changes_memory_format_not_the_step():
    """One Stage-II step with channels-last models equals the contiguous step within fp32 round-off."""
    from accelerate import Accelerator
    from conftest import tiny_models

    from derd_scale.config import config_from_dict
    from derd_scale.state import TrainState
    from derd_scale.trainer import build_training, stage2_step

    def step(channels_last: bool) -> dict:
        models = tiny_models()
        cfg = config_from_dict(
            {},
            [
                "data.name=fashion_mnist",
                "stage2.batch_size=8",
                "stage2.sa.steps=2",
                "stage2.sa.alpha=0.05",
                f"distributed.channels_last={str(channels_last).lower()}",
            ],
        )
        models, par, scheds, _ = build_training(cfg, Accelerator(cpu=True), models)
        assert models.student.model.features[3].weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        stage2_step(models, cfg, TrainState(stage="stage2"), scheds, par)
        return {k: v.detach().clone() for k, v in models.student.state_dict().items()}

    a, b = step(False), step(True)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k


@pytest.mark.parametrize(("mode", "compiled"), [("none", False), ("auto", False), ("default", True)])
def test_compile_applies_in_place_to_teachers_student_and_generator(mode, compiled):
    """distributed.compile: the same modules (state_dict keys unchanged) with a compiled forward;
    auto compiles on CUDA only, so on this CPU it is eager. Nothing runs here (no compilation)."""
    from accelerate import Accelerator
    from conftest import tiny_models

    from derd_scale.config import config_from_dict
    from derd_scale.trainer import build_training

    models = tiny_models()
    keys = list(models.student.state_dict())
    cfg = config_from_dict({}, ["data.name=fashion_mnist", f"distributed.compile={mode}"])
    models, par, _, _ = build_training(cfg, Accelerator(cpu=True), models)
    for name in ("natural_teacher", "robust_teacher", "student", "generator"):
        assert (getattr(models, name)._compiled_call_impl is not None) == compiled, name
    assert list(par.student.unwrapped.state_dict()) == keys
    # Copies (snapshots, EMA, the evaluation's attacked copy) run eager on their own weights:
    # nn.Module.__getstate__ drops the compiled forward, which is bound to the original module.
    assert par.student.snapshot()._compiled_call_impl is None
