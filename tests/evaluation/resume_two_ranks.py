"""Two ranks evaluating with ``resume_dir`` while rank 0 starts late (run by test_runner.py under
``python -m torch.distributed.run --nproc_per_node 2``).

The race it pins: rank 1 finishing batches before rank 0 has read the (empty) cache must not make
rank 0 take rank 1's fresh batches for cached ones (they would be counted twice)."""

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import derd_scale.evaluation.runner as runner
from derd_scale.evaluation import Protocol, evaluate

out = Path(sys.argv[1])
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
data = [(torch.rand(3, 4, 4), i % 10) for i in range(40)]
fingerprint = runner.model_fingerprint


def late_on_rank_0(m):
    if rank == 0:
        time.sleep(3.0)  # rank 1 meanwhile finishes (and caches) its first batches
    return fingerprint(m)


runner.model_fingerprint = late_on_rank_0
report = evaluate(model, data, ["fgsm"], Protocol("t", 0.1, 0.1, 1, 2), progress=False, resume_dir=out / "partial")
if rank == 0:
    (out / "report.json").write_text(json.dumps({"n": report.n, "clean": report.results["clean"]["correct"]}))
dist.destroy_process_group()
