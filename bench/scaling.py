"""Numbers for docs/scaling.md: FLOPs, memory and projected wall time of the real ImageNet-100 config.

    python bench/scaling.py --out bench/out/scaling.json [--batch 2] [--gpus 8] [--mfu 0.35]

1. FLOPs of one Stage-I and one Stage-II step of configs/imnet100_vit.yaml's real model
   sizes (ViT-S/16 teachers, ViT-T/16 student, 224² generator; random init, no hub), counted
   with torch.utils.flop_counter at batch 1 and scaled linearly to the global batch.
2. Wall time and peak RSS of one real-size Stage-II step at ``--batch`` on this CPU (fp32).
3. Per-GPU parameter/gradient/optimiser bytes of the student under DDP, ZeRO-1/2/3 and FSDP
   (AdamW, bf16 params + fp32 master when mixed precision), and activation bytes at the
   config's per-GPU batch, measured by summing the tensors autograd saves for backward.
4. Projected time of the config's schedule on ``--gpus`` H100s at ``--mfu`` of the dense bf16
   peak (989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

H100_BF16_DENSE = 989e12


def build(batch: int):
    from accelerate import Accelerator

    from derd_scale.config import load_config
    from derd_scale.trainer import build_training

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(
        root / "configs" / "imnet100_vit.yaml",
        [
            "teachers.natural.arch=vit_small_patch16_224",
            "teachers.natural.pretrained=false",
            "teachers.robust.arch=vit_small_patch16_224",
            f"stage1.batch_size={batch}",
            f"stage2.batch_size={batch}",
            "distributed.mixed_precision=no",
            f"stage2.sa.chunk_size={batch}",
        ],
    )
    models, par, scheds, _ = build_training(cfg, Accelerator(cpu=True))
    return cfg, models, scheds, par


class GlobalFlopCounter:
    """torch.utils.flop_counter's per-op formulas without its module tracker: the tracker's
    hooks break ``torch.autograd.grad`` w.r.t. an input leaf, which SA crafting needs."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                f = flop_registry.get(func._overloadpacket)
                if f is not None:
                    counter.total += f(*args, **kwargs, out_val=out)
                return out

        self.total = 0
        self.mode = _Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def count_flops(batch: int = 2) -> dict:
    from derd_scale.state import TrainState
    from derd_scale.trainer import stage1_step, stage2_step

    cfg, models, scheds, par = build(batch)
    out = {}
    for stage in ("stage1", "stage2"):
        with GlobalFlopCounter() as fc:
            if stage == "stage1":
                stage1_step(models, cfg, 0, scheds, par)
            else:
                stage2_step(models, cfg, TrainState(stage="stage2"), scheds, par)
        out[stage] = fc.total / batch
    return out


def time_stage2(batch: int) -> dict:
    from derd_scale.state import TrainState
    from derd_scale.trainer import stage2_step

    cfg, models, scheds, par = build(batch)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    stage2_step(models, cfg, TrainState(stage="stage2"), scheds, par)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"batch": batch, "seconds": seconds, "peak_rss_gib": rss / 2**20, "rss_before_step_gib": rss0 / 2**20}


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, wrt_input: bool = False) -> int:
    """Bytes autograd keeps for backward during one forward (the activation memory)."""
    total = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    if wrt_input:
        x = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total


def memory_table(models, gpus: int, per_gpu_batch: int, sa_chunk: int) -> dict:
    n = sum(p.numel() for p in models.student.parameters())
    ng = sum(p.numel() for p in models.generator.parameters())
    nt = sum(p.numel() for p in models.natural_teacher.parameters()) + sum(
        p.numel() for p in models.robust_teacher.parameters()
    )
    # bf16 mixed precision, AdamW: params 2 B, grads 2 B, fp32 master 4 B + 2 moments 8 B.
    # GA/SGA keeps the two task gradients (g1, g2) of this rank's shard: 2 × 4 B (fp32 copies).
    p, g, o, task = 2 * n, 2 * n, 12 * n, 8 * n
    layouts = {
        "ddp": {"params": p, "grads": g, "optimizer": o, "task_grads": task},
        "zero1": {"params": p, "grads": g, "optimizer": o / gpus, "task_grads": task},
        "zero2": {"params": p, "grads": g / gpus, "optimizer": o / gpus, "task_grads": task / gpus},
        "zero3": {"params": p / gpus, "grads": g / gpus, "optimizer": o / gpus, "task_grads": task / gpus},
        "fsdp_full_shard": {"params": p / gpus, "grads": g / gpus, "optimizer": o / gpus, "task_grads": task / gpus},
    }
    for v in layouts.values():
        v["total"] = sum(v.values())
    x = torch.rand(1, 3, 224, 224)
    student_act = saved_activation_bytes(models.student.train(), x)
    teacher_act = saved_activation_bytes(models.natural_teacher, x, wrt_input=True)
    gen_act = (
        saved_activation_bytes(
            models.generator.train(), models.generator.sample(2, torch.Generator().manual_seed(0))[0][:2]
        )
        / 2
    )
    return {
        "params": {"student": n, "generator": ng, "teachers": nt},
        "student_state_bytes_per_gpu": layouts,
        "frozen_teachers_bf16_bytes": 2 * nt,
        "generator_state_bytes": 16 * ng,
        "activation_bytes_per_image_fp32": {
            "student": student_act,
            "teacher_input_grad": teacher_act,
            "generator": gen_act,
        },
        "activation_bytes_per_gpu": {
            "student_fwd": student_act * per_gpu_batch,
            "sa_crafting_chunk_two_teachers": 2 * teacher_act * min(sa_chunk, per_gpu_batch),
            "generator": gen_act * per_gpu_batch,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/out/scaling.json")
    ap.add_argument("--batch", type=int, default=2, help="batch of the timed real-size Stage-II step")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--mfu", type=float, default=0.35)
    args = ap.parse_args()
    torch.set_num_threads(2)

    flops = count_flops(2)  # batch 2: the generator's BatchNorm needs >1 sample; reported per image
    print("flops per image", flops, flush=True)
    timing = time_stage2(args.batch)
    print("stage2 step", timing, flush=True)
    cfg, models, *_ = build(2)
    from derd_scale.config import load_config

    real = load_config(
        Path(__file__).resolve().parent.parent / "configs" / "imnet100_vit.yaml", ["teachers.natural.pretrained=false"]
    )
    per_gpu = real.stage2.batch_size // args.gpus
    mem = memory_table(models, args.gpus, per_gpu, real.stage2.sa.chunk_size or per_gpu)
    total_flops = (
        flops["stage1"] * real.stage1.batch_size * real.stage1.steps
        + flops["stage2"] * real.stage2.batch_size * real.stage2.steps
    )
    seconds = total_flops / (args.gpus * H100_BF16_DENSE * args.mfu)
    result = {
        "flops_per_image": flops,
        "flops_per_step": {
            "stage1": flops["stage1"] * real.stage1.batch_size,
            "stage2": flops["stage2"] * real.stage2.batch_size,
        },
        "schedule": {
            "stage1_steps": real.stage1.steps,
            "stage2_steps": real.stage2.steps,
            "global_batch": real.stage2.batch_size,
        },
        "total_flops": total_flops,
        "projection": {
            "gpus": args.gpus,
            "mfu": args.mfu,
            "peak_flops_per_gpu": H100_BF16_DENSE,
            "hours": seconds / 3600,
        },
        "cpu_stage2_step": timing,
        "memory": mem,
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["projection"]), flush=True)


if __name__ == "__main__":
    main()
