"""Train a natural or adversarially robust teacher (CE, Madry PGD-AT, TRADES).

    # Fashion-MNIST, natural and PGD-AT (ε 0.1) small CNNs from local parquet files
    python launch/train_teacher.py --data-name fashion_mnist --data-source parquet --data-path ../shared/data \
        --arch small_cnn --model-kwargs '{width: 16}' --method ce  --epochs 2 --lr 0.05 --out teachers/fmnist_nat
    python launch/train_teacher.py --data-name fashion_mnist --data-source parquet --data-path ../shared/data \
        --arch small_cnn --model-kwargs '{width: 16}' --method pgd --eps 0.1 --alpha 0.025 --attack-steps 7 --out teachers/fmnist_pgd
    # fine-tune an ImageNet ViT-S on ImageNet-100 (the paper: lr 1e-4)
    accelerate launch launch/train_teacher.py --data-name imagenet100 --arch vit_small_patch16_224 --pretrained \
        --optimizer adamw --lr 1e-4 --weight-decay 0.05 --epochs 10 --out teachers/vits_in100

Re-running the same command resumes from ``OUT/checkpoints/last.pt``. The output folder
is an export folder: use it as ``teachers.natural.arch=local-dir:OUT``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-name", default="cifar10", help="dataset name or Hub id")
    p.add_argument("--data-source", default="hub", choices=["hub", "parquet", "imagefolder"], help="where the images come from: the Hub (datasets), local parquet files, or an image folder")
    p.add_argument("--data-path", default=None, help="local root for parquet/imagefolder")
    p.add_argument("--arch", default="small_cnn", help="derd_scale or timm architecture")
    p.add_argument("--model-kwargs", default="{}", help="YAML mapping of architecture arguments, e.g. '{width: 16}'")
    p.add_argument("--pretrained", action="store_true", help="start from timm's hub weights (needs network)")
    p.add_argument("--init-checkpoint", default=None, help="start from local weights (.safetensors, or .pth/.th loaded weights-only)")
    p.add_argument("--class-subset", default=None, help="keep a pretrained 1000-class head and train only these classes' logits "
                   "(imagenet100 or a file of wnids) instead of a fresh head; the export is a plain N-class model")
    p.add_argument("--method", default="ce", choices=["ce", "pgd", "trades"], help="natural CE, Madry PGD-AT, or TRADES")
    p.add_argument("--eps", type=float, default=8 / 255, help="L∞ radius for pgd/trades (and the final PGD evaluation)")
    p.add_argument("--alpha", type=float, default=2 / 255, help="attack step size")
    p.add_argument("--attack-steps", type=int, default=10, help="attack iterations while training")
    p.add_argument("--beta", type=float, default=6.0, help="TRADES β")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=128, help="global batch")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"], help="SGD (the paper, momentum 0.9) or Adam/AdamW (ViT fine-tuning)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (1e-4 for fine-tuning a pretrained ViT)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (the paper: 5e-4)")
    p.add_argument("--schedule", default="cosine", choices=["constant", "cosine", "step"], help="per-step lr schedule; step = ×0.1 at 40%% and 80%% of training (the paper's 800/1600 of 2000 epochs)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear lr warm-up steps")
    p.add_argument("--augment", default="auto", choices=["auto", "none", "flip_crop", "resized_crop"],
                   help="auto = flip_crop (flip + 4-px padded crop) for 32×32 RGB, resized_crop (random-resized crop + flip) for images > 64 px, none otherwise")
    p.add_argument("--workers", type=int, default=4, help="DataLoader processes decoding large training images (> 64 px); small datasets are held in memory")
    p.add_argument("--max-train-examples", type=int, default=None, help="train on the first N examples only")
    p.add_argument("--eval-examples", type=int, default=1000, help="first N eval-split images for the final clean/PGD numbers; 0 = the whole split")
    p.add_argument("--eval-steps", type=int, default=10, help="PGD steps of the final evaluation")
    p.add_argument("--eval-alpha", type=float, default=None, help="step size of the final PGD evaluation (default: --alpha)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, shuffling, augmentation and attack starts")
    p.add_argument("--out", required=True, help="output (export) folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import json

    import yaml

    from derd_scale.config import DataConfig, ModelConfig, OptimizerConfig
    from derd_scale.teacher_training import TeacherTrainConfig, TeacherTrainError, train_teacher

    kwargs = yaml.safe_load(args.model_kwargs) or {}
    if not isinstance(kwargs, dict):
        print("--model-kwargs: expected a mapping, e.g. '{width: 16}'", file=sys.stderr)
        return 2
    empty = [k for k, v in kwargs.items() if v is None]
    if empty:  # '{width:16}' is YAML for {"width:16": None}
        print(f"--model-kwargs: {empty[0]!r} has no value; YAML needs a space after the colon, e.g. '{{width: 16}}'", file=sys.stderr)
        return 2
    cfg = TeacherTrainConfig(
        data=DataConfig(name=args.data_name, source=args.data_source, path=args.data_path),
        model=ModelConfig(arch=args.arch, kwargs=kwargs, pretrained=args.pretrained, checkpoint=args.init_checkpoint, class_subset=args.class_subset),
        method=args.method, eps=args.eps, alpha=args.alpha, attack_steps=args.attack_steps, beta=args.beta,
        epochs=args.epochs, batch_size=args.batch_size,
        optim=OptimizerConfig(name=args.optimizer, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule, warmup_steps=args.warmup_steps),
        augment=args.augment, max_train_examples=args.max_train_examples, eval_examples=args.eval_examples or None, eval_steps=args.eval_steps, eval_alpha=args.eval_alpha, workers=args.workers,
        seed=args.seed, out=args.out, progress=not args.no_progress,
    )
    try:
        cfg.validate()
        metrics = train_teacher(cfg)
    except (TeacherTrainError, FileNotFoundError) as err:  # settings, data and resume problems: one line
        print(str(err), file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
