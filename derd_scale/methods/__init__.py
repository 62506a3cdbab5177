"""The registered training methods: DERD's baselines and data-driven bounds (docs/baselines.md).

``method: <name>`` in the run config selects one; ``derd`` (the default) is DERD itself, whose
steps live in ``trainer.stage1_step`` / ``stage2_step`` and its math in ``derd_scale/derd``. Each
other method is a module of pure functions here, with its equations and sources in the docstring,
ending in a ``METHOD`` entry (``base.Method``): its generator objective (data-free methods), its
student objective and its schedule. ``trainer.method_step`` runs any of them through the same
gradient adapters and checkpoints as DERD.
"""

from __future__ import annotations

from . import ard, cmi, dafl, deepinversion, dfad, dfard, dfhl_rs, ferd, iad, mtard, natural, rslad, sat, trades, zskt
from .base import Batch, Context, Method

METHODS: dict[str, Method] = {
    m.METHOD.name: m.METHOD
    for m in (dafl, dfad, zskt, deepinversion, cmi, dfard, dfhl_rs, ferd, natural, sat, trades, ard, rslad, iad, mtard)
}

__all__ = ["METHODS", "Batch", "Context", "Method", "get_method", "reads_real_data"]


def get_method(name: str) -> Method:
    """The registry entry of ``name`` (a method other than derd)."""
    if name not in METHODS:
        raise ValueError(f"method: {name!r} is not a registered baseline; allowed: {', '.join(METHODS)}")
    return METHODS[name]


def reads_real_data(name: str) -> bool:
    """Whether method ``name`` (``derd`` included) trains on the real training split: a data-driven
    bound, which has no generator (``derd`` and the data-free baselines generate their batches)."""
    return name != "derd" and get_method(name).data == "real"
