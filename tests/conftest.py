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
