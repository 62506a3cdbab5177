"""The one place that knows about distribution.

``build_accelerator`` makes the Accelerator (gloo on CPU), ``prepare_training`` wraps the
student and generator (and their optimisers) for the backend while the frozen teachers
only move to the device, and ``gradient_access`` returns the adapter through which the
Stage-II step obtains this rank's view of the two task gradients *after* the
data-parallel reduction, sums small tensors across ranks, and writes the aggregated
gradient back before ``optimizer.step()``.

Model code (``derd_scale.models``, ``derd_scale.derd``) never imports this module.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from .config import DistributedConfig


def build_accelerator(cfg: DistributedConfig, cpu: Optional[bool] = None):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    kwargs_handlers = []
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Without this, DeepSpeed under Accelerate on CPU sees one process per rank (PLATFORM.md).
        # Only when launched multi-process: in one process a backend makes Accelerate expect a group.
        kwargs_handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=1,  # accumulation is explicit in the loops
        cpu=cpu if cpu is not None else not torch.cuda.is_available(),
        kwargs_handlers=kwargs_handlers,
    )


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


@dataclass
class ShardView:
    """This rank's slice of one parameter: the tensor to read/write and its flat indices
    in the full parameter (so SGA's deterministic noise matches any layout)."""

    name: str
    param: torch.Tensor
    indices: torch.Tensor


class ReplicatedGradients:
    """Plain single-process and DDP: every rank holds the full gradient.

    The two task gradients are taken with ``torch.autograd.grad`` (no ``.grad``
    accumulation, so DDP's reducer never fires — we are inside ``no_sync``), flattened
    into one buffer, all-reduced once and averaged. After that every rank has the same
    full g1 and g2, so the aggregation's partial sums need no further reduction
    (``all_reduce`` is the identity). PLATFORM.md's silent trap — one forward with two
    ``backward`` calls, the second never all-reduced — cannot happen here.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.inner = unwrap(model)
        self.named = [(n, p) for n, p in self.inner.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.all_reduce: Callable[[torch.Tensor], torch.Tensor] = _identity

    def no_sync(self):
        return self.model.no_sync() if hasattr(self.model, "no_sync") else nullcontext()

    def task_gradients(self, loss1: torch.Tensor, loss2: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        g1 = torch.autograd.grad(loss1, self.params, retain_graph=True, allow_unused=True)
        g2 = torch.autograd.grad(loss2, self.params, allow_unused=True)
        g1 = [torch.zeros_like(p) if g is None else g for g, p in zip(g1, self.params)]
        g2 = [torch.zeros_like(p) if g is None else g for g, p in zip(g2, self.params)]
        _, size = world()
        if size > 1:
            flat = torch.cat([g.reshape(-1) for g in g1 + g2])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= size
            out, offset = [], 0
            for p in self.params + self.params:
                out.append(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
            g1, g2 = out[: len(self.params)], out[len(self.params) :]
        return list(g1), list(g2)

    def shards(self) -> list[ShardView]:
        return [ShardView(n, p, torch.arange(p.numel())) for n, p in self.named]

    def write_gradients(self, grads: Sequence[torch.Tensor]) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g.detach().to(p.dtype).clone()


def gradient_access(accelerator, student: nn.Module) -> ReplicatedGradients:
    """The adapter for the active backend (plain/DDP here)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        return ReplicatedGradients(student)
    raise NotImplementedError(
        f"distributed type {kind}: Stage-II gradient aggregation on sharded gradients (DeepSpeed ZeRO, FSDP) "
        f"is not implemented yet; run plain or DDP (configs/accelerate/ddp.yaml)"
    )
