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
``--out`` (default: ``<run>/eval`` or ``eval-<model name>``) and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    p.add_argument("--restarts", type=int, default=1, help="random restarts for PGD_S and CW")
    p.add_argument("--cw-kappa", type=float, default=0.0, help="CW margin confidence κ")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--n-examples", type=int, default=None, help="first N examples of the split (default: all)")
    p.add_argument("--surrogate", default=None, help="transfer attacks: surrogate architecture or local-dir:FOLDER")
    p.add_argument("--surrogate-checkpoint", default=None, help="weights for --surrogate")
    p.add_argument("--no-masking-check", action="store_true", help="skip the extra PGD_S run with twice the steps")
    p.add_argument("--masking-threshold", type=float, default=0.10, help="warn when PGD_S − AA exceeds this fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder for report.json / report.md / per_example.jsonl")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from derd_scale.config import KNOWN_ATTACKS, ConfigError, DataConfig, DistributedConfig, EvalConfig, ModelConfig, load_config
    from derd_scale.data import dataset_info, load_dataset_split
    from derd_scale.distributed import build_accelerator, world
    from derd_scale.evaluation import evaluate, protocol_from_config
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
        model_dir, default_out = target / "student", target / "eval"
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
    try:
        ev = EvalConfig(protocol=args.protocol or ev.protocol, eps=args.eps if args.eps is not None else ev.eps, alpha=args.alpha if args.alpha is not None else ev.alpha,
                        steps=args.steps if args.steps is not None else ev.steps, batch_size=args.batch_size or ev.batch_size, restarts=args.restarts, cw_kappa=args.cw_kappa)
        protocol = protocol_from_config(ev, data.name)
        info = dataset_info(data.name)
    except (ValueError, ConfigError) as err:
        print(str(err), file=sys.stderr)
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
    torch.manual_seed(args.seed)
    report = evaluate(model, dataset, attacks, protocol, n_examples=args.n_examples, accelerator=accelerator, seed=args.seed,
                      surrogate=surrogate, masking_check=not args.no_masking_check, masking_threshold=args.masking_threshold)
    rank, _ = world()
    if rank == 0:
        out = Path(args.out) if args.out else default_out
        report.save(out)
        print(report.markdown(f"{target.name} on {data.name}/{data.eval_split}"))
        print(f"wrote {out}/report.json")
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
