"""BatchNorm over the global batch, on any device (gloo/CPU included).

When the batch is split across processes, a BatchNorm layer in training mode normalises
with the statistics of its own slice, so a 2-process run is not the same computation as a
1-process run of the same global batch. ``torch.nn.SyncBatchNorm`` fixes that on GPUs only
(its kernels are CUDA-only). ``GlobalBatchNorm`` does the same with plain tensor ops and one
differentiable all-reduce per layer, so the CPU twins and the GPU runs share one code path:

    moments of (x − running_mean) per channel  →  all-reduce (sum, /world)  →  μ, σ²

Shifting by the running mean (a constant that is identical on every process, because the
running statistics are updated from the global statistics) keeps the one-pass variance
accurate. The backward of the all-reduce sums the incoming gradients across processes,
which is exactly the gradient of a loss that every process computes identically.

``convert_batchnorm(module, group)`` swaps every ``_BatchNorm`` in place (state-dict keys
unchanged), like ``SyncBatchNorm.convert_sync_batchnorm``. In eval mode the layer uses its
running statistics and does no communication.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn as nn


class _SumAcrossRanks(torch.autograd.Function):
    """y = Σ_ranks x. Every rank computes the same loss from y, so ∂L/∂x on a rank is the
    sum over ranks of ∂L_r/∂y — another all-reduce. (Written out rather than using
    ``torch.distributed.nn.functional.all_reduce``, deprecated in torch 2.14.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def global_mean(t: torch.Tensor, group=None) -> torch.Tensor:
    """Mean across processes of a per-process mean (equal batch sizes), differentiable."""
    return _SumAcrossRanks.apply(t, group) / dist.get_world_size(group)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm{1,2,3}d whose training statistics are those of the global batch."""

    def __init__(self, *args, group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group

    def __deepcopy__(self, memo: dict) -> "GlobalBatchNorm":
        # A process group is a handle to the job's communicator, not data: copies (EMA,
        # snapshots of the student) share it. Deep-copying it raises ("cannot pickle
        # ProcessGroup"). Everything else is copied as usual.
        memo[id(self.group)] = self.group
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            object.__setattr__(new, key, copy.deepcopy(value, memo))
        return new

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not use_batch_stats or not dist.is_initialized():
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        shift = (
            self.running_mean.detach().float()
            if self.running_mean is not None
            else torch.zeros(x.shape[1], device=x.device)
        )
        d = xf - shift.view(shape)
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device)
        stats = global_mean(torch.cat([d.mean(dims), d.pow(2).mean(dims), count]), self.group)
        c = x.shape[1]
        m1, m2 = stats[:c], stats[c : 2 * c]
        n = stats[2 * c].detach() * dist.get_world_size(self.group)  # global element count per channel
        mean = shift + m1
        var = (m2 - m1 * m1).clamp_min(0)
        if self.training and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                unbiased = var.detach() * (n / max(float(n) - 1.0, 1.0))
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, group=None) -> nn.Module:
    """Replace every ``_BatchNorm`` in ``module`` by a ``GlobalBatchNorm`` sharing its tensors."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, group=group
        )
        new.to(device=next(iter(list(module.parameters()) + list(module.buffers())), torch.empty(0)).device)
        if module.affine:
            with torch.no_grad():
                new.weight = module.weight
                new.bias = module.bias
        if module.track_running_stats:
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child, group))
    return module
