"""Shim of ``derd-scale quickstart``, for launchers that need a script path (``accelerate launch``, ``torchrun``, SLURM).

    python launch/quickstart.py --data-path ../shared/data   (what make quickstart runs)
    python launch/quickstart.py --help          # the same options as derd-scale quickstart --help

The command lives in derd_scale/commands/quickstart.py; this file only makes it runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout without pip install

from derd_scale.commands.quickstart import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
