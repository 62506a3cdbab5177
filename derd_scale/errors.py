"""The expected ways a training run stops: each is one line for the user, no traceback.

``launch/train.py`` prints ``<kind>: <message>`` and exits with ``exit_code`` (the traceback
only under ``--debug``); in-process callers (tests, benchmarks) catch the classes.
``config.ConfigError`` (a bad key or value) is the fifth kind and lives with the config.
"""

from __future__ import annotations


class RunError(RuntimeError):
    """A run refused to start or stopped on purpose; the message names what is wrong."""

    kind = "error"
    exit_code = 2


class InputError(RunError):
    """Bad input found before the first step: data, teacher files, teacher/data mismatch."""

    kind = "input error"


class RunExistsError(RunError):
    """The run folder cannot be used as asked (finished, not a run folder, outside output.root)."""

    kind = "run folder"


class ResumeError(RunError):
    """Resuming is refused: no readable checkpoint, or the config changed since the run started."""

    kind = "resume"


class DivergenceError(RunError):
    """NaN/Inf in a loss, gradient norm or parameter; the message is the whole line
    (``divergence: stage2 step 37: l_2 is nan``)."""

    kind = ""
    exit_code = 3


def one_line(err: BaseException, limit: int = 600) -> str:
    """An exception's message on one line (whitespace collapsed), bounded."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(err: BaseException) -> str:
    """What launch/train.py prints for an expected error."""
    kind = getattr(err, "kind", "config error")
    return f"{kind}: {one_line(err)}" if kind else one_line(err)
