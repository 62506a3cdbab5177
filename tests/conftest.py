"""Shared fixtures. Real data is read from ../shared/data (never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
WEIGHTS = SHARED_DATA / "weights"

# Two cores: keep intra-op threads bounded so parallel subprocess tests do not thrash.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"missing shared data at {path}; tests read ../shared/data beside the repo")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return _need(WEIGHTS)


@pytest.fixture(scope="session")
def cifar10_test(shared_data):
    from derd_scale.config import DataConfig
    from derd_scale.data import load_dataset_split

    ds, info = load_dataset_split(DataConfig(name="cifar10", source="parquet", path=str(shared_data)), "test")
    ds.tensors()
    return ds, info


@pytest.fixture
def hub_offline(monkeypatch):
    """Make huggingface_hub fail fast as it does without network (its constants are read at import)."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    try:
        import datasets.config as dc

        monkeypatch.setattr(dc, "HF_HUB_OFFLINE", True, raising=False)
    except ImportError:
        pass


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps a process-wide singleton; each test may ask for its own precision."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


def free_port() -> str:
    """A free TCP port for a multi-process launch's rendezvous (never the shared default 29500,
    which parallel launches on the same machine would fight over)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def two_cpu_processes(script, *args: str) -> tuple[list[str], dict]:
    """``accelerate launch`` of ``script`` as two synchronised CPU processes (gloo), and its env.
    ACCELERATE_USE_CPU: without it ``--multi_gpu`` on a CPU machine starts two processes that never
    talk (docs/platform.md); a free port: parallel launches must not share 29500."""
    import shutil
    import sys

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--main_process_port", free_port(), "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*cmd, str(script), *args], dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")


def launch_failure(proc) -> str:
    """A failed launch's message: the first child traceback, then the tail. A launcher's own
    ChildFailedError summary fills the tail and hides why the ranks died."""
    err = proc.stderr or ""
    start = err.find("Traceback")
    head = err[start : start + 3000] + "\n...\n" if 0 <= start < len(err) - 1500 else ""
    return f"exit {proc.returncode}\n{head}{err[-1500:]}"


# --------------------------------------------------------------------------------------
# The toy run: the end-to-end tests' training run (tests/test_trainer.py, test_run_safety.py,
# test_bad_inputs.py, test_trackers.py): small CNNs on Fashion-MNIST, a few steps, a
# checkpoint every 2 steps, every step logged.
# --------------------------------------------------------------------------------------

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


def tiny_config(root: Path, *extra: str, name: str = "run"):
    """The toy run's config, its folder ``root/name``, with ``extra`` dotted overrides."""
    from derd_scale.config import config_from_dict

    return config_from_dict({}, TINY + [f"output.root={root}", f"output.name={name}", *extra])


def train_tiny(root: Path, *extra: str, name: str = "run"):
    """Train the toy run in this process; returns its ``RunDir``."""
    from derd_scale.trainer import train

    return train(tiny_config(root, *extra, name=name), "tiny")


def tiny_models(*, base_channels: int = 4, seed: int = 0):
    """The toy Fashion-MNIST ``Models`` the step-level tests build: two frozen width-4 SmallCNN
    experts (T_nat, T_rob), a trainable width-4 student and a 16-dim generator, drawn in that
    order after ``torch.manual_seed(seed)`` so a test and its hand-built reference see the same
    weights."""
    from derd_scale.data import dataset_info
    from derd_scale.derd.generator import PseudoImageGenerator
    from derd_scale.models import create_model, freeze
    from derd_scale.state import Models

    torch.manual_seed(seed)
    natural_teacher = freeze(create_model("small_cnn", 10, in_chans=1, width=4))
    robust_teacher = freeze(create_model("small_cnn", 10, in_chans=1, width=4))
    student = create_model("small_cnn", 10, in_chans=1, width=4)
    generator = PseudoImageGenerator(28, 1, latent_dim=16, base_channels=base_channels)
    return Models(natural_teacher, robust_teacher, student, generator, dataset_info("fashion_mnist"))


class Interrupted(Exception):
    """What ``interrupted_run``'s preemption hook raises instead of exiting."""


def interrupted_run(root: Path, monkeypatch, at: str, *extra: str, name: str = "run") -> Path:
    """Train the toy run until just after step ``at`` ("stage2:3") and its checkpoint, if one
    is due, and stop there as a kill would (``checkpoint.maybe_simulate_preemption``, raising
    here instead of exiting the test process). Returns the run folder."""
    import derd_scale.trainer as trainer

    def hook(stage, step, phase=""):
        if f"{stage}:{step}" == at and not phase:
            raise Interrupted(at)

    monkeypatch.setattr(trainer, "maybe_simulate_preemption", hook)
    with pytest.raises(Interrupted):
        train_tiny(root, *extra, name=name)
    monkeypatch.undo()
    return root / name


def student_weights(run_path: Path) -> dict:
    """The exported student's tensors (``<run>/student/model.safetensors``)."""
    from safetensors.torch import load_file

    return load_file(str(run_path / "student" / "model.safetensors"))


def assert_same_student(a: Path, b: Path) -> None:
    """The two runs exported bitwise the same student."""
    sa, sb = student_weights(a), student_weights(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def subprocess_env(**extra: str) -> dict:
    """The environment for a training subprocess: this one without the rehearsal hooks, with
    this process's intra-op thread count for OpenMP and MKL alike (float reductions depend on
    it; conftest's set_num_threads overrides both here, an inherited MKL_NUM_THREADS would
    not be), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("DERD_SIMULATE_PREEMPTION", "DERD_INJECT_NAN")}
    threads = str(torch.get_num_threads())
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, **extra)
    return env


def load_bench(name: str):
    """``bench/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
