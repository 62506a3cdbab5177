"""DeepSpeed ZeRO-1/2/3: engine construction and the gradient adapter.

The JSON is ``distributed.deepspeed_config`` if set, else the one ``accelerate launch`` got
from a DEEPSPEED config (``configs/accelerate/deepspeed_zero*.yaml``).
We call ``deepspeed.initialize`` ourselves (one engine for the student, one for the
generator) instead of ``accelerator.prepare``: Accelerate's ``backward`` also calls
``engine.step()``, leaving no gap in which to aggregate the two task gradients.

Where the gradient lives after ``engine.backward`` (docs/platform.md, DeepSpeed 0.19):
- ZeRO-1/2: this rank's fragment of each parameter's reduced gradient is reached through
  the private ``param._hp_mapping`` (``get_lp_grad_fragment``; flat offset
  ``lp_fragment_address.start`` in the full parameter); the fp32 master fragment is
  ``hp_fragment``. A second backward *overwrites* the partition.
- ZeRO-3: public ``safe_get_local_grad`` / ``safe_set_local_grad`` on the fp32 partition of
  ``ds_tensor.ds_numel`` elements (rank r holds flat elements [r·n, (r+1)·n), padded at the
  end); ``safe_get_local_fp32_param`` is θ's partition. A second backward *accumulates*.
We read a copy and zero the views after every backward, so both behaviours give the same.

The engine runs with DeepSpeed's gradient accumulation at 1: every backward is a boundary
(reduced at once); accumulation over ``distributed.gradient_accumulation_steps``
micro-batches is done here in fp32 on the shards (one reduction per micro-batch).
Mixed precision is torch autocast inside the engine (``torch_autocast`` section with no
lower-precision communication): fp32 parameters, gradients and collectives.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.nn as nn

from .adapters import ShardedAdapter, ShardView, add_into


def load_deepspeed_config(accelerator, path: Optional[str]) -> dict:
    """``distributed.deepspeed_config`` when set (the run config is the more specific
    choice), else the JSON given to ``accelerate launch`` (its DeepSpeed plugin)."""
    if path is not None:
        with open(path) as fh:
            return json.load(fh)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None) if accelerator is not None else None
    if plugin is not None and getattr(plugin, "deepspeed_config", None):
        return copy.deepcopy(plugin.deepspeed_config)
    raise ValueError(
        "distributed.backend=deepspeed needs a DeepSpeed JSON: launch with a DEEPSPEED accelerate config "
        "(configs/accelerate/deepspeed_zero2.yaml) or set distributed.deepspeed_config=configs/deepspeed/zero2.json"
    )


def engine_config(base: dict, *, micro_batch: int, world_size: int, grad_clip: Optional[float], bf16: bool) -> dict:
    """Fill the launcher's JSON for one engine; refuse settings that would break exactness."""
    conf = copy.deepcopy(base)
    for key in ("fp16", "bf16"):
        section = conf.get(key)
        if isinstance(section, dict) and section.get("enabled") is True:
            raise ValueError(
                f"DeepSpeed config enables {key}: derd_scale's mixed precision is torch autocast "
                f"(distributed.mixed_precision=bf16); remove the {key} section"
            )
        conf.pop(key, None)
    gas = conf.get("gradient_accumulation_steps", 1)
    if gas not in (1, "auto"):
        raise ValueError(
            "DeepSpeed config sets gradient_accumulation_steps: use distributed.gradient_accumulation_steps instead "
            "(accumulation is done on the gradient shards, before the Stage-II aggregation)"
        )
    for key in ("optimizer", "scheduler"):
        if key in conf:
            raise ValueError(
                f"DeepSpeed config has a {key!r} section: derd_scale builds the optimiser and schedule from the run config"
            )
    conf["gradient_accumulation_steps"] = 1
    conf["train_micro_batch_size_per_gpu"] = micro_batch
    conf["train_batch_size"] = micro_batch * world_size
    conf["gradient_clipping"] = float(grad_clip or 0.0)
    conf["zero_allow_untested_optimizer"] = True  # torch SGD/Adam passed as client optimisers
    conf["steps_per_print"] = 10**12
    zero = conf.setdefault("zero_optimization", {})
    for k in [k for k, v in zero.items() if v == "auto"]:
        del zero[k]  # DeepSpeed's own defaults
    if bf16:
        conf["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    else:
        conf.pop("torch_autocast", None)
    return conf


def build_engine(module: nn.Module, optimizer: torch.optim.Optimizer, conf: dict):
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=conf)
    return engine


class DeepSpeedGradients(ShardedAdapter):
    """The adapter for a DeepSpeed engine (ZeRO stage 1, 2 or 3); ``module`` is the engine."""

    kind = "deepspeed"

    def __init__(self, engine, optimizer, **kwargs):
        super().__init__(engine, optimizer, **kwargs)
        self.engine = engine
        self.stage = int(engine.zero_optimization_stage())
        if self.stage not in (1, 2, 3):
            raise ValueError(f"DeepSpeed ZeRO stage {self.stage}: derd_scale supports stages 1, 2 and 3")
        self.sharded = True
        self._acc: Optional[list[torch.Tensor]] = None

    # ---- where this rank's shard lives ----------------------------------------------

    def _layout(self) -> list[tuple[torch.Tensor, int, int]]:
        """Per parameter: (fp32 θ view of this rank's shard, flat start in the full parameter, numel)."""
        out = []
        for _, p in self.named:
            if self.stage == 3:
                from deepspeed.utils import safe_get_local_fp32_param

                n = p.ds_tensor.ds_numel
                start = self.engine.optimizer._get_param_partition_rank(p) * n
                valid = max(0, min(p.ds_numel - start, n))  # the last partition is padded
                out.append((safe_get_local_fp32_param(p).view(-1)[:valid], start, valid))
            elif getattr(p, "_hp_mapping", None) is None:  # no fragment of this parameter here
                out.append((torch.zeros(0, device=p.device), 0, 0))
            else:
                m = p._hp_mapping
                out.append((m.hp_fragment.view(-1), m.lp_fragment_address.start, m.lp_fragment_address.numel))
        return out

    def _grad_views(self) -> list[torch.Tensor]:
        """This rank's reduced gradient shard per parameter (valid between backward and step)."""
        out = []
        for (_, p), (_, start, valid) in zip(self.named, self._layout()):
            if self.stage == 3:
                from deepspeed.utils import safe_get_local_grad

                out.append(safe_get_local_grad(p).view(-1)[:valid])
            elif valid == 0:
                out.append(torch.zeros(0, device=p.device))
            else:
                grad = p._hp_mapping.get_lp_grad_fragment(p._index_in_param_group).reshape(-1)
                if grad.numel() == p.numel() and valid != p.numel():
                    grad = grad.narrow(0, start, valid)  # a full-size buffer: keep our fragment
                out.append(grad)
        return out

    def _read_and_zero(self) -> list[torch.Tensor]:
        out = [g.detach().float().clone() for g in self._grad_views()]
        self.write_gradients([torch.zeros_like(g) for g in out])
        return out

    # ---- one loss -------------------------------------------------------------------

    def _zero_grad(self) -> None:
        pass  # the engine clears gradients in step()

    @contextmanager
    def micro_batch(self, m: int) -> Iterator[None]:
        yield  # every backward is reduced (DeepSpeed's no_sync refuses partitioned gradients)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss / self.accumulation)
        if self.accumulation > 1:  # every backward is a DeepSpeed boundary: fold it into fp32 sums
            self._acc = add_into(self._acc, self._read_and_zero())

    def step(self) -> None:
        if self._acc is not None:
            self.write_gradients(self._acc)
            self._acc = None
        self.engine.step()  # clipping (gradient_clipping) happens inside, on the written shards

    def _take(self) -> list[torch.Tensor]:
        if self._acc is not None:
            out, self._acc = self._acc, None
            return out
        return self._read_and_zero()

    # ---- Stage II ---------------------------------------------------------------------

    def shards(self) -> list[ShardView]:
        return [
            ShardView(name, theta, torch.arange(start, start + valid, device=theta.device))
            for (name, _), (theta, start, valid) in zip(self.named, self._layout())
        ]

    def write_gradients(self, grads: Sequence[torch.Tensor]) -> None:
        if self.stage == 3:
            from deepspeed.utils import safe_set_local_grad

            for (_, p), g in zip(self.named, grads):
                full = torch.zeros(p.ds_tensor.ds_numel, dtype=torch.float32, device=g.device)
                full[: g.numel()] = g.float()
                safe_set_local_grad(p, full)
            return
        for view, g in zip(self._grad_views(), grads):
            view.copy_(g.to(view.dtype))

    # ---- state ----------------------------------------------------------------------

    def full_state_dict(self) -> dict:
        if self.stage != 3:
            return self.inner.state_dict()
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.inner.parameters()), modifier_rank=None):
            return {k: v.detach().clone() for k, v in self.inner.state_dict().items()}

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        if self.stage != 3:
            return list(self.inner.named_parameters())  # ZeRO-1/2 keep a full replica per rank
        return super().local_parameters()

    def save(self, directory: Path) -> Optional[dict]:
        # Every rank writes its optimizer partition (and, on ZeRO-3, its parameter partition).
        self.engine.save_checkpoint(str(directory), tag=self.name, client_state={}, save_latest=False)
        return {"deepspeed": self.name}

    def load(self, directory: Path, entry: Optional[dict]) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory),
            tag=self.name,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
            load_module_strict=True,
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {self.name!r} under {directory}")
