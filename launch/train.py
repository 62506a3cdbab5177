"""Shim of ``derd-scale train``, for launchers that need a script path (``accelerate launch``, ``torchrun``, SLURM).

    accelerate launch --config_file configs/accelerate/ddp.yaml launch/train.py --config configs/imnet100_vit.yaml
    python launch/train.py --help          # the same options as derd-scale train --help

The command lives in derd_scale/commands/train.py; this file only makes it runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout without pip install

from derd_scale.commands.train import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
