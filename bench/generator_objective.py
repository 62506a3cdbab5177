"""What the generator can reach on its own Stage-I objective, without the student (minutes of one thread).

    python bench/generator_objective.py --recipe cifar10_2 --data-path ../shared/data --steps 600
    python bench/generator_objective.py --recipe cifar10_2 --data-path ../shared/data --steps 600 \\
        --set stage1.lambda_bn=0.1 --set stage1.lambda_robust_g=5 --out bench/out/gobj_bn01_rg5.json

Trains a fresh G of a ``bench/distill_table.py`` recipe (its DERD rows' config: generator, optimiser,
batch, seed, precision, Eq. 11's weights, ``--set`` overrides on top) on Eq. 11 against T_nat plus
``stage1.lambda_robust_g`` × Eq. 11 on T_rob, for ``--steps`` G updates — no student, so neither the
KD term nor CMI's adversarial term (``stage1.lambda_adv``), which need one. Every ``--log-every``
steps it prints L_oh, L_BN and the batch's shares; at the end, on ``--samples`` fresh G(z) (G in train
mode: batch statistics, as in training), it reports the share T_nat files under G's label y (a
class-conditional G, ``generator.pseudo_labels=sampled``), the share T_rob does, both, the experts'
agreement and T_rob's mean top probability, overall and per label, and as the yardstick the experts'
agreement and T_rob's top probability on the first ``--real`` test images (prints JSON; ``--out``
writes it). ``--steps 0`` reports the untrained G and the yardstick only.

Why: on the CIFAR-10 recipe G's L_oh stayed at 6–9 through 1600 Stage-I steps (it does not follow
its labels) while L_BN, summed over ResNet-56's BatchNorm layers, fell from 190 to 45, and T_rob
gives T_nat's label on only 26 % of G(z) against 77 % of real test images (docs/results.md). This
asks, in minutes instead of an hour's Stage I, which weights of G's terms let it make images both
experts read as y.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def follow_shares(labels, natural_logits, robust_logits, classes: int) -> dict:
    """Shares of a batch of G(z, y): T_nat's label = y, T_rob's = y, both, T_nat's = T_rob's; per label y too."""
    from generator_modes import share_by_class

    nat, rob = natural_logits.argmax(1), robust_logits.argmax(1)
    hits = {"natural_follows_y": nat == labels, "robust_follows_y": rob == labels}
    hits["both_follow_y"] = hits["natural_follows_y"] & hits["robust_follows_y"]
    out = {k: v.float().mean().item() for k, v in hits.items()}
    out["teacher_agreement"] = (nat == rob).float().mean().item()
    out["robust_max_prob"] = robust_logits.float().softmax(1).max(1).values.mean().item()
    out["by_label"] = {k: share_by_class(labels, v, classes) for k, v in hits.items()}
    return out


def real_reference(cfg, models, n: int) -> dict:
    """The experts on the first ``n`` real test images: accuracy, agreement, T_rob's mean top probability."""
    import torch
    from class_accuracy import first_test_images

    x, y, _ = first_test_images(cfg.data, n)
    n = len(y)
    with torch.no_grad():
        nat = torch.cat([models.natural_teacher(x[i : i + 250]) for i in range(0, n, 250)])
        rob = torch.cat([models.robust_teacher(x[i : i + 250]) for i in range(0, n, 250)])
    return {
        "images": n,
        "natural_accuracy": (nat.argmax(1) == y).float().mean().item(),
        "robust_accuracy": (rob.argmax(1) == y).float().mean().item(),
        "teacher_agreement": (nat.argmax(1) == rob.argmax(1)).float().mean().item(),
        "robust_max_prob": rob.softmax(1).max(1).values.mean().item(),
    }


def generator_objective(cfg, steps: int, samples: int, log_every: int, real: int = 0, log=print) -> dict:
    """Train ``cfg``'s fresh generator on its Eq. 11 terms (no student); the history and final shares."""
    import torch

    from derd_scale.derd.losses import generator_loss
    from derd_scale.distributed import bf16_autocast, resolve_mixed_precision
    from derd_scale.optim import build_optimizer
    from derd_scale.trainer import build_models

    if cfg.generator.pseudo_labels != "sampled":
        raise SystemExit("generator.pseudo_labels must be sampled: the probe asks whether G follows its labels")
    torch.manual_seed(cfg.seed)
    models = build_models(cfg)
    generator = models.generator.train()
    natural, robust = models.natural_teacher.eval(), models.robust_teacher.eval()
    for p in [*natural.parameters(), *robust.parameters()]:
        p.requires_grad_(False)
    reference = real_reference(cfg, models, real) if real else None
    optimizer = build_optimizer(generator.parameters(), cfg.optim.generator)
    precision = resolve_mixed_precision(cfg.distributed.mixed_precision, torch.device("cpu"))
    s1 = cfg.stage1
    weights = (s1.lambda_oh, s1.lambda_a, s1.lambda_bn, s1.lambda_ie, s1.lambda_tv)
    noise = torch.Generator().manual_seed(cfg.seed)
    history, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        z, y = generator.sample(s1.batch_size, noise)
        with bf16_autocast(precision, torch.device("cpu")):
            x = generator(z, y)
            loss, natural_logits, parts = generator_loss(natural, x, *weights, targets=y)
            if s1.lambda_robust_g:  # as the trainer's generator_update: the same labels on T_rob
                robust_loss, _, _ = generator_loss(robust, x, *weights, targets=y)
                loss = loss + s1.lambda_robust_g * robust_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps:
            with torch.no_grad():
                robust_logits = robust(x.detach().float())
            shares = follow_shares(y, natural_logits.detach().float(), robust_logits, models.info.num_classes)
            row = {"step": step, "l_oh": parts["l_oh"].item(), "l_bn": parts["l_bn"].item()}
            row |= {k: round(v, 4) for k, v in shares.items() if k != "by_label"}
            row["seconds"] = round(time.perf_counter() - start, 1)
            history.append(row)
            log(json.dumps(row))
    ys, nat, rob = [], [], []
    final_noise = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        for _ in range(-(-samples // s1.batch_size)):
            z, y = generator.sample(s1.batch_size, final_noise)
            x = generator(z, y).float()
            ys.append(y), nat.append(natural(x)), rob.append(robust(x))
    y, nat, rob = torch.cat(ys)[:samples], torch.cat(nat)[:samples], torch.cat(rob)[:samples]
    final = follow_shares(y, nat, rob, models.info.num_classes)
    return {
        "steps": steps,
        "samples": int(len(y)),
        "precision": precision,
        "history": history,
        "final": final,
        "real_test_images": reference,
    }


def main(argv=None) -> int:
    import distill_table

    from derd_scale.commands import add_override_option

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, choices=[*distill_table.RECIPES, *distill_table.RECIPE_ALIASES])
    p.add_argument("--data-path", required=True, help="root of the Hub-layout parquet files (../shared/data)")
    p.add_argument("--steps", type=int, default=600, help="G updates")
    p.add_argument("--samples", type=int, default=512, help="fresh G(z) for the final shares")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--real", type=int, default=1000, help="the yardstick's first N real test images (0: none)")
    p.add_argument("--seed", type=int, default=0)
    add_override_option(p, "dotted config override, repeatable")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    for name, least in (("steps", 0), ("samples", 1), ("log_every", 1), ("real", 0)):
        if getattr(args, name) < least:
            print(f"--{name.replace('_', '-')} must be ≥ {least}", file=sys.stderr)
            return 2

    from derd_scale.config import ConfigError, config_from_dict

    r = distill_table.recipe(args.recipe, args.data_path)
    if r["ensure_teachers"] is not None:
        r["ensure_teachers"](r["teachers"], args.data_path)
    overrides = [*r["config"], *distill_table.ROW_OVERRIDES["derd_recommended"], f"seed={args.seed}", *args.overrides]
    try:
        cfg = config_from_dict({}, overrides)
    except ConfigError as e:
        print(f"--set: {e}", file=sys.stderr)
        return 2
    result = {"recipe": args.recipe, "set": args.overrides, "seed": args.seed}
    result |= generator_objective(cfg, args.steps, args.samples, args.log_every, args.real)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
