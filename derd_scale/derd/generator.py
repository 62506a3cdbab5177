"""Generators of pseudo images in [0, 1] (Stage I and the generator updates of Stage II).

``PseudoImageGenerator`` is DCGAN-style: z (latent 256) → Linear → BN → a 4×4 (or
7×7 for 28-px images) map → N × (upsample ×2 → conv → BN → LeakyReLU) → conv → head.
The head is Sigmoid by default; ``tanh_bn`` (DAFL/DFAD) and ``bn`` (ZSKT) are the baselines'
original heads, which emit a *normalised* image: it is mapped to pixels with the teacher's
mean/std and clamped to [0, 1], so every generator hands the teachers [0, 1] pixels.
N is chosen from the image size, so 32×32 gets 3 stages and 224×224 gets 5 from a 7×7
map — real upsampling stages, never a resize of a small image. Channels follow the
dataset (1 for (Fashion-)MNIST, 3 otherwise). With ``pseudo_labels: sampled`` the
generator is conditioned on a label: its embedding multiplies z (as in conditional
DAFL/CGDD variants), so L_oh can target the sampled label.

``ImplicitGenerator`` is the model-inversion variant: no network; a bank of pseudo
images (stored as logits, sigmoid → [0, 1]) is optimised directly by the same Eq. 11.

Both expose ``sample(batch_size, generator) -> (latent, labels)`` and
``forward(latent, labels) -> images`` so the training loop treats them alike.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn


def _start_size(image_size: int) -> tuple[int, int]:
    """(initial map size, number of ×2 upsampling stages) reaching image_size exactly."""
    for start in (4, 7, 5, 3, 6):
        n = math.log2(image_size / start)
        if n >= 1 and n == int(n):
            return start, int(n)
    raise ValueError(f"generator: image size {image_size} is not start·2^n for start in 3..7")


class PseudoImageGenerator(nn.Module):
    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int = 256,
        base_channels: int = 64,
        num_classes: Optional[int] = None,
        head: str = "sigmoid",
        pixel_mean: Optional[torch.Tensor] = None,
        pixel_std: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        self.image_size, self.channels, self.latent_dim = image_size, channels, latent_dim
        self.num_classes = num_classes
        start, n_up = _start_size(image_size)
        self.start = start
        # Widest at the start, halving per stage down to base_channels (DCGAN taper).
        widths = [base_channels * 2 ** min(n_up - i, 3) for i in range(n_up + 1)]
        self.widths = widths
        self.label_embedding = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.project = nn.Sequential(
            nn.Linear(latent_dim, widths[0] * start * start), nn.BatchNorm1d(widths[0] * start * start)
        )
        blocks = []
        for i in range(n_up):
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False),
                nn.BatchNorm2d(widths[i + 1]),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        conv = nn.Conv2d(widths[-1], channels, 3, 1, 1)
        if head == "sigmoid":
            self.to_image = nn.Sequential(conv, nn.Sigmoid())
        elif head == "tanh_bn":  # DAFL / DFAD: Tanh, then BatchNorm without affine
            self.to_image = nn.Sequential(conv, nn.Tanh(), nn.BatchNorm2d(channels, affine=False))
        elif head == "bn":  # ZSKT: BatchNorm with affine
            self.to_image = nn.Sequential(conv, nn.BatchNorm2d(channels, affine=True))
        else:
            raise ValueError(f"generator.head: {head!r}; allowed: sigmoid, tanh_bn, bn")
        # The normalised heads' output is in the teacher's input space: pixels = out·std + mean.
        # Derived from the teacher, so not saved (state_dicts stay those of the sigmoid head's layout).
        mean = torch.zeros(channels) if pixel_mean is None else torch.as_tensor(pixel_mean, dtype=torch.float32)
        std = torch.ones(channels) if pixel_std is None else torch.as_tensor(pixel_std, dtype=torch.float32)
        if mean.numel() not in (1, channels) or std.numel() not in (1, channels):
            raise ValueError(
                f"generator.head={head}: the teacher normalises {mean.numel()} channels, the images have {channels}"
            )
        self.register_buffer(
            "pixel_mean", mean.reshape(1, -1, 1, 1).expand(1, channels, 1, 1).clone(), persistent=False
        )
        self.register_buffer("pixel_std", std.reshape(1, -1, 1, 1).expand(1, channels, 1, 1).clone(), persistent=False)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the upsampling stages in backward (the 224² activations dominate memory)."""
        self.grad_checkpointing = enable

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        device = self.project[0].weight.device
        z = torch.randn(batch_size, self.latent_dim, generator=generator).to(device)
        labels = None
        if self.num_classes:
            # Balanced labels: a random permutation of a repeated class list.
            base = torch.arange(batch_size) % self.num_classes
            labels = base[torch.randperm(batch_size, generator=generator)].to(device)
        return z, labels

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.label_embedding is not None:
            if labels is None:
                raise ValueError("conditional generator needs labels")
            z = z * self.label_embedding(labels)
        h = self.project(z).view(z.shape[0], self.widths[0], self.start, self.start)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint_sequential

            # The recomputation in backward updates BatchNorm running stats a second time;
            # harmless here because G always runs in train mode (batch statistics).
            h = checkpoint_sequential(self.blocks, max(1, len(self.blocks) // 4), h, use_reentrant=False)
        else:
            h = self.blocks(h)
        out = self.to_image(h)
        if self.head == "sigmoid":
            return out
        return (out * self.pixel_std + self.pixel_mean).clamp(0.0, 1.0)


class ImplicitGenerator(nn.Module):
    """A bank of directly optimised pseudo images (model inversion)."""

    def __init__(
        self, image_size: int, channels: int, bank_size: int, num_classes: Optional[int] = None, seed: int = 0
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.image_size, self.channels = image_size, channels
        self.images_logit = nn.Parameter(torch.randn(bank_size, channels, image_size, image_size, generator=g) * 0.5)
        self.num_classes = num_classes
        labels = torch.arange(bank_size) % num_classes if num_classes else torch.zeros(bank_size, dtype=torch.long)
        self.register_buffer("bank_labels", labels)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        # The bank size from the label buffer, not the parameter: a sharded parameter (ZeRO-3) has no full shape.
        idx = torch.randint(0, self.bank_labels.shape[0], (batch_size,), generator=generator).to(
            self.bank_labels.device
        )
        return idx, (self.bank_labels[idx] if self.num_classes else None)

    def forward(self, idx: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.sigmoid(self.images_logit[idx])


def build_generator(
    kind: str,
    image_size: int,
    channels: int,
    num_classes: int,
    latent_dim: int = 256,
    base_channels: int = 64,
    pseudo_labels: str = "argmax",
    bank_size: int = 1024,
    seed: int = 0,
    head: str = "sigmoid",
    pixel_mean: Optional[torch.Tensor] = None,
    pixel_std: Optional[torch.Tensor] = None,
) -> nn.Module:
    conditional = num_classes if pseudo_labels == "sampled" else None
    if kind == "implicit":
        return ImplicitGenerator(image_size, channels, bank_size, conditional, seed)
    return PseudoImageGenerator(
        image_size, channels, latent_dim, base_channels, conditional, head, pixel_mean, pixel_std
    )
