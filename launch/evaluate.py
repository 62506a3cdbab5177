"""Shim of ``derd-scale evaluate``, for launchers that need a script path (``accelerate launch``, ``torchrun``, SLURM).

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 launch/evaluate.py --model runs/x
    python launch/evaluate.py --help          # the same options as derd-scale evaluate --help

The command lives in derd_scale/commands/evaluate.py; this file only makes it runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout without pip install

from derd_scale.commands.evaluate import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
