"""Worker for tests/test_distributed.py: docs/platform.md's silent DDP trap, on purpose.

One forward, ``backward(l1, retain_graph=True)`` then ``backward(l2)``: the second backward
is never all-reduced, so the replicas drift with no error. ``check_ranks_in_sync`` must
catch it. Prints TRAP_CAUGHT on rank 0 when it does.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from derd_scale.distributed import world  # noqa: E402
from derd_scale.trainer import check_ranks_in_sync  # noqa: E402

accelerator = Accelerator(cpu=True)
rank, size = world()
assert size == 2, f"expected 2 synchronised processes, got {size}"
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
model, opt = accelerator.prepare(model, opt)
x = torch.randn(8, 4) + rank  # different data per rank
out = model(x)
l1, l2 = out[:, 0].pow(2).mean(), out[:, 1].pow(2).mean()
l1.backward(retain_graph=True)
l2.backward()  # not reduced: rank-local gradient for output 1
opt.step()
try:
    check_ranks_in_sync(model)
    caught = False
except RuntimeError as err:
    caught = True
    if rank == 0:
        print("TRAP_CAUGHT", str(err)[:80], flush=True)
if not caught:
    print("TRAP_MISSED", flush=True)
# Tear the gloo group down on both ranks, then leave without running the interpreter's
# destructors: gloo's teardown at exit aborted rank 0 (SIGABRT) in about one run in five on a
# loaded 2-core machine (CI, 2026-12-03) even after a barrier and end_training. The verdict is
# printed and flushed above; os._exit only skips the C++ destructors.
accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0 if caught else 1)
