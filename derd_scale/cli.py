"""The ``derd-scale`` command: one console script with a subcommand per job.

    derd-scale --help                        # the subcommands
    derd-scale train --config configs/cifar10_local.yaml --set stage2.steps=200
    derd-scale evaluate --model runs/cifar10_local --set eval.n_examples=1000
    derd-scale teacher --config configs/teachers/fmnist_pgd.yaml --out teachers/fmnist_pgd
    derd-scale push --model runs/cifar10_local --repo-id me/derd-resnet20-cifar10 --dry-run /tmp/upload
    derd-scale quickstart --data-path ../shared/data
    python -m derd_scale train ...           # the same without the console script

``derd-train`` and ``derd-evaluate`` stay as aliases of ``derd-scale train`` / ``evaluate``.
Each subcommand lives in ``derd_scale/commands/`` (``main(argv, prog)``), so the CLI works
from a plain ``pip install .``; ``launch/*.py`` are shims over the same functions for
``accelerate launch`` / ``torchrun``, which need a script path (or ``accelerate launch -m
derd_scale.commands.train``).
"""

from __future__ import annotations

import importlib
import sys

# name -> (module under derd_scale.commands, one-line summary shown by `derd-scale --help`)
COMMANDS = {
    "train": (
        "train",
        "DERD distillation: Stage I then Stage II, data-free (a run folder with metrics and the student)",
    ),
    "evaluate": ("evaluate", "robust accuracy of a run, an export folder or a checkpoint (clean, FGSM, PGD, CW, AA)"),
    "teacher": ("teacher", "train a natural or adversarially robust teacher (CE, PGD-AT, TRADES) on real data"),
    "push": ("push", "push a finished run's student to the Hugging Face Hub with a model card"),
    "quickstart": ("quickstart", "the whole pipeline at CPU scale on Fashion-MNIST (~15 min on 2 cores)"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: derd-scale {" + ",".join(COMMANDS) + "} [options]",
        "",
        "Data-free robustness distillation (DERD). Subcommands (each takes --help):",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its subcommand's ``main``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from derd_scale import __version__

        print(f"derd-scale {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"derd-scale: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"derd_scale.commands.{COMMANDS[name][0]}")
    return module.main(argv[1:], prog=f"derd-scale {name}")


def train_main() -> int:
    """``derd-train``: the alias of ``derd-scale train``."""
    from derd_scale.commands.train import main as train

    return train(prog="derd-train")


def evaluate_main() -> int:
    """``derd-evaluate``: the alias of ``derd-scale evaluate``."""
    from derd_scale.commands.evaluate import main as evaluate

    return evaluate(prog="derd-evaluate")
