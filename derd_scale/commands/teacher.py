"""Train a natural or adversarially robust teacher (CE, Madry PGD-AT, TRADES).

    # Fashion-MNIST, natural and PGD-AT (ε 0.1) small CNNs from local parquet files (the committed teachers' recipe)
    derd-scale teacher --config configs/teachers/fmnist_natural.yaml --out teachers/fmnist_nat
    derd-scale teacher --config configs/teachers/fmnist_pgd.yaml --set attack_steps=3 --out teachers/fmnist_pgd
    # no YAML: every setting a dotted override
    derd-scale teacher --set data.name=cifar10 --set model.arch=resnet18_cifar --set method=trades \\
        --set eps=0.0313725 --set alpha=0.0078431 --set epochs=100 --out teachers/rn18_trades
    # fine-tune an ImageNet ViT-S on ImageNet-100 (the paper: lr 1e-4)
    accelerate launch launch/train_teacher.py --set data.name=imagenet100 --set model.arch=vit_small_patch16_224 \\
        --set model.pretrained=true --set optim.name=adamw --set optim.lr=1e-4 --set optim.weight_decay=0.05 \\
        --set epochs=10 --out teachers/vits_in100
    # every option, its type, default and meaning
    derd-scale teacher --print-schema

Settings are ``derd_scale.teacher_training.TeacherTrainConfig``, loaded like ``derd-scale train``'s
run config: a YAML file (``--config``), then dotted ``--set key=value`` overrides; ``--out DIR``
is ``--set out=DIR``. A bad key or value stops with one line naming it
(``config error: method: invalid value 'madry'; allowed: ce, pgd, trades, fgsm_rs``), exit code 2.

Re-running the same command resumes from ``OUT/checkpoints/last.pt``. The output folder
is an export folder: use it as ``teachers.natural.arch=local-dir:OUT``. The resolved
settings are saved as ``OUT/teacher_config.yaml`` (``--config`` it to re-run).
"""

from __future__ import annotations

import argparse
import sys

from derd_scale.commands import config_parser
from derd_scale.config import ConfigError, apply_overrides, config_from_dict, read_config_file, schema_lines, to_dict
from derd_scale.teacher_training import TeacherTrainConfig


def build_parser(prog: str = "derd-scale teacher") -> argparse.ArgumentParser:
    p = config_parser(
        prog,
        __doc__ + "\nOptions (use with --set KEY=VALUE):\n" + "\n".join(schema_lines(TeacherTrainConfig)),
        "teacher YAML (e.g. configs/teachers/fmnist_pgd.yaml)",
        "method=pgd, model.kwargs.width=16",
    )
    p.add_argument("--out", default=None, help="output (export) folder: the same as --set out=OUT")
    return p


def load(args: argparse.Namespace) -> TeacherTrainConfig:
    """YAML, then --set, then --out; validated (``TeacherTrainConfig.validate``)."""
    data = apply_overrides(read_config_file(args.config), args.overrides, TeacherTrainConfig)
    if args.out is not None:
        data["out"] = args.out
    return config_from_dict(data, cls=TeacherTrainConfig)


def main(argv=None, prog: str = "derd-scale teacher") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.print_schema:
        print("\n".join(schema_lines(TeacherTrainConfig)))
        return 0
    try:
        cfg = load(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    import json

    from derd_scale.errors import RunError, describe
    from derd_scale.teacher_training import train_teacher

    try:
        metrics = train_teacher(cfg)
    except ConfigError as err:  # settings that do not fit the data or an existing checkpoint: one line
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except RunError as err:  # input the run cannot use (a streamed split to train on, ...): one line
        print(describe(err), file=sys.stderr)
        return err.exit_code
    except FileNotFoundError as err:  # data problems: one line
        print(str(err), file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":  # python -m derd_scale.commands.teacher: what accelerate launch -m runs
    sys.exit(main())
