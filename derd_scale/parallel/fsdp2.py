"""FSDP2 (``torch.distributed.fsdp.fully_shard``): wrapping and the gradient adapter.

One code path for GPUs and the CPU twin: Accelerate 1.15 cannot run FSDP on CPU
(docs/platform.md), so ``prepare`` applies ``fully_shard`` itself whenever the backend is
``fsdp`` — launched by ``accelerate launch --config_file configs/accelerate/fsdp2.yaml`` on
GPUs (its ``fsdp_reshard_after_forward`` / ``fsdp_min_num_params`` are honoured) or by
``torchrun ... --set distributed.backend=fsdp`` anywhere (CPU twin: gloo).

After ``backward`` every sharded parameter's ``p.grad`` is a DTensor, already
reduce-scattered and averaged over ranks; ``to_local()`` is this rank's rows (Shard(0)),
whose flat offset in the full parameter is ``global_offset[0] · row size``. Writing back:
``DTensor.from_local(..., shape=p.shape, stride=p.stride())``. Accumulation keeps unsharded
gradients local (``set_requires_gradient_sync(False)``) until the last micro-batch.
Mixed precision is torch autocast (parameters, gradients and reductions stay fp32), the
same mechanism as every other backend.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.nn as nn

from .adapters import ShardedAdapter, ShardView


def shard_module(
    module: nn.Module, mesh, reshard_after_forward: bool = True, min_params: Optional[int] = None
) -> nn.Module:
    """``fully_shard`` every submodule holding at least ``min_params`` parameters (innermost
    first, so each parameter belongs to the smallest such unit), then the root."""
    from torch.distributed.fsdp import fully_shard

    if min_params:
        claimed: set[int] = set()
        for sub in reversed(list(module.modules())):  # post-order-ish: children before parents
            if sub is module:
                continue
            own = [p for p in sub.parameters() if id(p) not in claimed]
            if sum(p.numel() for p in own) >= min_params:
                fully_shard(sub, mesh=mesh, reshard_after_forward=reshard_after_forward)
                claimed.update(id(p) for p in own)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return module


def _flat_start(p) -> int:
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if tuple(p.placements) != (Shard(0),):
        raise NotImplementedError(f"FSDP2 parameter with placements {p.placements}: only Shard(0) is supported")
    _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return int(offset[0]) * math.prod(p.shape[1:]) if p.dim() > 0 else 0


class FSDPGradients(ShardedAdapter):
    """The adapter for a ``fully_shard``-ed module (DTensor parameters, Shard(0))."""

    kind = "fsdp"

    def __init__(self, module: nn.Module, optimizer, **kwargs):
        super().__init__(module, optimizer, **kwargs)
        self._starts = [_flat_start(p) for p in self.params]

    @contextmanager
    def micro_batch(self, m: int) -> Iterator[None]:
        if m == 0:
            self._zero_grad()
        last = m == self.accumulation - 1
        self.module.set_requires_gradient_sync(last)
        try:
            yield
        finally:
            self.module.set_requires_gradient_sync(True)

    def _take(self) -> list[torch.Tensor]:
        out = []
        for p in self.params:
            if p.grad is None:
                out.append(torch.zeros(p.to_local().numel(), dtype=torch.float32, device=p.device))
            else:
                out.append(p.grad.to_local().detach().float().reshape(-1).clone())
        self._zero_grad()
        return out

    def shards(self) -> list[ShardView]:
        views = []
        for (name, p), start in zip(self.named, self._starts):
            local = p.to_local().detach().reshape(-1)
            views.append(ShardView(name, local, torch.arange(start, start + local.numel(), device=local.device)))
        return views

    def write_gradients(self, grads: Sequence[torch.Tensor]) -> None:
        from torch.distributed.tensor import DTensor

        for p, g in zip(self.params, grads):
            local_shape = p.to_local().shape
            p.grad = DTensor.from_local(
                g.detach().to(p.dtype).reshape(local_shape).clone(),
                p.device_mesh,
                p.placements,
                shape=p.shape,
                stride=p.stride(),
            )

    # ---- state ----------------------------------------------------------------------

    def full_state_dict(self) -> dict:
        from torch.distributed.tensor import DTensor

        return {
            k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
            for k, v in self.inner.state_dict().items()
        }

    def save(self, directory: Path) -> Optional[dict]:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(Path(directory) / self.name))
        return {"dcp": self.name}

    def load(self, directory: Path, entry: Optional[dict]) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(state, checkpoint_id=str(Path(directory) / self.name))
        set_state_dict(
            self.module, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
        )
