"""What the attacked copy (``eval.optimized_copy``) saves: one forward + input-gradient pass, model vs copy.

    python bench/attack_speed.py --data-path ../shared/data            # one thread, batch 100
    python bench/attack_speed.py --threads 2 --out bench/out/attack_speed.json

Every attack in the evaluation (PGD, CW, APGD-CE/T, FAB-T) is a loop of this pass; Square is
a loop of forwards. For each architecture the tables evaluate — the Fashion-MNIST student
(small CNN, width 8), the CIFAR-10 student ResNet-20, the natural ResNet-56 and the robust
ResNet-4B (the shared checkpoints where they exist, so BatchNorm statistics are real) — it
times the pass on the model in eval mode and on ``evaluation.inference.optimized_copy`` of it,
interleaved (model, copy, model, copy, …) so a shared machine slows both alike, and reports
the medians, their ratio, and the largest logit and input-gradient differences (fp32
rounding of the folded arithmetic). Writes ``<out>`` (json) and ``<out>.md``; the committed
copy is ``docs/results/attack_speed.json`` and the table is in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def models(data_path: str) -> dict:
    """name → (model in eval mode, input shape of one example)."""
    from derd_scale.models import create_model

    w = Path(data_path) / "weights"
    return {
        "fmnist small_cnn (width 8)": (create_model("small_cnn", 10, in_chans=1, width=8), (1, 28, 28)),
        "cifar10 resnet20": (
            create_model("resnet20", 10, checkpoint=w / "akamaster_resnet_cifar10" / "resnet20-12fca82f.th"),
            (3, 32, 32),
        ),
        "cifar10 resnet56": (
            create_model("resnet56", 10, checkpoint=w / "akamaster_resnet_cifar10" / "resnet56-4bfd9763.th"),
            (3, 32, 32),
        ),
        "cifar10 resnet4b": (
            create_model("resnet4b", 10, checkpoint=w / "abcrown_robust_cifar10" / "resnet4b.pth"),
            (3, 32, 32),
        ),
    }


def input_gradient(model, x):
    import torch

    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, logits.argmax(1)), x)
    return logits.detach(), grad


def measure(model, shape, batch: int, repeats: int) -> dict:
    import torch

    from derd_scale.evaluation.inference import optimized_copy

    model = model.eval()
    copy = optimized_copy(model)
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
    ref_logits, ref_grad = input_gradient(model, x)
    logits, grad = input_gradient(copy, x)
    times = {"model": [], "copy": []}
    for _ in range(2):  # warm-up: oneDNN primitive caches
        input_gradient(model, x), input_gradient(copy, x)
    for _ in range(repeats):
        for name, m in (("model", model), ("copy", copy)):
            t0 = time.perf_counter()
            input_gradient(m, x)
            times[name].append(time.perf_counter() - t0)
    model_ms, copy_ms = (1000 * statistics.median(times[k]) for k in ("model", "copy"))
    return {
        "model_ms": round(model_ms, 2),
        "copy_ms": round(copy_ms, 2),
        "speedup": round(model_ms / copy_ms, 3),
        "max_logit_diff": float((logits - ref_logits).abs().max()),
        "max_grad_diff": float((grad - ref_grad).abs().max()),
        "max_grad": float(ref_grad.abs().max()),
        "same_predictions": bool((logits.argmax(1) == ref_logits.argmax(1)).all()),
    }


def markdown(result: dict) -> str:
    lines = [
        f"# Attack pass: model vs optimized copy ({result['threads']} thread(s), batch {result['batch']}, "
        f"median of {result['repeats']})",
        "",
        "| model | model ms | copy ms | speed-up | max logit diff | max grad diff (max grad) | same predictions |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {r['model_ms']:.1f} | {r['copy_ms']:.1f} | {r['speedup']:.2f}× | {r['max_logit_diff']:.1e} | "
            f"{r['max_grad_diff']:.1e} ({r['max_grad']:.2g}) | {'yes' if r['same_predictions'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default="../shared/data")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=100, help="the tables' AutoAttack batch")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default="bench/out/attack_speed.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = {}
    for name, (model, shape) in models(args.data_path).items():
        rows[name] = measure(model, shape, args.batch, args.repeats)
        print(f"[attack_speed] {name}: {rows[name]}", flush=True)
    result = {
        "threads": args.threads,
        "batch": args.batch,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
