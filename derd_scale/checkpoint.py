"""Checkpoints of a training run: save, load, the newest one, and a rehearsable preemption.

Layout: ``<run>/checkpoints/<stage>-<step:08d>/state.pt`` (written last, atomically, by the
main process: a folder without it is not a checkpoint) beside whatever the sharded backends
write there themselves (DeepSpeed ``save_checkpoint`` folders, FSDP2 ``torch.distributed.checkpoint``
shards). The two newest checkpoints are kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .distributed import Parallel
from .run_dir import RunDir
from .state import STAGES, Models, TrainState


def checkpoint_dirs(run: RunDir) -> list[Path]:
    dirs = [p for p in run.checkpoints.glob("*") if (p / "state.pt").exists()]
    return sorted(dirs, key=lambda p: (STAGES.index(p.name.split("-")[0]), int(p.name.split("-")[1])))


def save_checkpoint(run: RunDir, state: TrainState, models: Models, scheds: dict, par: Parallel) -> Path:
    """Every rank calls it. Sharded backends write their own shards first (DeepSpeed
    ``save_checkpoint``, FSDP2 ``torch.distributed.checkpoint``); the main process writes
    ``state.pt`` last, atomically — a folder without it is not a checkpoint."""
    accelerator = par.accelerator
    path = run.checkpoints / f"{state.stage}-{state.step:08d}"
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    entries = {name: adapter.save(path) for name, adapter in par.adapters.items()}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        blob = {
            "stage": state.stage,
            "step": state.step,
            "backend": par.backend,
            "world_size": par.world_size,
            "models": entries,
            "schedulers": {k: s.state_dict() for k, s in scheds.items()},
            "ema": state.ema.state_dict() if state.ema is not None else None,
            "natural_expert": models.natural_expert.state_dict() if models.natural_expert is not None and models.natural_expert is not models.natural_teacher and models.natural_expert is not state.ema else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        tmp = path / "state.pt.tmp"
        torch.save(blob, tmp)
        tmp.replace(path / "state.pt")  # atomic: a kill mid-write never leaves a torn checkpoint
        for old in checkpoint_dirs(run)[:-2]:  # keep the two newest
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(path: Path, state: TrainState, models: Models, scheds: dict, par: Parallel) -> None:
    """Every rank calls it; the layout (backend, process count) must match the saved one."""
    blob = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    saved = (blob.get("backend", "none"), blob.get("world_size", 1))
    sharded = any(a.sharded for a in par.adapters.values())
    if sharded and saved != (par.backend, par.world_size):
        raise RuntimeError(f"{path}: saved by backend {saved[0]} with {saved[1]} processes; a sharded checkpoint resumes only on the same layout ({par.backend}, {par.world_size})")
    state.stage, state.step = blob["stage"], blob["step"]
    for name, adapter in par.adapters.items():
        adapter.load(path, blob["models"][name])
    for k, s in scheds.items():
        if k in blob["schedulers"]:
            s.load_state_dict(blob["schedulers"][k])
    if blob.get("ema") is not None:
        state.ema = par.student.snapshot()
        state.ema.load_state_dict(blob["ema"])
    if blob.get("natural_expert") is not None:
        expert = par.student.snapshot()
        expert.load_state_dict(blob["natural_expert"])
        models.natural_expert = expert
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])


def maybe_simulate_preemption(stage: str, step: int) -> None:
    """Rehearse a preemption: DERD_SIMULATE_PREEMPTION=stage2:200 hard-exits right after that
    checkpoint (no cleanup, like a SIGKILL), so resume can be tested for real."""
    import os
    import sys

    if os.environ.get("DERD_SIMULATE_PREEMPTION") == f"{stage}:{step}":
        print(f"simulated preemption after checkpoint {stage}:{step}", file=sys.stderr, flush=True)
        os._exit(17)
