"""Robustness evaluation of a trained model: the paper's six white-box columns and more.

    python launch/evaluate.py --model runs/cifar10_local --data-source parquet --data-path ../shared/data \
        --protocol cifar --attacks clean,fgsm,pgd_s,pgd_t,cw,aa --n-examples 1000
    python launch/evaluate.py --model ../shared/data/weights/abcrown_robust_cifar10/resnet4b.pth --arch resnet4b \
        --data-name cifar10 --data-source parquet --data-path ../shared/data --eps 0.00784 --n-examples 1000
    # two processes (each a shard of the batches; results gathered once):
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no launch/evaluate.py ...

``--model`` is a run folder (its ``student/`` export and ``config.yaml`` give the data
and protocol defaults), an export folder (``config.json`` + ``model.safetensors``), or a
checkpoint file with ``--arch``. Writes report.json, report.md and per_example.jsonl to
``--out`` and prints the table. Default ``--out``: ``<run>/eval/<protocol>-<UTC time>/`` for a
run folder — never ``<run>/eval/`` itself, whose report.json is the one ``push_to_hub.py``
publishes — else ``eval-<model name>/``. A folder that already holds a report.json is
refused unless ``--overwrite`` is given (``--out RUN/eval --overwrite`` replaces the
published report on purpose).

``aa`` is the standard AutoAttack (APGD-CE/APGD-T/FAB-T at 100 iterations, Square at 5000
queries); ``aa_fast`` is torchattacks' 10-iteration default, reported as ``aa_fast``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# CLI spelling of each eval.* key, so that a validation error names the flag the user typed.
FLAGS = {"eval.eps": "--eps", "eval.alpha": "--alpha", "eval.steps": "--steps", "eval.restarts": "--restarts", "eval.batch_size": "--batch-size",
         "eval.n_examples": "--n-examples", "eval.square_queries": "--square-queries", "eval.cw_kappa": "--cw-kappa",
         "eval.masking_threshold": "--masking-threshold", "eval.attacks": "--attacks", "eval.protocol": "--protocol"}


def _cli_message(err: Exception) -> str:
    """``eval.eps: …`` → ``--eps (eval.eps): …``; other messages unchanged (one line)."""
    text = str(err)
    key = text.split(":", 1)[0]
    return f"{FLAGS[key]} ({key}):{text.split(':', 1)[1]}" if key in FLAGS else text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_parser() -> argparse.ArgumentParser:
    from derd_scale.config import KNOWN_ATTACKS
    from derd_scale.evaluation import PRESETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run folder, export folder, or checkpoint file (with --arch)")
    p.add_argument("--arch", default=None, help="architecture for a checkpoint file (e.g. resnet4b, vit_tiny_patch16_224)")
    p.add_argument("--data-name", default=None, help="dataset (cifar10, fashion_mnist, imagenet100, ... or a Hub id); default: the run's")
    p.add_argument("--data-source", choices=["hub", "parquet", "imagefolder"], default=None, help="default: the run's, else hub")
    p.add_argument("--data-path", default=None, help="local root for parquet/imagefolder")
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's eval_split, else test)")
    p.add_argument("--protocol", default=None, help=f"budget preset: {', '.join(PRESETS)}, custom (default: the run's, else cifar)")
    p.add_argument("--attacks", default="clean,fgsm,pgd_s,pgd_t,cw,aa", help=f"comma list of {', '.join(KNOWN_ATTACKS)}")
    p.add_argument("--eps", type=float, default=None, help="override ε (pixel units in [0, 1])")
    p.add_argument("--alpha", type=float, default=None, help="override the step size")
    p.add_argument("--steps", type=int, default=None, help="override the number of PGD/CW steps (e.g. 20, 100)")
    p.add_argument("--restarts", type=int, default=None, help="random restarts for PGD_S and CW (default: the run's, else 1)")
    p.add_argument("--cw-kappa", type=float, default=None, help="CW margin confidence κ (default: the run's, else 0)")
    p.add_argument("--square-queries", type=int, default=None, help="queries of the stand-alone `square` attack (default: the run's, else 5000)")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--n-examples", type=int, default=None, help="first N examples of the split (default: all)")
    p.add_argument("--surrogate", default=None, help="transfer attacks: surrogate architecture or local-dir:FOLDER")
    p.add_argument("--surrogate-checkpoint", default=None, help="weights for --surrogate")
    p.add_argument("--no-masking-check", action="store_true", help="skip the extra PGD_S run with twice the steps")
    p.add_argument("--masking-threshold", type=float, default=0.10, help="warn when PGD_S − AA exceeds this fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder for report.json / report.md / per_example.jsonl "
                   "(default: <run>/eval/<protocol>-<UTC time>/ for a run folder, else eval-<model name>/)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing report.json in the output folder")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from derd_scale.config import KNOWN_ATTACKS, ConfigError, DataConfig, DistributedConfig, EvalConfig, ModelConfig, load_config
    from derd_scale.data import dataset_info, load_dataset_split
    from derd_scale.distributed import build_accelerator, world
    from derd_scale.evaluation import EvaluationInputError, evaluate, protocol_from_config
    from derd_scale.teachers import model_from_config

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    bad = [a for a in attacks if a not in KNOWN_ATTACKS]
    if bad:
        print(f"--attacks: unknown {bad}; allowed: {', '.join(KNOWN_ATTACKS)}", file=sys.stderr)
        return 2
    target = Path(args.model)
    run_cfg = None
    if (target / "config.yaml").exists() and (target / "student").exists():
        run_cfg = load_config(target / "config.yaml")
        model_dir, default_out = target / "student", target / "eval"  # + /<protocol>-<time>: never the published eval/report.json
    elif (target / "config.json").exists():
        model_dir, default_out = target, Path(f"eval-{target.name}")
    elif target.is_file():
        if not args.arch:
            print("--arch is required with a checkpoint file", file=sys.stderr)
            return 2
        model_dir, default_out = None, Path(f"eval-{target.stem}")
    else:
        print(f"--model: {target} is not a run folder, an export folder or a file", file=sys.stderr)
        return 2

    data = run_cfg.data if run_cfg else DataConfig()
    data = DataConfig(
        name=args.data_name or data.name, source=args.data_source or data.source, path=args.data_path or data.path,
        eval_split=args.split or data.eval_split, resize=data.resize, crop=data.crop,
    )
    ev = run_cfg.eval if run_cfg else EvalConfig()

    def pick(flag, current):
        return flag if flag is not None else current

    try:
        ev = EvalConfig(protocol=args.protocol or ev.protocol, attacks=attacks, eps=pick(args.eps, ev.eps), alpha=pick(args.alpha, ev.alpha), steps=pick(args.steps, ev.steps),
                        batch_size=pick(args.batch_size, ev.batch_size), n_examples=args.n_examples, restarts=pick(args.restarts, ev.restarts),
                        cw_kappa=pick(args.cw_kappa, ev.cw_kappa), square_queries=pick(args.square_queries, ev.square_queries), masking_threshold=args.masking_threshold)
        protocol = protocol_from_config(ev, data.name)
        info = dataset_info(data.name)
    except (ValueError, ConfigError) as err:
        print(_cli_message(err), file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
    elif run_cfg is not None:
        out = default_out / f"{protocol.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    else:
        out = default_out
    if (out / "report.json").exists() and not args.overwrite:
        print(f"--out: {out / 'report.json'} exists; pass --overwrite to replace it, or choose another --out", file=sys.stderr)
        return 2

    accelerator = build_accelerator(run_cfg.distributed if run_cfg else DistributedConfig())
    if model_dir is not None:
        model = model_from_config(ModelConfig(arch=f"local-dir:{model_dir}"), info)
    else:
        model = model_from_config(ModelConfig(arch=args.arch, checkpoint=str(target)), info)
    model.to(accelerator.device)
    surrogate = None
    if args.surrogate:
        surrogate = model_from_config(ModelConfig(arch=args.surrogate, checkpoint=args.surrogate_checkpoint), info).to(accelerator.device)
    dataset, _ = load_dataset_split(data, data.eval_split)
    if args.n_examples is not None and args.n_examples > len(dataset):
        print(f"--n-examples (eval.n_examples): {args.n_examples} is more than the {len(dataset)} examples of {data.name}/{data.eval_split}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    try:
        report = evaluate(model, dataset, attacks, protocol, n_examples=args.n_examples, accelerator=accelerator, seed=args.seed,
                          surrogate=surrogate, masking_check=not args.no_masking_check, masking_threshold=args.masking_threshold)
    except EvaluationInputError as err:
        print(str(err), file=sys.stderr)
        return 2
    rank, _ = world()
    if rank == 0:
        if (out / "report.json").exists() and not args.overwrite:  # appeared while we evaluated
            moved = out.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
            print(f"{out / 'report.json'} appeared during the evaluation; writing to {moved} instead", file=sys.stderr)
            out = moved
        report.save(out)
        print(report.markdown(f"{target.name} on {data.name}/{data.eval_split}"))
        print(f"wrote {out}/report.json")
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
