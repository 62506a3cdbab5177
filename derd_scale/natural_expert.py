"""The natural expert: who plays T_nat in Stage II (``stage2.eg.natural_teacher``).

One object owns the role for the whole run (``distributed.prepare`` builds it as
``par.natural_expert``):

- ``teacher`` — the natural teacher itself (the paper);
- ``student`` — a frozen snapshot of the student taken when Stage II starts (the discussion
  section's "no natural teacher");
- ``ema`` — that snapshot, then an exponential moving average of the student after every
  student step (parameters ``decay``-averaged, buffers copied).

``module`` is what Stage II calls T_nat. ``start`` sets the role up at the start of Stage II
(or keeps what a checkpoint restored), ``update`` follows each student step, and
``state_dict`` / ``load_state_dict`` are its part of a checkpoint. It talks to the student
only through its gradient adapter's ``snapshot`` and ``full_state_dict`` (collectives on the
sharded backends, so every rank calls ``start``, ``update`` and ``load_state_dict``).
"""

from __future__ import annotations

from typing import Optional

import torch.nn as nn

from .weight_average import ema_update, restored_snapshot

MODES = ("teacher", "student", "ema")


class NaturalExpert:
    def __init__(self, mode: str, teacher: nn.Module, decay: float = 0.999):
        if mode not in MODES:
            raise ValueError(f"stage2.eg.natural_teacher: {mode!r} (choose from {', '.join(MODES)})")
        self.mode = mode
        self.teacher = teacher
        self.decay = decay
        self.copy: Optional[nn.Module] = None
        """The student's snapshot (``student``) or EMA (``ema``); None while the teacher plays the role."""
        self._copy_mode: Optional[str] = None

    @property
    def module(self) -> nn.Module:
        """T_nat of Stage II: the student's snapshot / EMA once ``start`` made one, else the natural teacher."""
        return self.copy if self.copy is not None else self.teacher

    @property
    def ema(self) -> Optional[nn.Module]:
        """The EMA of the student while it plays the role (trained state, checked before checkpoints), else None."""
        return self.copy if self._copy_mode == "ema" else None

    def start(self, student) -> None:
        """At the start of Stage II: take a frozen, unsharded snapshot of ``student`` (a gradient
        adapter) unless the teacher plays the role or a checkpoint already restored this mode's copy."""
        if self.mode == "teacher":
            self.copy, self._copy_mode = None, None
        elif self.copy is None or self._copy_mode != self.mode:
            self.copy, self._copy_mode = student.snapshot(), self.mode

    def update(self, student) -> None:
        """After each student step: the EMA follows the student (other modes stay as they are)."""
        if self.ema is not None:
            ema_update(self.ema, student.full_state_dict(), self.decay)

    def state_dict(self) -> Optional[dict]:
        """This role's part of a checkpoint: None when the teacher plays it (nothing of its own)."""
        if self.copy is None:
            return None
        return {"mode": self._copy_mode, "module": self.copy.state_dict()}

    def load_state_dict(self, entry: Optional[dict], student) -> None:
        """Restore what ``state_dict`` saved (a snapshot of ``student`` receives the weights)."""
        if entry is None:
            return
        self.copy, self._copy_mode = restored_snapshot(student, entry["module"]), entry["mode"]

    @staticmethod
    def legacy_entry(blob: dict) -> Optional[dict]:
        """The entry of a checkpoint written before this class (``state.pt`` keys ``ema`` and
        ``natural_expert``, each a bare state dict), or None."""
        if blob.get("ema") is not None:
            return {"mode": "ema", "module": blob["ema"]}
        if blob.get("natural_expert") is not None:
            return {"mode": "student", "module": blob["natural_expert"]}
        return None
