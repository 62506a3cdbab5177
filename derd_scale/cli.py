"""Console entry points (``derd-train``, ``derd-evaluate``) that forward to ``launch/``."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

_LAUNCH = Path(__file__).resolve().parent.parent / "launch"


def _run(script: str) -> None:
    sys.argv[0] = str(_LAUNCH / script)
    runpy.run_path(str(_LAUNCH / script), run_name="__main__")


def train_main() -> None:
    _run("train.py")


def evaluate_main() -> None:
    _run("evaluate.py")
