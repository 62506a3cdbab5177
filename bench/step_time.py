"""Per-step wall time of DERD Stage I and Stage II on CPU (issue: DERD stages).

    python bench/step_time.py --out bench/out/step_time.json [--batch 128] [--steps 5]

Teachers and student are ResNet-20-sized CIFAR nets (random init: speed does not depend
on the weights), 32×32 inputs, SA K=10. Writes median/mean seconds per step to --out.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/out/step_time.json")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per stage (after one warm-up step)")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from accelerate import Accelerator

    from derd_scale.config import config_from_dict
    from derd_scale.data import dataset_info
    from derd_scale.derd.generator import PseudoImageGenerator
    from derd_scale.models import create_model, freeze
    from derd_scale.state import Models, TrainState
    from derd_scale.trainer import build_training, stage1_step, stage2_step

    cfg = config_from_dict(
        {"data": {"name": "cifar10"}}, [f"stage1.batch_size={args.batch}", f"stage2.batch_size={args.batch}"]
    )
    info = dataset_info("cifar10")
    models = Models(
        freeze(create_model(args.arch, 10)),
        freeze(create_model(args.arch, 10)),
        create_model(args.arch, 10),
        PseudoImageGenerator(32, 3),
        info,
    )
    models, par, scheds, _ = build_training(cfg, Accelerator(cpu=True), models)
    results = {
        "batch": args.batch,
        "arch": args.arch,
        "threads": args.threads,
        "sa_steps": cfg.stage2.sa.steps,
        "torch": torch.__version__,
    }
    for stage in ("stage1", "stage2"):
        times = []
        state = TrainState(stage=stage)
        for i in range(args.steps + 1):
            t0 = time.perf_counter()
            if stage == "stage1":
                stage1_step(models, cfg, i, scheds, par)
            else:
                state.step = i
                stage2_step(models, cfg, state, scheds, par)
            if i:
                times.append(time.perf_counter() - t0)
        results[stage] = {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "n": len(times)}
        print(stage, results[stage], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
