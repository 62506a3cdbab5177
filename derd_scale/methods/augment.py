"""Batch augmentations as pure functions of the images and given U[0, 1) draws (so every rank and
every resume draws the same): the CIFAR recipe's random crop + flip, DeepInversion's jitter,
CMI's local view (random resized crop + flip), and mixup of a batch with itself rolled by one."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def crop_flip(x: torch.Tensor, u: torch.Tensor, pad: int = 4, padding_mode: str = "constant") -> torch.Tensor:
    """Random crop of the padded image (``pad`` px each side; zeros, or ``padding_mode="reflect"``
    as the teachers' recipe) + horizontal flip of the crop, per sample.

    ``u``: (B, 3) uniforms → row offset, column offset (each ⌊u·(2·pad + 1)⌋ in 0…2·pad), flip if u > 0.5."""
    b, _, h, w = x.shape
    offsets = (u[:, :2] * (2 * pad + 1)).long().clamp(max=2 * pad)
    padded = F.pad(x, (pad, pad, pad, pad), mode=padding_mode)
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


def resized_crop_flip(
    x: torch.Tensor, u: torch.Tensor, scale: tuple = (0.25, 1.0), ratio: tuple = (3 / 4, 4 / 3)
) -> torch.Tensor:
    """Random resized crop back to the input size + horizontal flip, per sample, differentiable in x
    (bilinear ``grid_sample``): CMI's local view (kornia ``RandomResizedCrop(scale=[0.25, 1])``).

    ``u``: (B, 5) uniforms → area fraction in ``scale``, log aspect ratio in ``log(ratio)``, left and
    top offset (fractions of the free room), flip if u > 0.5. A crop side longer than the image is
    cut to the image (kornia retries instead; rare at these scales)."""
    b = x.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[:, 1])
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    left, top = u[:, 2] * (1 - w), u[:, 3] * (1 - h)
    sign = torch.where(u[:, 4] > 0.5, -1.0, 1.0).to(x.dtype)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = (w * sign).to(x.dtype)  # a negative x scale reads the crop right to left: the flip
    theta[:, 0, 2] = (2 * left + w - 1).to(x.dtype)
    theta[:, 1, 1] = h.to(x.dtype)
    theta[:, 1, 2] = (2 * top + h - 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def mixup(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """x'_i = λ_i·x_i + (1 − λ_i)·x_{i−1 mod B}: each image blended with its batch neighbour (the
    batch rolled by one), per-sample weight ``lam`` (B,) in [0, 1] (U[0, 1] draws = Beta(1, 1), the
    mixing of Beyer et al. 2022's "function matching" KD). No labels are mixed: every target a
    distiller needs is a teacher's output on x' itself, so x' is just another input the teachers
    can be matched on, between the modes of the batch."""
    lam = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return lam * x + (1 - lam) * x.roll(1, dims=0)
