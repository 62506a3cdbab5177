"""DERD distillation: Stage I (generator warm-up) then Stage II (robust distillation).

    # one process (derd-train is the same command)
    derd-scale train --config configs/cifar10_local.yaml --set stage2.steps=200
    # several processes / GPUs / nodes: the accelerate config picks the backend (docs/distributed.md)
    accelerate launch --config_file configs/accelerate/ddp.yaml launch/train.py --config configs/imnet100_vit.yaml
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml launch/train.py --config configs/imnet100_vit.yaml
    torchrun --nproc_per_node 8 launch/train.py --config configs/imnet100_vit.yaml --set distributed.backend=fsdp
    # every option, its type and default
    derd-scale train --print-schema

Overrides are dotted keys (``--set stage2.sa.steps=5 --set stage2.aggregation.method=ga``);
bad keys or values stop the run with a one-line error naming the key. The resolved
config is written to ``<output.root>/<output.name>/config.yaml`` (``output.name`` defaults
to the config file's stem); re-running the same command resumes from the newest readable
checkpoint in that folder, and is refused if the config changed (docs/runs.md).

Expected failures print one line on stderr (``--debug``: the traceback) and exit with
2 — a bad config, flag, file, data or run folder, a refused resume, an evaluation input,
an OS error (disk full, permissions) — or 3 — a divergence
(``divergence: stage2 step 37: l_2 is nan``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from derd_scale.commands import config_parser
from derd_scale.config import ConfigError, load_config, schema_lines


def build_parser(prog: str = "derd-scale train") -> argparse.ArgumentParser:
    parser = config_parser(
        prog,
        "Data-free robustness distillation (DERD). Options (use with --set KEY=VALUE):\n" + "\n".join(schema_lines()),
        "run YAML (configs/*.yaml)",
        "stage2.sa.steps=5",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an expected error instead of its one line"
    )
    return parser


def main(argv: list[str] | None = None, prog: str = "derd-scale train") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.print_schema:
        print("\n".join(schema_lines()))
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        from derd_scale.config import to_dict

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    from derd_scale.distributed import shutdown
    from derd_scale.errors import RunError, describe, one_line
    from derd_scale.trainer import train

    stem = Path(args.config).stem if args.config else "run"
    from derd_scale.evaluation import EvaluationInputError

    try:
        run = train(cfg, stem)
    except (ConfigError, RunError, EvaluationInputError) as err:
        # Expected errors stop every rank together (the trainer agrees on them), so the
        # process group can still be left cleanly; anything else keeps its traceback.
        shutdown()
        if args.debug:
            raise
        print(
            describe(err) if not isinstance(err, EvaluationInputError) else f"evaluation error: {one_line(err)}",
            file=sys.stderr,
        )
        return getattr(err, "exit_code", 2)
    except OSError as err:  # the machine, not the code: disk full, permissions, a vanished file
        if args.debug:
            raise
        print(f"system error: {one_line(err)}", file=sys.stderr)
        return 2
    print(f"run finished: {run.path}")
    shutdown()  # leave the process group on every rank: no hang or abort at exit
    return 0


if __name__ == "__main__":  # python -m derd_scale.commands.train: what accelerate launch -m runs
    sys.exit(main())
