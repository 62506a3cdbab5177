"""Seconds per DERD step of the tiny CNN under each layout (same global batch).

    python bench/parallel_step_time.py                                     # 1 process
    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu/ddp.yaml bench/parallel_step_time.py
    DS_ACCELERATOR=cpu accelerate launch --config_file configs/accelerate/cpu/deepspeed_zero2.yaml bench/parallel_step_time.py
    torchrun --standalone --nproc_per_node 2 bench/parallel_step_time.py --backend fsdp

Prints one JSON line (rank 0): median seconds of a Stage-I and a Stage-II step after warm-up.
On this 2-core CPU machine it measures overhead, not speed-up: two processes share the two
cores that one process would use, and gloo collectives replace nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    args = p.parse_args()

    from derd_scale.config import config_from_dict
    from derd_scale.data import dataset_info
    from derd_scale.derd.generator import PseudoImageGenerator
    from derd_scale.distributed import build_accelerator, prepare, shutdown
    from derd_scale.models import create_model
    from derd_scale.trainer import Models, TrainState, build_optimizer, build_scheduler, freeze, stage1_step, stage2_step

    cfg = config_from_dict({}, ["data.name=fashion_mnist", f"stage1.batch_size={args.batch}", f"stage2.batch_size={args.batch}", f"distributed.backend={args.backend}"])
    accelerator = build_accelerator(cfg.distributed)
    torch.manual_seed(0)
    w = args.width
    models = Models(freeze(create_model("small_cnn", 10, in_chans=1, width=w)), freeze(create_model("small_cnn", 10, in_chans=1, width=w)),
                    create_model("small_cnn", 10, in_chans=1, width=w), PseudoImageGenerator(28, 1, latent_dim=64, base_channels=16), dataset_info("fashion_mnist"))
    par = prepare(models, cfg, accelerator, build_optimizer)
    scheds = {k: build_scheduler(o, 1000, cfg.optim.student) for k, o in par.optimizers.items()}
    out = {"backend": par.backend, "world_size": par.world_size, "global_batch": args.batch, "student_width": w, "threads": torch.get_num_threads()}
    for stage in ("stage1", "stage2"):
        times = []
        state = TrainState(stage=stage)
        for i in range(args.steps + 2):
            accelerator.wait_for_everyone()
            t0 = time.perf_counter()
            if stage == "stage1":
                stage1_step(models, cfg, i, scheds, par)
            else:
                state.step = i
                stage2_step(models, cfg, state, scheds, par)
            accelerator.wait_for_everyone()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        out[f"{stage}_step_s"] = statistics.median(times)
    if accelerator.is_main_process:
        print(json.dumps(out))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
