"""The training loops end to end at toy scale: ablations, logging, run folder, exact resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from derd_scale.config import config_from_dict
from derd_scale.run_dir import RunExistsError

REPO = Path(__file__).resolve().parent.parent

TINY = [
    "data.name=fashion_mnist",
    "teachers.natural.arch=small_cnn",
    "teachers.natural.kwargs={width: 4}",
    "teachers.robust.arch=small_cnn",
    "teachers.robust.kwargs={width: 4}",
    "student.arch=small_cnn",
    "student.kwargs={width: 4}",
    "generator.latent_dim=16",
    "generator.base_channels=4",
    "generator.implicit_bank_size=32",
    "stage1.steps=4",
    "stage1.batch_size=8",
    "stage2.steps=4",
    "stage2.batch_size=8",
    "stage2.sa.steps=2",
    "eval.final=false",
    "eval.probe_attacks=[]",
    "logging.every_steps=1",
    "logging.progress_bar=false",
    "output.checkpoint_every=2",
]


def _train(tmp_path, *extra, name="run"):
    from derd_scale.trainer import train

    cfg = config_from_dict({}, TINY + [f"output.root={tmp_path}", f"output.name={name}", *extra])
    return train(cfg, "tiny")


ABLATIONS = {
    "full_derd": [],
    "no_stage1": ["stage1.enabled=false"],
    "sa_only": ["stage2.eg.enabled=false"],
    "sa_eg_sum": ["stage2.aggregation.method=sum"],
    "ga_without_sga": ["stage2.aggregation.method=ga"],
    "per_tensor": ["stage2.aggregation.granularity=per_tensor"],
    "natural_on_gz": ["stage2.eg.natural_data=gz"],
    "no_sa": ["stage2.sa.enabled=false"],
    "implicit_generator": ["generator.kind=implicit"],
    "student_as_natural": ["stage2.eg.natural_teacher=student"],
    "ema_as_natural": ["stage2.eg.natural_teacher=ema"],
    "sampled_labels": ["generator.pseudo_labels=sampled"],
    "sa_in_eps_ball": ["stage2.sa.ball=true", "stage2.eps=0.05"],
    "anchor_targets_x_adv": [
        "stage2.sa.ball=true",
        "stage2.eg.natural_data=gz",
        "stage2.eg.robust_target=anchor",
        "stage2.eg.robust_data=x_adv",
        "stage2.eg.robust_clean_weight=0.5",
        "stage2.adv.steps=2",
    ],
    "rslad_on_gz": [
        "stage2.eg.enabled=false",
        "stage2.sa.enabled=false",
        "stage2.eg.robust_target=anchor",
        "stage2.eg.robust_data=x_adv",
        "stage2.eg.robust_clean_weight=0.5",
        "stage2.adv.start=anchor",
        "stage2.adv.steps=2",
    ],
}


@pytest.mark.parametrize("variant", sorted(ABLATIONS))
def test_every_ablation_runs(tmp_path, variant):
    run = _train(tmp_path, *ABLATIONS[variant])
    records = run.read_metrics()
    stages = {r["stage"] for r in records}
    assert ("stage1" in stages) == (variant != "no_stage1")
    s2 = [r for r in records if r["stage"] == "stage2"]
    assert len(s2) == 4
    assert all(torch.isfinite(torch.tensor(r["l_2"])) for r in s2)
    robust_only = variant in ("sa_only", "rslad_on_gz")
    if not robust_only:
        for key in (
            "g1_norm",
            "g2_norm",
            "cos_g1_g2",
            "tau1",
            "tau2",
            "sga_norm",
            "d_before",
            "d_after",
            "flip_rate",
            "l_1",
        ):
            assert key in s2[-1], key
    assert (s2[-1].get("sga_norm", 0) > 0) == (not robust_only and variant not in ("sa_eg_sum", "ga_without_sga"))
    assert (run.student_dir / "model.safetensors").exists()
    assert run.is_finished()


def test_run_folder_holds_resolved_config_and_refuses_overwrite(tmp_path):
    run = _train(tmp_path)
    saved = (run.path / "config.yaml").read_text()
    assert "discrepancy_on: probs" in saved and "stage2:" in saved
    with pytest.raises(RunExistsError, match="finished run"):
        _train(tmp_path)
    _train(tmp_path, "output.overwrite=true")


def _student_state(run_path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_path / "student" / "model.safetensors"))


def test_kill_and_resume_gives_the_same_student(tmp_path):
    straight = _train(tmp_path, "stage1.steps=4", "stage2.steps=6", name="straight")
    args = [
        sys.executable,
        str(REPO / "launch" / "train.py"),
        "--set",
        f"output.root={tmp_path}",
        "--set",
        "output.name=resumed",
    ]
    for item in TINY + ["stage1.steps=4", "stage2.steps=6"]:
        args += ["--set", item]
    # Same intra-op thread count as this process (OpenMP and MKL alike: conftest's
    # set_num_threads overrides both here, an inherited MKL_NUM_THREADS would not be): float
    # reductions depend on it.
    threads = str(torch.get_num_threads())
    env = dict(os.environ, DERD_SIMULATE_PREEMPTION="stage2:2", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0 and "simulated preemption" in killed.stderr
    assert not (tmp_path / "resumed" / "DONE").exists()
    env.pop("DERD_SIMULATE_PREEMPTION")
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = _student_state(straight.path), _student_state(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # metrics of the resumed run continue where the killed one stopped
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["stage"] == "stage2"
    ]
    assert steps[-1] == 6


def test_cli_config_error_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "train.py"), "--set", "stage2.sa.stepz=3"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "config error: stage2.sa.stepz: unknown key; allowed: enabled, steps, alpha, lambda_d, discrepancy_on, chunk_size, ball"
    )


def test_train_help_documents_every_option():
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "train.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    from derd_scale.config import schema_lines

    for line in schema_lines():
        key = line.strip().split(" ")[0]
        assert key in out, key


def test_bf16_mixed_precision_runs_both_stages(tmp_path):
    run = _train(tmp_path, "distributed.mixed_precision=bf16", "stage1.steps=2", "stage2.steps=2")
    s2 = [r for r in run.read_metrics() if r["stage"] == "stage2"]
    assert len(s2) == 2 and all(
        torch.isfinite(torch.tensor([r["l_1"], r["l_2"], r["tau1"], r["cos_g1_g2"]])).all() for r in s2
    )
    # the student's master weights stay fp32 (autocast computes in bf16)
    from safetensors.torch import load_file

    assert all(
        t.dtype == torch.float32
        for t in load_file(str(run.student_dir / "model.safetensors")).values()
        if t.is_floating_point()
    )


def test_probe_runs_on_its_own_schedule(tmp_path, shared_data):
    run = _train(
        tmp_path,
        "eval.probe_attacks=[clean]",
        "eval.probe_examples=20",
        "eval.every_steps=3",
        "logging.every_steps=100",
        "data.source=parquet",
        f"data.path={shared_data}",
        "stage1.steps=6",
        "stage2.steps=3",
    )
    probed = [(r["stage"], r["step"]) for r in run.read_metrics() if "probe_clean" in r]
    assert probed == [("stage1", 3), ("stage1", 6), ("stage2", 3)]
