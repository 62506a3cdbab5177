"""Checkpoints of a training run: save, load, resume with fallback, and rehearsals of failure.

Layout: ``<run>/checkpoints/<stage>-<step:08d>/state.pt`` (written last, atomically and
fsync'ed, by the main process: a folder without it is not a checkpoint) beside whatever the
sharded backends write there themselves (DeepSpeed ``save_checkpoint`` folders, FSDP2
``torch.distributed.checkpoint`` shards). The two newest checkpoints are kept.

``resume`` loads the newest checkpoint whose ``state.pt`` reads back; an unreadable one
(truncated, garbage) is named in a warning, renamed ``<name>.unreadable`` and the one
before it is used. The caller checks parameters are finite before ``save_checkpoint``
(``trainer.train``), so a diverged state never replaces the last good checkpoint.

Test hooks (environment variables, read at the moment they fire):
  DERD_SIMULATE_PREEMPTION=stage2:5        hard-exit (like SIGKILL) after step 5 and its checkpoint, if one is due
  DERD_SIMULATE_PREEMPTION=stage2:4:save   hard-exit inside step 4's checkpoint, before state.pt is in place
  DERD_INJECT_NAN=stage2:3                 fill a student weight with NaN right before step 3 (its losses go NaN)
  DERD_INJECT_NAN=stage2:4:after           ... right after step 4 (the check before its checkpoint catches it)
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch

from .distributed import Parallel
from .errors import ResumeError
from .run_dir import RunDir
from .state import STAGES, Models, TrainState

REQUIRED_KEYS = ("stage", "step", "models", "schedulers", "torch_rng")


def checkpoint_dirs(run: RunDir) -> list[Path]:
    """Complete checkpoints (a ``state.pt``), oldest first."""
    return run.checkpoint_dirs()


def _stage_bank(state: TrainState):
    """The replay bank of the checkpoint's stage, if that stage keeps one."""
    return state.replay if state.stage == "stage1" else state.replay2


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
    bank = _stage_bank(state)
    if bank is not None:  # each stage's own bank (Stage II never reads Stage I's again)
        bank.save(path, par.rank)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        blob = {
            "stage": state.stage,
            "step": state.step,
            "train_seconds": state.train_seconds,
            "method_state": state.method_state,  # a baseline's running state (docs/baselines.md)
            "backend": par.backend,
            "world_size": par.world_size,
            "models": entries,
            "schedulers": {k: s.state_dict() for k, s in scheds.items()},
            "expert": par.natural_expert.state_dict(),  # the student's snapshot or EMA, if it plays T_nat
            "student_average": par.student_average.state_dict(),  # stage2.student_ema's average, once Stage II began
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        tmp = path / "state.pt.tmp"
        with open(tmp, "wb") as fh:
            torch.save(blob, fh)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename makes it the checkpoint
        maybe_simulate_preemption(state.stage, state.step, "save")
        tmp.replace(path / "state.pt")  # atomic: a kill mid-write never leaves a torn checkpoint
        for old in checkpoint_dirs(run)[:-2]:  # keep the two newest
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return path


def read_checkpoint_state(path: Path) -> dict:
    """``path/state.pt``, checked: ``ResumeError`` naming the file and what is wrong."""
    file = Path(path) / "state.pt"
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — a torn or garbage file raises many types
        text = " ".join(str(err).split()) or type(err).__name__
        raise ResumeError(f"{file}: unreadable ({type(err).__name__}: {text[:200]})") from None
    if not isinstance(blob, dict):
        raise ResumeError(f"{file}: not a derd_scale checkpoint (a {type(blob).__name__}, not a mapping)")
    missing = [k for k in REQUIRED_KEYS if k not in blob]
    if missing:
        raise ResumeError(f"{file}: not a derd_scale checkpoint (missing {', '.join(missing)})")
    if blob["stage"] not in STAGES or not isinstance(blob["step"], int):
        raise ResumeError(f"{file}: bad stage/step {blob['stage']!r}/{blob['step']!r}")
    return blob


def load_checkpoint(
    path: Path, state: TrainState, models: Models, scheds: dict, par: Parallel, blob: Optional[dict] = None
) -> None:
    """Every rank calls it; the layout (backend, process count) must match the saved one."""
    blob = blob if blob is not None else read_checkpoint_state(path)
    saved = (blob.get("backend", "none"), blob.get("world_size", 1))
    sharded = any(a.sharded for a in par.adapters.values())
    if sharded and saved != (par.backend, par.world_size):
        raise ResumeError(
            f"{path}: saved by backend {saved[0]} with {saved[1]} processes; a sharded checkpoint resumes only on the same layout ({par.backend}, {par.world_size})"
        )
    state.stage, state.step = blob["stage"], blob["step"]
    state.train_seconds = float(blob.get("train_seconds", 0.0))
    state.method_state = dict(blob.get("method_state", {}))
    bank = _stage_bank(state)
    if bank is not None:
        bank.load(path, par.rank, par.accelerator.device)
    for name, adapter in par.adapters.items():
        adapter.load(path, blob["models"][name])
    for k, s in scheds.items():
        if k in blob["schedulers"]:
            s.load_state_dict(blob["schedulers"][k])
    # Checkpoints written before NaturalExpert keep the copy under "ema" / "natural_expert".
    par.natural_expert.load_state_dict(
        blob["expert"] if "expert" in blob else par.natural_expert.legacy_entry(blob), par.student
    )
    par.student_average.load_state_dict(blob.get("student_average"), par.student)
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])


def resume(run: RunDir, candidates: list[Path], state: TrainState, models: Models, scheds: dict, par: Parallel) -> Path:
    """Load the newest of ``candidates`` whose ``state.pt`` reads back; each unreadable newer
    one is named in a warning and renamed ``<name>.unreadable`` (kept for inspection, no
    longer a checkpoint). Every rank calls it; ``ResumeError`` when none is readable."""
    unreadable: list[tuple[Path, str]] = []
    chosen, blob = None, None
    for path in reversed(candidates):
        try:
            blob = read_checkpoint_state(path)
        except ResumeError as err:
            unreadable.append((path, str(err)))
            continue
        chosen = path
        break
    if chosen is None:
        first = unreadable[0][1] if unreadable else "none found"
        raise ResumeError(
            f"no readable checkpoint in {run.checkpoints}: {first}; move the folder away, or set "
            f"output.resume=false output.overwrite=true to start over"
        )
    for path, reason in unreadable:
        warnings.warn(
            f"checkpoint {path / 'state.pt'} is unreadable ({reason.split(': ', 1)[-1]}); resuming from {chosen.name} instead "
            f"(the folder is kept as {path.name}.unreadable)",
            stacklevel=2,
        )
    load_checkpoint(chosen, state, models, scheds, par, blob)
    par.accelerator.wait_for_everyone()
    if par.accelerator.is_main_process:
        for path, _ in unreadable:
            target = path.with_name(path.name + ".unreadable")
            if target.exists():
                shutil.rmtree(target)
            path.rename(target)
    par.accelerator.wait_for_everyone()
    return chosen


def maybe_simulate_preemption(stage: str, step: int, phase: str = "") -> None:
    """Rehearse a preemption: DERD_SIMULATE_PREEMPTION=stage2:200 hard-exits after that step
    (and its checkpoint, if one was due); ``stage2:200:save`` inside that step's checkpoint,
    after the shards and ``state.pt.tmp`` are written but before ``state.pt`` is in place.
    No cleanup (``os._exit``, like a SIGKILL), so resume can be tested for real."""
    wanted = f"{stage}:{step}" + (f":{phase}" if phase else "")
    if os.environ.get("DERD_SIMULATE_PREEMPTION") == wanted:
        print(f"simulated preemption at {wanted}", file=sys.stderr, flush=True)
        os._exit(17)


def maybe_inject_nan(stage: str, step: int, phase: str, models: Models) -> None:
    """Rehearse a divergence: DERD_INJECT_NAN=stage2:3 fills the student's first weight with
    NaN right before step 3 (``phase`` "before"); ``stage2:3:after`` right after it."""
    spec = os.environ.get("DERD_INJECT_NAN")
    if not spec:
        return
    parts = spec.split(":")
    if parts[:2] == [stage, str(step)] and (parts[2] if len(parts) > 2 else "before") == phase:
        with torch.no_grad():
            next(p for p in models.student.parameters() if p.is_floating_point()).fill_(float("nan"))
