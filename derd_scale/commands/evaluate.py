"""Robustness evaluation of a trained model: the paper's six white-box columns and more.

    derd-scale evaluate --model runs/cifar10_local --set eval.attacks=[clean,fgsm,pgd_s,pgd_t,cw,aa] --set eval.n_examples=1000
    derd-scale evaluate --model ../shared/data/weights/abcrown_robust_cifar10/resnet4b.pth --set arch=resnet4b \\
        --set data.name=cifar10 --set data.source=parquet --set data.path=../shared/data --set eval.eps=0.00784 --set eval.n_examples=1000
    derd-scale evaluate --config my_eval.yaml --set eval.steps=20      # YAML holding any of the keys below
    derd-scale evaluate --print-schema                                 # every option, its type, default and meaning
    # two processes (each a shard of the batches; results gathered once):
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no launch/evaluate.py ...

Settings are ``derd_scale.config.EvaluateConfig``, loaded like ``derd-scale train``'s run config:
a YAML file (``--config``), then dotted ``--set key=value`` overrides; ``--model X``, ``--out DIR``
and ``--overwrite`` are ``--set model=X``, ``--set out=DIR`` and ``--set overwrite=true``. A bad
key or value stops with one line naming it (``config error: eval.eps: must be in (0, 1] …``),
exit code 2, before any model is loaded.

``model`` is a run folder (its ``student/`` export; its ``config.yaml`` gives the defaults of
``data.*`` and the attack budget ``eval.protocol/eps/alpha/steps/batch_size/restarts/cw_kappa/
square_queries``), an export folder (``config.json`` + ``model.safetensors``), or a checkpoint
file with ``arch``. Writes report.json, report.md, per_example.jsonl and the resolved
eval_config.yaml to ``out`` and prints the table. Default ``out``: ``<run>/eval/<protocol>-<UTC
time>/`` for a run folder — never ``<run>/eval/`` itself, whose report.json is the one
``derd-scale push`` publishes — else ``eval-<model name>/``. A folder that already holds a
report.json is refused unless ``overwrite`` is set (``--out RUN/eval --overwrite`` replaces the
published report on purpose).

``aa`` is the standard AutoAttack (APGD-CE/APGD-T/FAB-T at 100 iterations, Square at 5000
queries); ``aa_fast`` is torchattacks' 10-iteration default, reported as ``aa_fast``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

from derd_scale.commands import config_parser
from derd_scale.config import ConfigError, EvaluateConfig, load_evaluate_config, save_config, schema_lines, to_dict


def build_parser(prog: str = "derd-scale evaluate") -> argparse.ArgumentParser:
    p = config_parser(
        prog,
        __doc__ + "\nOptions (use with --set KEY=VALUE):\n" + "\n".join(schema_lines(EvaluateConfig)),
        "evaluation YAML with any of the options below",
        "eval.eps=0.03, eval.attacks=[clean,pgd_s]",
    )
    p.add_argument(
        "--model",
        default=None,
        help="run folder, export folder, or checkpoint file (with arch): the same as --set model=MODEL",
    )
    p.add_argument("--out", default=None, help="output folder: the same as --set out=OUT")
    p.add_argument("--overwrite", action="store_true", default=None, help="the same as --set overwrite=true")
    return p


def _aliases(args: argparse.Namespace) -> dict:
    return {
        key: value
        for key, value in (("model", args.model), ("out", args.out), ("overwrite", args.overwrite))
        if value is not None
    }


def main(argv=None, prog: str = "derd-scale evaluate") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.print_schema:
        print("\n".join(schema_lines(EvaluateConfig)))
        return 0
    try:
        cfg, run_cfg = load_evaluate_config(args.config, args.overrides, _aliases(args))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2

    target = Path(cfg.model)
    if run_cfg is not None:
        model_dir, default_out = (
            target / "student",
            target / "eval",
        )  # + /<protocol>-<time>: never the published eval/report.json
    elif (target / "config.json").exists():
        model_dir, default_out = target, Path(f"eval-{target.name}")
    elif target.is_file():
        if not cfg.arch:
            print(f"config error: arch: required with a checkpoint file (model={target})", file=sys.stderr)
            return 2
        model_dir, default_out = None, Path(f"eval-{target.stem}")
    else:
        print(f"config error: model: {target} is not a run folder, an export folder or a file", file=sys.stderr)
        return 2

    import torch

    from derd_scale.config import DistributedConfig, ModelConfig
    from derd_scale.data import dataset_info, load_dataset_split
    from derd_scale.distributed import build_accelerator, world
    from derd_scale.evaluation import EvaluationInputError, evaluate, protocol_from_config
    from derd_scale.teachers import model_from_config

    data, ev = cfg.data, cfg.eval
    try:
        protocol = protocol_from_config(ev, data.name)
        info = dataset_info(data)
    except (ValueError, ConfigError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a Hub dataset that cannot be read (offline, missing)
        print(f"input error: {err}", file=sys.stderr)
        return 2
    if cfg.out:
        out = Path(cfg.out)
    elif run_cfg is not None:
        out = default_out / f"{protocol.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    else:
        out = default_out
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(dataclasses.replace(cfg, out=str(out))), sort_keys=False))
        return 0
    if (out / "report.json").exists() and not cfg.overwrite:
        print(
            f"config error: out: {out / 'report.json'} exists; pass --overwrite (overwrite=true) to replace it, or choose another out",
            file=sys.stderr,
        )
        return 2

    accelerator = build_accelerator(run_cfg.distributed if run_cfg else DistributedConfig())
    if model_dir is not None:
        model = model_from_config(ModelConfig(arch=f"local-dir:{model_dir}"), info)
    else:
        model = model_from_config(ModelConfig(arch=cfg.arch, checkpoint=str(target)), info)
    model.to(accelerator.device)
    surrogate = None
    if ev.surrogate:
        surrogate = model_from_config(ModelConfig(arch=ev.surrogate, checkpoint=ev.surrogate_checkpoint), info).to(
            accelerator.device
        )
    dataset, _ = load_dataset_split(data, data.eval_split)
    if ev.n_examples is not None and ev.n_examples > len(dataset):
        print(
            f"config error: eval.n_examples: {ev.n_examples} is more than the {len(dataset)} examples of {data.name}/{data.eval_split}",
            file=sys.stderr,
        )
        return 2
    torch.manual_seed(cfg.seed)
    try:
        partial = out / "partial"
        report = evaluate(
            model,
            dataset,
            ev.attacks,
            protocol,
            n_examples=ev.n_examples,
            accelerator=accelerator,
            seed=cfg.seed,
            surrogate=surrogate,
            masking_check=ev.masking_check,
            masking_threshold=ev.masking_threshold,
            optimized=ev.optimized_copy,
            resume_dir=partial,  # a killed evaluation rerun with the same out resumes at its next batch
        )
    except EvaluationInputError as err:
        print(str(err), file=sys.stderr)
        return 2
    rank, _ = world()
    if rank == 0:
        if (out / "report.json").exists() and not cfg.overwrite:  # appeared while we evaluated
            moved = out.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
            print(f"{out / 'report.json'} appeared during the evaluation; writing to {moved} instead", file=sys.stderr)
            out = moved
        report.save(out)
        save_config(
            dataclasses.replace(cfg, out=str(out)), out / "eval_config.yaml"
        )  # the resolved settings, beside the report
        print(report.markdown(f"{target.name} on {data.name}/{data.eval_split}"))
        print(f"wrote {out}/report.json")
    accelerator.wait_for_everyone()
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
    return 0


if __name__ == "__main__":  # python -m derd_scale.commands.evaluate: what accelerate launch -m runs
    sys.exit(main())
