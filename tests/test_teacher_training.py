"""Teacher training: each objective runs, a killed run resumes to the same weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _cmd(out, shared_data, method="pgd", epochs=2):
    return [sys.executable, str(REPO / "launch" / "train_teacher.py"), "--data-name", "fashion_mnist", "--data-source", "parquet",
            "--data-path", str(shared_data), "--arch", "small_cnn", "--model-kwargs", "{width: 4}", "--method", method,
            "--eps", "0.1", "--alpha", "0.05", "--attack-steps", "2", "--epochs", str(epochs), "--batch-size", "64",
            "--max-train-examples", "256", "--eval-examples", "64", "--eval-steps", "2", "--lr", "0.05", "--no-progress", "--out", str(out)]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_killed_teacher_run_resumes_to_the_same_weights(tmp_path, shared_data):
    straight = subprocess.run(_cmd(tmp_path / "a", shared_data), capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    env = dict(os.environ, DERD_SIMULATE_PREEMPTION="teacher:1")
    killed = subprocess.run(_cmd(tmp_path / "b", shared_data), capture_output=True, text=True, timeout=600, env=env)
    assert killed.returncode != 0 and "simulated preemption" in killed.stderr
    env.pop("DERD_SIMULATE_PREEMPTION")
    resumed = subprocess.run(_cmd(tmp_path / "b", shared_data), capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0 and "resumed" in resumed.stdout + resumed.stderr
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "b" / "metrics.json").exists()


@pytest.mark.parametrize("method", ["ce", "trades"])
def test_objectives_run_and_export_a_teacher_source(tmp_path, shared_data, method):
    from derd_scale.config import DataConfig, ModelConfig, OptimizerConfig
    from derd_scale.data import dataset_info
    from derd_scale.teacher_training import TeacherTrainConfig, train_teacher
    from derd_scale.teachers import model_from_config

    cfg = TeacherTrainConfig(data=DataConfig(name="fashion_mnist", source="parquet", path=str(shared_data)), model=ModelConfig(arch="small_cnn", kwargs={"width": 4}),
                             method=method, eps=0.1, alpha=0.05, attack_steps=2, epochs=1, batch_size=64, max_train_examples=128, eval_examples=32, eval_steps=2,
                             optim=OptimizerConfig(lr=0.05), out=str(tmp_path / method), progress=False)
    metrics = train_teacher(cfg)
    assert 0.0 <= metrics["pgd_s"] <= metrics["clean"] <= 1.0 and metrics["n"] == 32
    teacher = model_from_config(ModelConfig(arch=f"local-dir:{tmp_path / method}"), dataset_info("fashion_mnist"))
    assert teacher(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_bad_method_is_rejected():
    out = subprocess.run([sys.executable, str(REPO / "launch" / "train_teacher.py"), "--method", "madry", "--out", "x"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice: 'madry'" in out.stderr
