"""Batch augmentations as pure functions of the images and given U[0, 1) draws (so every rank and
every resume draws the same): the CIFAR recipe's random crop + flip, and DeepInversion's jitter."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(x: torch.Tensor, u: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded image (``pad`` px each side) + horizontal flip, per sample.

    ``u``: (B, 3) uniforms → row offset, column offset (each in 0…2·pad), flip if u > 0.5."""
    b, _, h, w = x.shape
    offsets = (u[:, :2] * (2 * pad + 1)).long().clamp(max=2 * pad)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)
    idx = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = (u[:, 2] > 0.5).view(b, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)


def jitter(x: torch.Tensor, u: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Roll the whole batch by (dy, dx) ∈ [−max_shift, max_shift]² (``u``: two uniforms)."""
    if max_shift <= 0:
        return x
    shifts = (u * (2 * max_shift + 1)).long().clamp(max=2 * max_shift) - max_shift
    return torch.roll(x, shifts=(int(shifts[0]), int(shifts[1])), dims=(2, 3))
