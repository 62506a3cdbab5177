"""Time per student update of the recommended Stage II with ``stage2.student_steps`` k = 1 and k = 2.

    OMP_NUM_THREADS=1 python bench/stage2_student_steps.py --recipe fmnist --data-path ../shared/data

One process builds the recipe's recommended configuration for each k in turn, interleaved
(k = 1, 2, 1, 2 by default: a machine whose load changes hits both alike), runs one warm-up
Stage-II step and then ``--steps`` timed ones, and divides by k. With k = 2 each Stage-II step is
one G update, one SA pass and two student updates (each with its own inner maximisation), so the
ratio says what the shared teacher work saves per student step. Writes
``bench/out/stage2_student_steps.json``. Quality at equal student steps is a table question
(docs/results.md, "Fashion-MNIST steering in bf16").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def time_per_update(config: list[str], k: int, steps: int) -> float:
    """Seconds per student update over ``steps`` Stage-II steps (after one warm-up step)."""
    from derd_scale.config import config_from_dict
    from derd_scale.distributed import build_accelerator
    from derd_scale.state import TrainState
    from derd_scale.trainer import build_training, stage2_step

    cfg = config_from_dict({}, config + ["preset=derd_recommended", f"stage2.student_steps={k}"])
    models, par, scheds, _ = build_training(cfg, build_accelerator(cfg.distributed))
    state = TrainState(stage="stage2")
    par.natural_expert.start(par.student)
    stage2_step(models, cfg, state, scheds, par)  # warm-up: allocator, oneDNN kernels
    t0 = time.perf_counter()
    for i in range(steps):
        state.step = i + 1
        stage2_step(models, cfg, state, scheds, par)
    return (time.perf_counter() - t0) / steps / k


def main() -> int:
    import importlib.util

    from derd_scale.commands import add_override_option

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="fmnist", choices=["fmnist", "cifar10_2"])
    p.add_argument("--data-path", default="../shared/data")
    p.add_argument("--order", default="1,2,1,2", help="the k of each measurement, in order")
    p.add_argument("--steps", type=int, default=3)
    add_override_option(p, "dotted config override, repeatable")
    p.add_argument("--out", default=str(REPO / "bench/out/stage2_student_steps.json"))
    args = p.parse_args()
    spec = importlib.util.spec_from_file_location("distill_table", REPO / "bench/distill_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    config = table.recipe(args.recipe, args.data_path)["config"] + args.overrides
    rows = []
    for k in (int(x) for x in args.order.split(",")):
        seconds = time_per_update(config, k, args.steps)
        rows.append({"k": k, "seconds_per_student_update": seconds})
        print(f"[student_steps] k={k}: {seconds:.3f} s per student update", flush=True)
    mean = {
        k: sum(r["seconds_per_student_update"] for r in rows if r["k"] == k) / sum(r["k"] == k for r in rows)
        for k in {r["k"] for r in rows}
    }
    result = {
        "recipe": args.recipe,
        "overrides": args.overrides,
        "threads": torch.get_num_threads(),
        "steps_per_measurement": args.steps,
        "rows": rows,
        "mean_seconds_per_student_update": {str(k): v for k, v in sorted(mean.items())},
        "speedup_k2_over_k1": mean[1] / mean[2] if 1 in mean and 2 in mean else None,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
