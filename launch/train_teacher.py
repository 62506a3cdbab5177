"""Shim of ``derd-scale teacher``, for launchers that need a script path (``accelerate launch``, ``torchrun``, SLURM).

    accelerate launch launch/train_teacher.py --config configs/teachers/fmnist_pgd.yaml --out teachers/fmnist_pgd
    python launch/train_teacher.py --help          # the same options as derd-scale teacher --help

The command lives in derd_scale/commands/teacher.py; this file only makes it runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout without pip install

from derd_scale.commands.teacher import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
