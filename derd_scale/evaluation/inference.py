"""The copy of a model that the attacks differentiate: the same network, cheaper per input gradient.

An evaluation spends nearly all its time in forward + input-gradient passes of a model in eval
mode (standard AutoAttack: ~2,000 per robust example). Two inference rewrites make those passes
cheaper without changing the function the model computes:

- **BatchNorm folded** into the convolution or linear layer before it (``torch.fx``'s
  ``fuse``: in eval mode BN is the affine map y = γ (x − μ) / √(σ² + ε) + β, which merges
  into the preceding layer's weight and bias), so neither the forward nor the input gradient
  runs a separate normalisation;
- **channels-last** weights and inputs on CPU, where oneDNN's convolutions and max-pooling
  are faster in NHWC than in NCHW.

Parameters are frozen on the copy (attacks need ∂/∂x only). The result equals the original up
to fp32 rounding (folding reorders the arithmetic), so a prediction can differ only where two
logits tie to ~1e-6. Measured on one thread of this CPU (``bench/attack_speed.py``,
docs/performance.md): a forward + input-gradient pass at batch 100 of the Fashion-MNIST small
CNN 1.8× faster, the CIFAR ResNet-20 1.3×, ResNet-56 1.7×, and the BatchNorm-free
alpha-beta-CROWN ResNet-4B 1.5× from channels-last alone.

Left as is (the caller's model is attacked directly): a model that is not a plain module
(DDP/FSDP2/DeepSpeed-wrapped or holding sharded DTensor parameters: its forward is a
collective), a model on an accelerator (not measured there), and — for the fold only — a
model that ``torch.fx`` cannot trace (then only the freezing and channels-last apply).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class ChannelsLast(nn.Module):
    """Feeds ``module`` its 4-D input in channels-last memory (the gradient flows back through the copy)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


def is_plain_module(model: nn.Module) -> bool:
    """True when ``model`` can be deep-copied and traced: no data-parallel wrapper, no sharded parameters."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) or type(model).__module__.startswith("deepspeed"):
        return False
    return all(type(p) is torch.Tensor or type(p) is nn.Parameter for p in model.parameters())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` (eval mode) with each BatchNorm that follows a conv/linear folded into it, via
    ``torch.fx.experimental.optimization.fuse``; the model itself if it has no BatchNorm or does
    not trace."""
    if not any(isinstance(m, _BATCH_NORMS) for m in model.modules()):
        return model
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model, inplace=True)
    except Exception:  # noqa: BLE001 — untraceable control flow: keep the unfolded network
        return model


def optimized_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with frozen parameters, BatchNorm folded and, when it has
    2-D convolutions, channels-last memory; ``model`` itself where that does not apply (see the
    module docstring)."""
    if not is_plain_module(model):
        return model
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu":
        return model
    was_training = model.training
    model.eval()
    try:
        attacked = copy.deepcopy(model)
    finally:
        model.train(was_training)
    attacked = fold_batchnorm(attacked.eval()).eval().requires_grad_(False)
    if any(isinstance(m, nn.Conv2d) for m in attacked.modules()):
        attacked = ChannelsLast(attacked.to(memory_format=torch.channels_last)).eval()
    return attacked
