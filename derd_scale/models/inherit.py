"""Block inheritance: start a shallow student from a deeper teacher of the same family.

    inherit_blocks(student, teacher)   # e.g. ResNet-20 from ResNet-56: stage s, block i ← block round(i·8/2)

The data-free counterpart of DistilBERT's student initialisation (one teacher layer in two): no
image is needed, only the teacher's weights. A residual network degrades gracefully when blocks are
dropped (each block adds a correction to the stream), so the student starts near the teacher's
function instead of at chance. Measured on CIFAR-10 (akamaster ResNet-56 → ResNet-20, blocks 0/4/8
of each stage, first 1000 test images): 9.9 % clean with the teacher's BatchNorm statistics, which
belong to the deeper network, and 37.2 % once the statistics are re-estimated — which Stage I does on
G(z) by itself, since the student trains in train mode (docs/derd.md, "Student initialisation").

Model code only: the trainer decides when to call it (``student_init``, derd_scale/config.py).
"""

from __future__ import annotations

import torch
from torch import nn


def block_map(student_blocks: int, teacher_blocks: int) -> list[int]:
    """The teacher block each student block inherits: evenly spaced, first and last kept,
    j(i) = round(i · (N_t − 1) / (N_s − 1)) (N_s = 1: block 0). 3 of 9 → [0, 4, 8]."""
    if not 1 <= student_blocks <= teacher_blocks:
        raise ValueError(f"a stage of {student_blocks} blocks cannot inherit from one of {teacher_blocks}")
    if student_blocks == 1:
        return [0]
    return [round(i * (teacher_blocks - 1) / (student_blocks - 1)) for i in range(student_blocks)]


def _block_counts(keys) -> dict[str, int]:
    """Blocks per container: every integer component of a key is a block index of the path before it
    ("model.layer2.3.conv1.weight" → container "model.layer2", block 3; nested containers such as
    timm's "stages.2.blocks.1" count at each level)."""
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        for k, part in enumerate(parts):
            if part.isdigit() and k:
                container = ".".join(parts[:k])
                counts[container] = max(counts.get(container, 0), int(part) + 1)
    return counts


def _source_key(key: str, s_counts: dict[str, int], t_counts: dict[str, int]) -> str:
    """The teacher key a student key inherits from (each block index mapped by ``block_map``)."""
    parts, src = key.split("."), []
    for k, part in enumerate(parts):
        if part.isdigit() and k:
            s_container, t_container = ".".join(parts[:k]), ".".join(src)
            if t_container not in t_counts:
                raise ValueError(f"{key}: the teacher has no block container {t_container!r}")
            try:
                part = str(block_map(s_counts[s_container], t_counts[t_container])[int(part)])
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
        src.append(part)
    return ".".join(src)


def _same_input_pipeline(student: nn.Module, teacher: nn.Module) -> bool:
    """Inherited weights only compute the teacher's function if the input reaches them the same way
    (NormalizedModel's mean/std and resize are non-persistent buffers, outside the state dict)."""
    for name in ("mean", "std"):
        a, b = getattr(student, name, None), getattr(teacher, name, None)
        if (a is None) != (b is None) or (a is not None and (a.shape != b.shape or not torch.equal(a, b))):
            return False
    return getattr(student, "input_size", None) == getattr(teacher, "input_size", None)


@torch.no_grad()
def inherit_blocks(student: nn.Module, teacher: nn.Module) -> dict[str, str]:
    """Copy ``teacher``'s weights into ``student`` in place: every non-block tensor (stem, head) by
    name, and within each block container (``layer1``, ``blocks``, …) student block i from teacher
    block ``block_map(N_s, N_t)[i]``. Every student tensor must be covered with an equal shape, else
    a one-line ValueError names the first key that is not (the student must be a shallower copy of
    the teacher's architecture: same widths, same block type). Returns student key → teacher key."""
    s_state, t_state = student.state_dict(), teacher.state_dict()
    if not _same_input_pipeline(student, teacher):
        raise ValueError("student and teacher normalise or resize their inputs differently")
    s_counts, t_counts = _block_counts(s_state), _block_counts(t_state)
    sources: dict[str, str] = {}
    for key, value in s_state.items():
        src = _source_key(key, s_counts, t_counts)
        if src not in t_state:
            raise ValueError(f"{key}: the teacher has no {src}")
        if t_state[src].shape != value.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} ≠ the teacher's {src} {tuple(t_state[src].shape)}")
        sources[key] = src
    student.load_state_dict({k: t_state[src].detach().clone() for k, src in sources.items()})
    return sources
