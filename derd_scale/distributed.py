"""The one place that knows about distribution.

``build_accelerator`` makes the Accelerator (gloo on CPU); ``prepare`` turns the built
models into a ``Parallel``: the student and the generator (none for a data-driven method)
wrapped for the backend, each with its optimiser and a gradient adapter (``derd_scale.parallel``), the frozen teachers
only moved to the device (eval, no gradients, bf16 weights under bf16 autocast), global
batch statistics when the batch is split across processes, and the autocast context.

    backend   launched by                                              adapter
    none      python launch/train.py                                   ReplicatedGradients
    ddp       accelerate launch --config_file configs/accelerate/ddp.yaml   ReplicatedGradients (DDP)
    deepspeed accelerate launch --config_file configs/accelerate/deepspeed_zero{1,2,3}.yaml  DeepSpeedGradients
    fsdp      accelerate launch --config_file configs/accelerate/fsdp2.yaml (GPU)
              torchrun ... launch/train.py --set distributed.backend=fsdp (any device)   FSDPGradients

CPU twins of every row (2 processes, gloo) are in ``configs/accelerate/cpu/`` and run by
``pytest -m slow tests/parallel``; ``docs/distributed.md`` says which to pick when.

Exactness across layouts (a 2-process run equals a 1-process run of the same global batch
up to fp32 round-off) rests on: each rank takes its slice of one global latent batch
(``trainer.sample_latents``); SA and every per-sample loss are local; gradients are
averaged over ranks by the backend; the batch statistics — BatchNorm in the student and
generator (``parallel.batchnorm.GlobalBatchNorm``) and Stage I's L_BN / L_ie
(``Parallel.batch_mean``) — are taken over the global batch with a differentiable
all-reduce on a separate process group; SGA's noise is a function of the element index.
``distributed.global_batch_statistics=false`` trades that for per-process statistics.

Model code (``derd_scale.models``, ``derd_scale.derd``) never imports this module.
"""

from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .config import DistributedConfig
from .models.factory import freeze
from .natural_expert import NaturalExpert
from .parallel.adapters import GradientAdapter, ReplicatedGradients, ShardView, unwrap, world
from .parallel.batchnorm import convert_batchnorm, global_mean
from .weight_average import StudentAverage

__all__ = [
    "build_accelerator",
    "prepare",
    "Parallel",
    "GradientAdapter",
    "ReplicatedGradients",
    "ShardView",
    "unwrap",
    "world",
    "shutdown",
    "resolve_backend",
]


def build_accelerator(cfg: DistributedConfig, cpu: Optional[bool] = None):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    kwargs_handlers = []
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Without this, DeepSpeed under Accelerate on CPU sees one process per rank (docs/platform.md).
        # Only when launched multi-process: in one process a backend makes Accelerate expect a group.
        kwargs_handlers.append(InitProcessGroupKwargs(backend="gloo"))
    if cpu is None:
        # Accelerate turns DeepSpeed on only when cpu=False; without CUDA it still runs on the CPU.
        cpu = not torch.cuda.is_available() and not _env_flag("ACCELERATE_USE_DEEPSPEED")
    return Accelerator(
        # Mixed precision is our own torch.autocast (Parallel.autocast) on every backend:
        # Accelerate's is a no-op under DeepSpeed and would switch on DeepSpeed's bf16 weights.
        mixed_precision="no",
        gradient_accumulation_steps=1,  # accumulation is explicit in the loops
        cpu=cpu,
        kwargs_handlers=kwargs_handlers,
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def resolve_backend(cfg: DistributedConfig, accelerator) -> str:
    """The backend from the run config, or (``auto``) from what the launcher set up."""
    from accelerate.utils import DistributedType

    launched = {
        DistributedType.NO: "none",
        DistributedType.MULTI_CPU: "ddp",
        DistributedType.MULTI_GPU: "ddp",
        DistributedType.DEEPSPEED: "deepspeed",
        DistributedType.FSDP: "fsdp",
    }.get(accelerator.distributed_type, "ddp")
    # Launched with a DeepSpeed/FSDP accelerate config but Accelerate set up something else
    # (FSDP on CPU silently becomes DDP, docs/platform.md): stop rather than train another layout.
    for flag, wanted, hint in (
        (
            "ACCELERATE_USE_DEEPSPEED",
            "deepspeed",
            "build the Accelerator with derd_scale.distributed.build_accelerator, "
            "and on a CPU machine do not set ACCELERATE_USE_CPU for DeepSpeed launches",
        ),
        ("ACCELERATE_USE_FSDP", "fsdp", "on CPU run FSDP2 with torchrun ... --set distributed.backend=fsdp"),
    ):
        if _env_flag(flag) and launched != wanted:
            raise RuntimeError(
                f"launched with a {wanted} accelerate config but Accelerate set up {accelerator.distributed_type}: {hint}"
            )
    backend = launched if cfg.backend == "auto" else cfg.backend
    if launched in ("deepspeed", "fsdp") and backend != launched:
        raise ValueError(
            f"distributed.backend={cfg.backend}: the launcher set up {launched}; use backend=auto or {launched}"
        )
    _, size = world()
    if backend == "ddp" and size == 1:
        backend = "none"  # one process: nothing to replicate
    if backend == "none" and size > 1:
        raise ValueError(f"distributed.backend=none with {size} processes: use auto, ddp, deepspeed or fsdp")
    return backend


def check_launch(cfg: DistributedConfig) -> int:
    """Stop on docs/platform.md's silent launch traps instead of training the wrong thing."""
    _, size = world()
    env = int(os.environ.get("WORLD_SIZE", "1"))
    if env != size:
        raise RuntimeError(
            f"the launcher started {env} processes but this one sees a world of {size}: the processes are not "
            f"synchronised (on a CPU machine `accelerate launch --multi_gpu` needs ACCELERATE_USE_CPU=true)"
        )
    if cfg.expected_world_size is not None and size != cfg.expected_world_size:
        raise RuntimeError(
            f"distributed.expected_world_size={cfg.expected_world_size} but {size} process(es) started "
            f"(`accelerate launch --cpu --num_processes N` starts one; see docs/distributed.md)"
        )
    return size


def place_frozen(model: nn.Module, device, bf16_weights: bool) -> nn.Module:
    """A teacher: device, eval mode, no gradients; never wrapped by DDP/DeepSpeed/FSDP.

    With bf16 autocast, Linear/Conv weights are stored in bf16: autocast would round them
    to bf16 at every call anyway, so outputs are bit-identical and memory halves. Norm
    layers (their running statistics are L_BN's targets) and everything else stay fp32.
    """
    freeze(model).to(device)
    if bf16_weights:
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                m.to(torch.bfloat16)
    return model


def compile_models(models, mode: str, trained: bool) -> None:
    """``torch.compile`` the teachers (and, with ``trained``, the student and the generator) in
    place, before any wrapper: ``nn.Module.compile`` keeps the module, its parameters and its
    state_dict keys, so checkpoints and resume do not depend on the switch; a deep copy (snapshot,
    EMA, the evaluation's attacked copy) drops the compiled forward and runs eager. Why these
    modules: SA and the student's inner maximisation call the teachers and the student K times per
    step with input gradients, a chain of small kernels that fusion shortens (1.6-1.8x per real-size ViT step on an H200; docs/performance.md)."""
    import torch._functorch.config

    # GA takes the two task gradients from one student forward (retain_graph=True), which
    # inductor's donated backward buffers forbid; donation only saves a copy.
    torch._functorch.config.donated_buffer = False
    kwargs = {} if mode == "default" else {"mode": mode}
    names = ("natural_teacher", "robust_teacher", *(("student", "generator") if trained else ()))
    for name in names:
        if getattr(models, name) is not None:
            getattr(models, name).compile(**kwargs)


@dataclass
class Parallel:
    """What the training loops need after ``prepare``: one owner per trained or derived role —
    the ``student`` and ``generator`` adapters (``.module`` for the training forward,
    ``.unwrapped`` for input-gradient attacks, ``.unsharded`` for export) and the
    ``natural_expert`` (who plays T_nat in Stage II) — and a few facts."""

    accelerator: Any
    backend: str
    student: GradientAdapter
    generator: Optional[GradientAdapter]
    """None where the run has no generator (a data-driven method: ``state.Models.generator``)."""
    rank: int = 0
    world_size: int = 1
    accumulation: int = 1
    mixed_precision: str = "no"
    batch_mean: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    """Mean over the global batch of a per-process batch mean (None in one process)."""
    natural_expert: Optional[NaturalExpert] = None
    """Who plays T_nat in Stage II (``derd_scale.natural_expert``); ``prepare`` always sets it."""
    student_average: Optional[StudentAverage] = None
    """The EMA of the student's Stage-II weights (``derd_scale.weight_average``); ``prepare`` always sets it."""

    def shipped_student(self) -> tuple[nn.Module, Optional[dict]]:
        """What is probed, exported and evaluated: the student's EMA when ``stage2.student_ema`` > 0
        and Stage II has begun (with its state dict), else the live student's evaluation module
        (and None: the caller gathers ``student.full_state_dict()``)."""
        average = self.student_average.module if self.student_average is not None else None
        if average is not None:
            return average, average.state_dict()
        return self.student.eval_module(), None

    @property
    def optimizers(self) -> dict:
        return {name: adapter.optimizer for name, adapter in self.adapters.items()}

    @property
    def adapters(self) -> dict:
        """The trained models' adapters by role (what checkpoints save and load)."""
        return {"student": self.student, **({"generator": self.generator} if self.generator is not None else {})}

    def mean_metrics(self, metrics: dict) -> dict:
        """Metrics averaged over ranks (one collective; every rank must call it). Per-rank
        quantities (losses, flip rate, agreement) become global-batch means; quantities that
        are already global (gradient norms, cos, τ) are unchanged."""
        if self.world_size == 1 or not metrics:
            return {k: float(v) for k, v in metrics.items()}
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return {k: float(v) / self.world_size for k, v in zip(keys, values)}

    def autocast(self):
        return bf16_autocast(self.mixed_precision, self.accelerator.device)


def bf16_autocast(precision: str, device: torch.device):
    """The training step's autocast context for a resolved precision ("bf16" or "no")."""
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls/convs run natively here: CUDA with bf16 support, or a CPU with AMX or
    AVX512-BF16 (without them CPU bf16 is emulated and ~25× slower than fp32, docs/performance.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return bool(
        getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
    )


def resolve_mixed_precision(setting: str, device: torch.device) -> str:
    """``distributed.mixed_precision`` → "bf16" or "no" (``auto``: bf16 only with native support)."""
    if setting == "auto":
        return "bf16" if native_bf16(device) else "no"
    return setting


def prepare(models, cfg, accelerator) -> Parallel:
    """Wrap ``models.student`` / ``models.generator`` (when there is one) for the backend
    (``models.student`` then names the adapter's ``module``: ``par.student`` owns it), build their optimisers
    (``derd_scale.optim.build_optimizer``), place the teachers, set up the natural expert.
    Every rank must call it (it creates process groups)."""
    from .optim import build_optimizer as make_optimizer

    dc = cfg.distributed
    size = check_launch(dc)
    rank, _ = world()
    backend = resolve_backend(dc, accelerator)
    device = accelerator.device
    precision = resolve_mixed_precision(dc.mixed_precision, device)
    bf16 = precision == "bf16"
    for teacher in (models.natural_teacher, models.robust_teacher):
        place_frozen(teacher, device, bf16 and dc.teachers_bf16)
    if dc.channels_last:
        # Before wrapping. The sharded backends flatten parameters with view(-1), which a
        # channels-last weight refuses: there only the frozen teachers change format.
        trained = (models.student, models.generator) if backend in ("none", "ddp") else ()
        for module in (models.natural_teacher, models.robust_teacher, *trained):
            if module is not None:
                module.to(memory_format=torch.channels_last)

    # Unsharded copies to rebuild full models from (snapshots, evaluation, the
    # student-as-natural-teacher variants) — only the sharded backends need them.
    roles = [k for k in ("student", "generator") if getattr(models, k) is not None]  # no G: a data-driven method
    templates = {k: copy.deepcopy(getattr(models, k)) for k in roles} if backend in ("deepspeed", "fsdp") else {}
    compile_mode = dc.compile if dc.compile != "auto" else ("default" if device.type == "cuda" else "none")
    if compile_mode != "none":
        compile_models(models, compile_mode, trained=backend in ("none", "ddp"))
    batch_mean = None
    if size > 1 and dc.global_batch_statistics:
        # Its own group: these collectives run inside forward/backward, interleaved with the
        # backend's gradient reductions, which must not share a queue with them.
        group = dist.new_group()
        batch_mean = partial(global_mean, group=group)
        for name in roles:
            convert_batchnorm(getattr(models, name), group)

    accumulation = dc.gradient_accumulation_steps
    mesh, ds_base = None, None
    if backend == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (size,))
    if backend == "deepspeed":
        from .parallel.zero import load_deepspeed_config

        ds_base = load_deepspeed_config(accelerator, dc.deepspeed_config)

    adapters = {}
    for name in roles:
        module = getattr(models, name).to(device)
        oc = getattr(cfg.optim, name)
        kw = dict(name=name, accumulation=accumulation, max_norm=oc.grad_clip, template=templates.get(name))
        if backend in ("none", "ddp"):
            if backend == "ddp":
                from torch.nn.parallel import DistributedDataParallel

                # With global batch statistics the BN buffers are identical on every rank,
                # so DDP's per-forward buffer broadcast is skipped; otherwise rank 0's wins.
                module = DistributedDataParallel(
                    module,
                    device_ids=[device.index] if device.type == "cuda" else None,
                    forward_sync_buffers=batch_mean is None,
                )
            adapter: GradientAdapter = ReplicatedGradients(module, make_optimizer(module.parameters(), oc), **kw)
        elif backend == "deepspeed":
            from .parallel.zero import DeepSpeedGradients, build_engine, engine_config

            stage_batch = cfg.stage2.batch_size if cfg.stage2.enabled else cfg.stage1.batch_size
            conf = engine_config(
                ds_base,
                micro_batch=max(1, stage_batch // (size * accumulation)),
                world_size=size,
                grad_clip=oc.grad_clip,
                bf16=bf16,
            )
            optimizer = make_optimizer(module.parameters(), oc)
            adapter = DeepSpeedGradients(build_engine(module, optimizer, conf), optimizer, **{**kw, "max_norm": None})
        elif backend == "fsdp":
            from .parallel.fsdp2 import FSDPGradients, shard_module

            reshard, min_params = _fsdp_options(accelerator, dc)
            shard_module(module, mesh, reshard_after_forward=reshard, min_params=min_params)
            adapter = FSDPGradients(module, make_optimizer(module.parameters(), oc), **kw)
        else:
            raise ValueError(f"distributed.backend: {backend!r}")
        setattr(models, name, adapter.module)
        adapters[name] = adapter
    expert = NaturalExpert(cfg.stage2.eg.natural_teacher, models.natural_teacher, cfg.stage2.eg.ema_decay)
    return Parallel(
        accelerator,
        backend,
        adapters["student"],
        adapters.get("generator"),
        rank,
        size,
        accumulation,
        precision,
        batch_mean,
        expert,
        StudentAverage(cfg.stage2.student_ema),
    )


def _fsdp_options(accelerator, dc: DistributedConfig) -> tuple[bool, Optional[int]]:
    """reshard_after_forward and the size threshold for FSDP units: the accelerate FSDP
    plugin's values when launched with configs/accelerate/fsdp2.yaml, else the run config."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    reshard, min_params = dc.fsdp_reshard_after_forward, dc.fsdp_min_params
    if plugin is not None:
        if isinstance(getattr(plugin, "reshard_after_forward", None), bool):
            reshard = plugin.reshard_after_forward
        if getattr(plugin, "min_num_params", None):
            min_params = plugin.min_num_params
    return reshard, min_params


def shutdown() -> None:
    """Leave the process group cleanly (every rank), so launchers see no aborts or hangs."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
