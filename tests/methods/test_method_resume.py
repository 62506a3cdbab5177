"""A registered method's running state survives a kill: ``train()`` killed mid-run and re-run gives
the straight run's student bit for bit (MTARD's loss weights and first-batch losses; CMI's head,
its Adam moments and the memory bank — all ``TrainState.method_state``, checkpointed).

    .venv/bin/python -m pytest tests/methods/test_method_resume.py -q
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_same_student, subprocess_env

REPO = Path(__file__).resolve().parents[2]

# The toy run (conftest.TINY) as a baseline: Stage II's slot only, 5 steps, a checkpoint every 2.
METHOD_RUN = ["stage1.enabled=false", "stage2.steps=5", "stage2.eps=0.1", "baselines.attack_steps=2"]
CASES = {
    "mtard": ["method=mtard"],
    "cmi": ["method=cmi", "baselines.variant=rslad", "baselines.cmi.bank_size=12", "baselines.cmi.n_neg=6"],
}


def _run(tmp_path: Path, shared_data: Path, name: str, extra: list, env: dict) -> subprocess.CompletedProcess:
    args = [sys.executable, str(REPO / "launch" / "train.py")]
    data = ["data.source=parquet", f"data.path={shared_data}"]  # MTARD reads the real training split
    for item in TINY + METHOD_RUN + extra + data + [f"output.root={tmp_path}", f"output.name={name}"]:
        args += ["--set", item]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("method", list(CASES))
def test_a_killed_method_run_resumes_its_state_to_the_straight_runs_student(tmp_path, shared_data, method):
    env = subprocess_env()  # this process's thread count for OpenMP and MKL: float reductions depend on it
    straight = _run(tmp_path, shared_data, "straight", CASES[method], env)
    assert straight.returncode == 0, straight.stderr[-2000:]

    # Killed after step 3: the checkpoint of step 2 is the newest, so step 3 is redone from it and
    # the method state must come back as it was after step 2 (not as the killed process left it).
    killed = _run(tmp_path, shared_data, "resumed", CASES[method], subprocess_env(DERD_SIMULATE_PREEMPTION="stage2:3"))
    assert killed.returncode != 0 and "simulated preemption" in killed.stderr
    assert not (tmp_path / "resumed" / "DONE").exists()
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "stage2-00000002" / "state.pt", weights_only=True)
    state = saved["method_state"]
    if method == "mtard":
        assert state["w_nat"] != 0.5 and "l_adv0" in state  # two weight updates happened
        # A data-driven method has no generator: none is built, stepped or checkpointed.
        assert set(saved["models"]) == {"student"} and set(saved["schedulers"]) == {"student"}
    else:
        assert state["cmi_bank_filled"] == 12 and state["cmi_adam"]["t"] == 2  # 2 steps × 8 rows, 12-row bank
        assert set(saved["models"]) == {"student", "generator"}

    resumed = _run(tmp_path, shared_data, "resumed", CASES[method], env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr and "stage2 step 2" in resumed.stdout + resumed.stderr
    assert_same_student(tmp_path / "straight", tmp_path / "resumed")
