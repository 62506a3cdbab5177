"""Replay banks: the student also distils its targets on pseudo images of earlier steps.

Not in the paper (``stage1.replay_steps``; 0 = off). A generator trained against a fixed
teacher drifts from mode to mode, and a student that only ever sees the current batch forgets
what the earlier ones taught it: on CIFAR-10 the Stage-I student's real-test accuracy stays flat
while its KD loss falls (docs/results.md). Replaying stored pseudo images with their stored
teacher logits is the generative-replay remedy of data-free KD (Binici et al. 2022, "Preventing
catastrophic forgetting and distribution mismatch in knowledge distillation via synthetic data";
"Robust and resource-efficient data-free KD by generative pseudo replay", AAAI 2022). It costs
no teacher pass: T_nat is frozen, so the logits computed when an image was made stay its target.

The bank is a ring buffer of whole *steps*: per stored step, this rank's micro-batches of G(z)
(fp16 pixels — finer than 8-bit images) and T_nat's logits (fp32). Each student update of a
Stage-I step (``stage1.student_steps`` of them: many cheap student updates per teacher backward)
draws one earlier stored step with a generator seeded by (seed, step, update) — the same draw on
every rank — and
each rank replays its own micro-batches of it, so the global replayed batch is that step's
global batch under any number of processes. Every rank saves its own bank beside the checkpoint
(``replay-rank<r>.pt``), as the sharded backends save their shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch


def replay_noise(seed: int, step: int, update: int = 0, stream: int = 0) -> torch.Generator:
    """The draw for student update ``update`` of step ``step`` (a pure function of its inputs,
    equal on every rank); ``stream`` 0 is Stage I's bank, 1 Stage II's."""
    return torch.Generator().manual_seed(
        (seed * 1_000_003 + 104_729 * (3 + update) + step + 998_244_353 * stream) % (2**63 - 1)
    )


class ReplayBank:
    def __init__(
        self,
        capacity_steps: int,
        name: str = "replay",
        setting: str = "stage1.replay_steps",
        stream: int = 0,
        image_dtype: torch.dtype = torch.float16,
    ):
        """``name``: the per-rank file's stem; ``setting``: the config key named in errors;
        ``stream``: the draw's stream (replay_noise); ``image_dtype``: how images are stored."""
        if capacity_steps < 1:
            raise ValueError(f"{setting}: must be ≥ 1 for a bank, got {capacity_steps}")
        self.name, self.setting, self.stream, self.image_dtype = name, setting, stream, image_dtype
        self.capacity = capacity_steps
        self.steps: list[int] = []
        """The stored steps, oldest first."""
        self.entries: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        """Per stored step: this rank's (images in ``image_dtype``, teacher logits fp32) per micro-batch."""

    def __len__(self) -> int:
        return len(self.steps)

    def draw(self, seed: int, step: int, update: int = 0) -> Optional[list[tuple[torch.Tensor, torch.Tensor]]]:
        """One stored step, uniformly (None while the bank is empty): per micro-batch, (images
        in fp32, logits) on the device they were stored from."""
        if not self.steps:
            return None
        i = int(torch.randint(len(self.steps), (1,), generator=replay_noise(seed, step, update, self.stream)))
        return [(x.float(), t) for x, t in self.entries[i]]

    def add(self, step: int, images: list[torch.Tensor], logits: list[torch.Tensor]) -> None:
        """Store step ``step``'s micro-batches (detached); the oldest step leaves when full."""
        self.steps.append(step)
        self.entries.append([(x.detach().to(self.image_dtype), t.detach().float()) for x, t in zip(images, logits)])
        if len(self.steps) > self.capacity:
            self.steps.pop(0)
            self.entries.pop(0)

    # ---- checkpoint: one file per rank ------------------------------------------------

    def file(self, directory: Path, rank: int) -> Path:
        return Path(directory) / f"{self.name}-rank{rank}.pt"

    def save(self, directory: Path, rank: int) -> None:
        entries = [[(x.cpu(), t.cpu()) for x, t in e] for e in self.entries]
        torch.save({"capacity": self.capacity, "steps": self.steps, "entries": entries}, self.file(directory, rank))

    def load(self, directory: Path, rank: int, device: torch.device) -> None:
        """Restore this rank's bank; a checkpoint without one (written before Stage I had a
        bank, or by another layout) is refused by name."""
        path = self.file(directory, rank)
        if not path.exists():
            from ..errors import ResumeError

            raise ResumeError(f"{path}: missing ({self.setting} > 0 needs this rank's replay bank to resume)")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        self.steps = list(blob["steps"])[-self.capacity :]
        entries = blob["entries"][-self.capacity :]
        self.entries = [[(x.to(device), t.to(device)) for x, t in e] for e in entries]
