"""Worker for tests/parallel/test_parallel.py: one 2-process launch runs every scenario of one backend.

    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu/ddp.yaml tests/parallel/worker.py --backend ddp --out OUT
    DS_ACCELERATOR=cpu accelerate launch --config_file configs/accelerate/cpu/deepspeed_zero3.yaml tests/parallel/worker.py --backend deepspeed --out OUT
    torchrun --standalone --nproc_per_node 2 tests/parallel/worker.py --backend fsdp --out OUT

Rank 0 writes ``OUT/<backend>.pt``: per scenario (and ZeRO stage) the gathered student and
generator state dicts, the metrics and the layout. The world size is asserted first: a
launch that started one process (docs/platform.md) fails here, not silently later.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from scenarios import NOT_ON_DEEPSPEED, SCENARIOS  # noqa: E402

from derd_scale.config import DistributedConfig  # noqa: E402
from derd_scale.distributed import build_accelerator, shutdown, world  # noqa: E402


def silent_trap(accelerator) -> dict:
    """docs/platform.md's DDP trap on purpose (one forward, two backward: the second is never
    all-reduced) must be caught by the end-of-run replica check; the adapter's way must pass."""
    from scenarios import build

    from derd_scale.trainer import check_ranks_in_sync

    rank, _ = world()
    out = {}
    for way in ("two_backward", "adapter"):
        cfg, models, par, _, _ = build("stage2", "ddp", accelerator)
        x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(10 + rank))  # different data per rank
        t = torch.randn(4, 10, generator=torch.Generator().manual_seed(20 + rank))
        if way == "two_backward":
            logits = models.student(x)
            l1, l2 = (logits - t).pow(2).mean(), (logits + t).pow(2).mean()
            l1.backward(retain_graph=True)
            l2.backward()
            par.student.optimizer.step()
        else:
            g1, g2, _, _ = par.student.task_gradients(
                lambda m: ((models.student(x) - t).pow(2).mean(), (models.student(x) + t).pow(2).mean())
            )
            par.student.write_gradients([a + b for a, b in zip(g1, g2)])
            par.student.step()
        try:
            check_ranks_in_sync(par.student)
            out[way] = "in_sync"
        except RuntimeError as err:
            out[way] = "diverged" if "diverged" in str(err) else str(err)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True, choices=["ddp", "deepspeed", "fsdp"])
    p.add_argument("--out", required=True)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--zero-stages", default="1,2,3")
    args = p.parse_args()
    torch.set_num_threads(1)

    from scenarios import run

    accelerator = build_accelerator(DistributedConfig())
    rank, size = world()
    if size != 2:
        print(f"WORLD_SIZE_WRONG {size}", flush=True)
        return 3
    results: dict = {"world_size": size, "distributed_type": str(accelerator.distributed_type), "timings": {}}
    stages = [int(s) for s in args.zero_stages.split(",")] if args.backend == "deepspeed" else [None]
    for stage in stages:
        for name in args.scenarios.split(","):
            key = name if stage is None else f"{name}@zero{stage}"
            t0 = time.perf_counter()
            if stage is not None and name in NOT_ON_DEEPSPEED:
                from derd_scale.config import ConfigError

                try:
                    run(name, args.backend, accelerator, stage)
                    results[key] = {"refused": None}
                except ConfigError as err:
                    results[key] = {"refused": str(err)}
                continue
            results[key] = run(name, args.backend, accelerator, stage)
            results["timings"][key] = time.perf_counter() - t0
            if rank == 0:
                print(f"done {key} in {results['timings'][key]:.1f}s", flush=True)
    if args.backend == "ddp":
        results["silent_trap"] = silent_trap(accelerator)
    if rank == 0:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        torch.save(results, Path(args.out) / f"{args.backend}.pt")
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
