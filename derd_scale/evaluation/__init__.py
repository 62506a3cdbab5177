"""Robustness evaluation: attacks (attacks.py), batched/sharded runs (runner.py), reports (report.py)."""

from .report import ROBUST_ACCURACY, EvalReport, masking_warnings
from .runner import PRESETS, EvaluationInputError, Protocol, evaluate, protocol_from_config

__all__ = [
    "EvalReport",
    "EvaluationInputError",
    "PRESETS",
    "ROBUST_ACCURACY",
    "Protocol",
    "evaluate",
    "masking_warnings",
    "protocol_from_config",
]
