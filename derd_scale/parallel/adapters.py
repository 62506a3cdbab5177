"""Gradient adapters: one trained model (student or generator) under one backend.

Every backend keeps gradients somewhere else — in ``p.grad`` of every replica (plain, DDP),
in a flat ZeRO partition (DeepSpeed), in a DTensor shard (FSDP2). The training loops only
talk to this interface, so ``trainer.py`` has one Stage-II step for all of them:

    with adapter.micro_batch(m):          # accumulation: no reduction until the last micro-batch
        loss = ...forward...
        adapter.backward(loss)            # one loss (generator, Stage I, "SA only")
    adapter.step()                        # clip + optimiser step + zero the gradients

    g1, g2, l1, l2 = adapter.task_gradients(losses)   # Stage II: this rank's shard of each
    adapter.shards()                                  # task gradient AFTER the data-parallel
    adapter.write_gradients(combined)                 # reduction; views + flat indices; write back
    adapter.all_reduce(small_tensor)                  # sums partial sums across shards

``losses(m)`` is a closure that runs the student's forward on micro-batch ``m`` and returns
``(L1, L2)``. Backends that must free parameters between passes (ZeRO-3, FSDP2) or whose
second backward would overwrite the first (ZeRO-1/2) call it once per task; the replicated
adapter calls it once and differentiates both losses from the same graph.

``ShardView.indices`` are flat indices into the *full* parameter, so SGA's deterministic
noise (``derd.aggregation.sga_noise``) draws the same r for the same element on every
layout. Every rank returns one view per parameter, in the same order (possibly empty), so
per-tensor partial sums line up in one all-reduce.

This module and its siblings are the only code that knows about processes; run the
multi-process twins with ``pytest -m slow tests/parallel``.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from ..models.factory import freeze

Losses = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / a DeepSpeed engine (FSDP2 modifies the module in place)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Sum of a small tensor over all ranks (the aggregation's one collective)."""
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@dataclass
class ShardView:
    """This rank's slice of one parameter: the tensor to read/write and its flat indices
    in the full parameter (so SGA's deterministic noise matches any layout)."""

    name: str
    param: torch.Tensor
    indices: torch.Tensor


class GradientAdapter:
    """Plain single-process and DDP (``ReplicatedGradients``); the base of the sharded ones.

    Replicated semantics: every rank holds the full gradient. The two task gradients are
    taken with ``torch.autograd.grad`` inside ``no_sync`` (no ``.grad`` accumulation, so
    DDP's reducer never fires), flattened into one buffer, all-reduced once and averaged.
    After that every rank has the same full g1 and g2, so the aggregation's partial sums
    need no further reduction (``all_reduce`` is the identity). docs/platform.md's silent trap —
    one forward with two ``backward`` calls, the second never all-reduced — cannot happen.
    """

    kind = "replicated"
    sharded = False

    def __init__(
        self,
        module: nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        *,
        name: str = "student",
        accumulation: int = 1,
        max_norm: Optional[float] = None,
        template: Optional[nn.Module] = None,
    ):
        self.name = name
        self.module = module
        self.optimizer = optimizer
        self.accumulation = accumulation
        self.max_norm = max_norm
        self.template = template
        self.inner = unwrap(module)
        self.named = [(n, p) for n, p in self.inner.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.all_reduce: Callable[[torch.Tensor], torch.Tensor] = _identity

    # ---- the model, by use (callers outside parallel/ use these, never ``inner``/``template``)

    @property
    def unwrapped(self) -> nn.Module:
        """The user's module inside the wrapper (DDP, DeepSpeed engine; FSDP2 shards it in place):
        the student the inner maximisation attacks through input gradients. ``module`` is the
        one to train through (the wrapper's forward/backward hooks)."""
        return self.inner

    @property
    def unsharded(self) -> nn.Module:
        """A module of the full architecture with unsharded parameters (sharded backends: the
        host-memory template, its weights as of ``prepare`` — pair it with ``full_state_dict``)."""
        return unwrap(self.template) if self.template is not None else self.inner

    # ---- one loss -------------------------------------------------------------------

    def _no_sync(self):
        return self.module.no_sync() if hasattr(self.module, "no_sync") else nullcontext()

    @contextmanager
    def micro_batch(self, m: int) -> Iterator[None]:
        """Forward and backward of micro-batch ``m``; gradients are reduced on the last one."""
        if m == 0:
            self._zero_grad()
        with self._no_sync() if m < self.accumulation - 1 else nullcontext():
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> None:
        if self.max_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.optimizer.step()
        self._zero_grad()

    def _zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    # ---- two task gradients (Stage II) ------------------------------------------------

    def task_gradients(
        self, losses: Losses
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        a = self.accumulation
        g1 = [torch.zeros_like(p) for p in self.params]
        g2 = [torch.zeros_like(p) for p in self.params]
        l1_sum = l2_sum = 0.0
        with self._no_sync():
            for m in range(a):
                l1, l2 = losses(m)
                d1 = torch.autograd.grad(l1, self.params, retain_graph=True, allow_unused=True)
                d2 = torch.autograd.grad(l2, self.params, allow_unused=True)
                for acc, d in ((g1, d1), (g2, d2)):
                    for t, g in zip(acc, d):
                        if g is not None:
                            t.add_(g / a if a > 1 else g)
                l1_sum, l2_sum = l1_sum + l1.detach() / a, l2_sum + l2.detach() / a
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
        return g1, g2, l1_sum, l2_sum

    def shards(self) -> list[ShardView]:
        return [ShardView(n, p, torch.arange(p.numel(), device=p.device)) for n, p in self.named]

    def write_gradients(self, grads: Sequence[torch.Tensor]) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g.detach().to(p.dtype).clone()

    # ---- state ----------------------------------------------------------------------

    def full_state_dict(self) -> dict:
        """The full, unsharded state dict on every rank (a collective on sharded backends)."""
        return self.inner.state_dict()

    def snapshot(self) -> nn.Module:
        """A frozen, unsharded, eval-mode copy of the current model on every rank."""
        if self.template is None:
            return freeze(copy.deepcopy(self.inner))
        copy_ = copy.deepcopy(self.template).to(self.device)  # the template waits in host memory
        copy_.load_state_dict(self.full_state_dict())
        return freeze(copy_)

    def eval_module(self) -> nn.Module:
        """The module to evaluate (each rank on its own examples): no collectives in forward."""
        return self.inner

    def save(self, directory: Path) -> Optional[dict]:
        """Replicated: the entry for the main process's ``state.pt`` (nothing written here)."""
        return {"model": self.inner.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, directory: Path, entry: Optional[dict]) -> None:
        self.inner.load_state_dict(entry["model"])
        self.optimizer.load_state_dict(entry["optimizer"])

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """Parameters that every rank holds in full (for the end-of-run replica check)."""
        return list(self.inner.named_parameters())


ReplicatedGradients = GradientAdapter


class ShardedAdapter(GradientAdapter):
    """Shared machinery of the sharded backends (DeepSpeed ZeRO, FSDP2).

    ``task_gradients`` makes one pass over the micro-batches per task — backward, then take
    this rank's reduced shard (an fp32 copy) and zero it — because these backends cannot
    differentiate two losses from one graph: ZeRO-3 and FSDP2 release the gathered
    parameters, and a second ZeRO-1/2 backward overwrites the partition. The second
    pass's BatchNorm running-statistics updates are undone, so the buffers match the
    replicated adapter's single forward. Backends implement ``_take`` (this rank's shards
    as fp32 flat copies, one per parameter, then zeroed), ``shards`` and ``write_gradients``.
    """

    sharded = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.all_reduce = sum_across_ranks

    def _take(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def task_gradients(
        self, losses: Losses
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        a = self.accumulation
        grads, values = [], []
        after_first_pass: list[torch.Tensor] = []
        for task in (0, 1):
            if task == 1:
                after_first_pass = [b.detach().clone() for b in self.inner.buffers()]
            total = 0.0
            for m in range(a):
                with self.micro_batch(m):
                    loss = losses(m)[task]
                    self.backward(loss)
                total = total + loss.detach() / a
            grads.append(self._take())
            values.append(total)
        with torch.no_grad():
            for b, saved in zip(self.inner.buffers(), after_first_pass):
                b.copy_(saved)
        return grads[0], grads[1], values[0], values[1]

    def eval_module(self) -> nn.Module:
        return self.snapshot()

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        names = {n for n, _ in self.inner.named_parameters()}
        return [(k, v) for k, v in self.full_state_dict().items() if k in names]


def add_into(acc: Optional[list[torch.Tensor]], new: list[torch.Tensor]) -> list[torch.Tensor]:
    if acc is None:
        return [t.clone() for t in new]
    for a, t in zip(acc, new):
        a.add_(t)
    return acc
