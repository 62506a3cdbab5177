"""Per-class clean accuracy of exported students (and teachers) on real test images, and how many
images each model files under each class — the table that shows a sink class.

    python bench/class_accuracy.py --data cifar10 --data-path ../shared/data --n 2000 \\
        docs/results/cifar10/runs/derd_recommended/student docs/results/cifar10/runs/rslad/student
    python bench/class_accuracy.py --data cifar10 --data-path ../shared/data \\
        --model "T_rob=resnet4b:../shared/data/weights/abcrown_robust_cifar10/resnet4b.pth" RUN/student

Each positional argument is an exported model folder (``local-dir:``, e.g. a run's ``student/``);
``--model NAME=ARCH[:CHECKPOINT]`` adds a teacher-style model (any ``teachers.*.arch``). Prints a
Markdown table: clean %, per-class accuracy %, and the count of predictions per class; ``--out``
also writes it as JSON. Why: a data-free robust student can keep a middling mean accuracy while it
files a quarter of the real images under one class (docs/results.md, the CIFAR-10 per-class
reading); the mean alone never shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def class_accuracy(model, x, y, num_classes: int, batch_size: int = 250) -> dict:
    """{"clean", "per_class": [acc_c], "n": [n_c], "predicted": [count of argmax = c]} on (x, y)."""
    import torch

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    n = torch.bincount(y, minlength=num_classes)
    hits = torch.bincount(y[pred == y], minlength=num_classes)
    return {
        "clean": (pred == y).float().mean().item(),
        "per_class": [h / c if c else None for h, c in zip(hits.tolist(), n.tolist())],
        "n": n.tolist(),
        "predicted": torch.bincount(pred, minlength=num_classes).tolist(),
    }


def first_test_images(data, n: int):
    """(x, y, info): the first ``n`` images of ``data``'s test split (a ``DataConfig``) as tensors."""
    import torch

    from derd_scale.data import load_dataset_split

    test, info = load_dataset_split(data, "test")
    n = min(n, len(test))
    return torch.stack([test[i][0] for i in range(n)]), torch.tensor([int(test[i][1]) for i in range(n)]), info


def markdown(results: dict[str, dict], class_names) -> str:
    head = "| model | clean | " + " | ".join(class_names) + " | predicted per class |"
    lines = [head, "|---" * (len(class_names) + 3) + "|"]
    for name, r in results.items():
        accs = " | ".join("—" if a is None else f"{100 * a:.0f}" for a in r["per_class"])
        lines.append(f"| {name} | {100 * r['clean']:.1f} | {accs} | {' / '.join(map(str, r['predicted']))} |")
    return "\n".join(lines) + "\n"


def student_labels(folders: list[Path]) -> list[str]:
    """A table label per exported student folder: its run's name (the folder's parent), lengthened by
    the folders above it where two students share one (``c10_p_a/derd_recommended`` and
    ``c10_p_b/derd_recommended``), so no result replaces another in the table or the JSON."""
    parts = [folder.resolve().parent.parts for folder in folders]
    depth = [1] * len(folders)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashing = [i for i, label in enumerate(labels) if labels.count(label) > 1 and depth[i] < len(parts[i])]
        if not clashing:
            return labels
        for i in clashing:
            depth[i] += 1


def _parse_model(spec: str):
    from derd_scale.config import ModelConfig

    if "=" not in spec:
        raise SystemExit(f"--model: expected NAME=ARCH[:CHECKPOINT], got {spec!r}")
    name, rest = spec.split("=", 1)
    arch, _, checkpoint = rest.partition(":") if not rest.startswith(("local-dir:", "hf-hub:")) else (rest, "", "")
    return name, ModelConfig(arch=arch, checkpoint=checkpoint or None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("students", nargs="*", type=Path, help="exported model folders (a run's student/)")
    p.add_argument("--model", action="append", default=[], help="NAME=ARCH[:CHECKPOINT], repeatable")
    p.add_argument("--data", default="cifar10", help="dataset name (data.name)")
    p.add_argument("--data-path", required=True, help="root of the Hub-layout parquet files (../shared/data)")
    p.add_argument("--n", type=int, default=2000, help="the first N test images")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.n < 1:
        print("--n must be ≥ 1", file=sys.stderr)
        return 2
    if not args.students and not args.model:
        print("nothing to evaluate: give exported model folders and/or --model", file=sys.stderr)
        return 2

    from derd_scale.config import ModelConfig

    models = [_parse_model(s) for s in args.model]
    models += [
        (label, ModelConfig(arch=f"local-dir:{folder}"))
        for label, folder in zip(student_labels(args.students), args.students)
    ]
    names_seen = [name for name, _ in models]
    twice = sorted({name for name in names_seen if names_seen.count(name) > 1})
    if twice:
        print(f"two models named {', '.join(twice)}: give each --model its own NAME, each folder once", file=sys.stderr)
        return 2

    from derd_scale.config import DataConfig
    from derd_scale.data import dataset_info
    from derd_scale.teachers import model_from_config

    data = DataConfig(name=args.data, source="parquet", path=str(Path(args.data_path) / args.data))
    x, y, info = first_test_images(data, args.n)
    n = len(y)
    results = {
        name: class_accuracy(model_from_config(mc, dataset_info(args.data)), x, y, info.num_classes)
        for name, mc in models
    }
    names = list(info.class_names) if info.class_names else [str(c) for c in range(info.num_classes)]
    print(
        f"first {n} {args.data} test images; accuracy % per true class, then the number of images filed under each class"
    )
    print(markdown(results, names))
    if args.out:
        args.out.write_text(json.dumps({"n": n, "classes": names, "models": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
