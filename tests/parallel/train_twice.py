"""Worker for the kill-and-resume tests: two full ``train()`` runs in one 2-process launch.

    DS_ACCELERATOR=cpu accelerate launch --config_file configs/accelerate/cpu/deepspeed_zero2.yaml tests/parallel/train_twice.py ROOT --set ...
    torchrun --standalone --nproc_per_node 2 tests/parallel/train_twice.py ROOT --set distributed.backend=fsdp --set ...

Run ``full`` goes to the end. Run ``killed`` hard-exits (``os._exit(17)``, like a SIGKILL)
right after the checkpoint named by ``--preempt`` (e.g. ``stage2:2``); the test then
resumes it with the ordinary entry point, ``launch/train.py``, and compares.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from derd_scale.commands import add_override_option  # noqa: E402
from derd_scale.config import config_from_dict  # noqa: E402
from derd_scale.distributed import build_accelerator, world  # noqa: E402
from derd_scale.trainer import train  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("root")
p.add_argument("--preempt", required=True)
add_override_option(p, "dotted config override, repeatable")
args = p.parse_args()

cfg = config_from_dict({}, args.overrides + [f"output.root={args.root}", "output.name=full"])
accelerator = build_accelerator(cfg.distributed)
assert world()[1] == 2, f"expected 2 synchronised processes, got {world()[1]}"
train(cfg, "tiny", accelerator)
os.environ["DERD_SIMULATE_PREEMPTION"] = args.preempt
train(config_from_dict({}, args.overrides + [f"output.root={args.root}", "output.name=killed"]), "tiny", accelerator)
sys.exit(1)  # not reached: the killed run exits with 17 at the preemption point
