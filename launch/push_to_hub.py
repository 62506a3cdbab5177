"""Shim of ``derd-scale push``, for launchers that need a script path (``accelerate launch``, ``torchrun``, SLURM).

    python launch/push_to_hub.py --model runs/cifar10_local --repo-id me/derd-resnet20-cifar10 --dry-run /tmp/upload
    python launch/push_to_hub.py --help          # the same options as derd-scale push --help

The command lives in derd_scale/commands/push.py; this file only makes it runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout without pip install

from derd_scale.commands.push import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
