"""Seconds per DERD step of the tiny CNN under each layout (same global batch).

    python bench/parallel_step_time.py --all            # every layout below, one after another
    python bench/parallel_step_time.py                  # one process (the worker, by hand)
    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu/ddp.yaml bench/parallel_step_time.py
    DS_ACCELERATOR=cpu accelerate launch --config_file configs/accelerate/cpu/deepspeed_zero2.yaml bench/parallel_step_time.py
    ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2 bench/parallel_step_time.py --backend fsdp

``--all`` launches 1 process × 1 thread, 1 process × 2 threads, and 2 processes × 1 thread
under DDP, ZeRO-1/2/3 and FSDP2 (the CPU twins of tests/parallel), and writes
``OUT/results.json`` and ``OUT/results.md`` (default OUT: bench/out/parallel_step_time).
A worker appends one JSON line (rank 0) to ``--json-out``: median seconds of a Stage-I and
a Stage-II step after two warm-up steps. On this 2-core CPU it measures overhead, not
speed-up: two processes share the two cores that one process would use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--json-out", default=None, help="append the result line to this file (rank 0)")
    p.add_argument("--all", action="store_true", help="launch every layout and write OUT/results.{json,md}")
    p.add_argument("--out", default="bench/out/parallel_step_time", help="with --all: output folder")
    args = p.parse_args()
    if args.all:
        return run_all(args)

    from derd_scale.config import config_from_dict
    from derd_scale.data import dataset_info
    from derd_scale.derd.generator import PseudoImageGenerator
    from derd_scale.distributed import build_accelerator, shutdown
    from derd_scale.models import create_model, freeze
    from derd_scale.state import Models, TrainState
    from derd_scale.trainer import build_training, stage1_step, stage2_step

    cfg = config_from_dict(
        {},
        [
            "data.name=fashion_mnist",
            f"stage1.batch_size={args.batch}",
            f"stage2.batch_size={args.batch}",
            f"distributed.backend={args.backend}",
        ],
    )
    accelerator = build_accelerator(cfg.distributed)
    torch.manual_seed(0)
    w = args.width
    models = Models(
        freeze(create_model("small_cnn", 10, in_chans=1, width=w)),
        freeze(create_model("small_cnn", 10, in_chans=1, width=w)),
        create_model("small_cnn", 10, in_chans=1, width=w),
        PseudoImageGenerator(28, 1, latent_dim=64, base_channels=16),
        dataset_info("fashion_mnist"),
    )
    models, par, scheds, _ = build_training(cfg, accelerator, models)
    out = {
        "backend": par.backend,
        "world_size": par.world_size,
        "global_batch": args.batch,
        "student_width": w,
        "threads": torch.get_num_threads(),
    }
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
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(json.dumps(out) + "\n")
    shutdown()
    return 0


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_all(args) -> int:
    """Every layout through its real launcher (the recipes of docs/distributed.md)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = out / "lines.jsonl"
    lines.unlink(missing_ok=True)
    bin_dir = Path(sys.executable).parent

    def tool(name: str) -> str:
        return shutil.which(name, path=str(bin_dir)) or name

    def accelerate(config: str) -> list[str]:
        return [
            tool("accelerate"),
            "launch",
            "--config_file",
            str(REPO / "configs/accelerate/cpu" / config),
            "--main_process_port",
            _free_port(),
        ]

    base = dict(
        os.environ,
        DS_ACCELERATOR="cpu",
        TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(bin_dir.parent / "torch_extensions")),
    )
    cpu = dict(base, ACCELERATE_USE_CPU="true")  # DDP/FSDP twins; DeepSpeed's must NOT have it (docs/platform.md)
    worker = [
        str(Path(__file__).resolve()),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--width",
        str(args.width),
        "--json-out",
        str(lines),
    ]
    layouts = [
        ("1 process, 1 thread", [sys.executable], dict(cpu, OMP_NUM_THREADS="1"), []),
        ("1 process, 2 threads", [sys.executable], dict(cpu, OMP_NUM_THREADS="2"), []),
        ("DDP, 2 × 1 thread", accelerate("ddp.yaml"), dict(cpu, OMP_NUM_THREADS="1"), []),
        ("ZeRO-1, 2 × 1 thread", accelerate("deepspeed_zero1.yaml"), dict(base, OMP_NUM_THREADS="1"), []),
        ("ZeRO-2, 2 × 1 thread", accelerate("deepspeed_zero2.yaml"), dict(base, OMP_NUM_THREADS="1"), []),
        ("ZeRO-3, 2 × 1 thread", accelerate("deepspeed_zero3.yaml"), dict(base, OMP_NUM_THREADS="1"), []),
        (
            "FSDP2, 2 × 1 thread",
            [tool("torchrun"), "--standalone", "--nproc_per_node", "2"],
            dict(cpu, OMP_NUM_THREADS="1"),
            ["--backend", "fsdp"],
        ),
    ]
    results = []
    for name, launcher, env, extra in layouts:
        print(f"[bench] {name}", flush=True)
        before = lines.read_text().splitlines() if lines.exists() else []
        t0 = time.time()
        proc = subprocess.run(
            launcher + worker + extra, env=env, cwd=REPO, capture_output=True, text=True, timeout=1800
        )
        after = lines.read_text().splitlines() if lines.exists() else []
        if proc.returncode != 0 or len(after) != len(before) + 1:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"[bench] {name}: the launch failed (exit {proc.returncode})")
        results.append({"layout": name, **json.loads(after[-1]), "launch_seconds": time.time() - t0})
    (out / "results.json").write_text(json.dumps(results, indent=2))
    rows = ["| layout | backend | processes | Stage I s/step | Stage II s/step |", "|---|---|---|---|---|"]
    rows += [
        f"| {r['layout']} | {r['backend']} | {r['world_size']} | {r['stage1_step_s']:.3f} | {r['stage2_step_s']:.3f} |"
        for r in results
    ]
    head = f"Tiny DERD step (small CNN width {args.width}, global batch {args.batch}, median of {args.steps} steps after 2 warm-up), {time.strftime('%Y-%m-%d')}"
    (out / "results.md").write_text(head + "\n\n" + "\n".join(rows) + "\n")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
