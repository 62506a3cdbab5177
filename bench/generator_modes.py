"""What a data-free run's generator makes, and whether its student still depends on its input.

    python bench/generator_modes.py bench/out/zskt_ratio/zskt_kd              # prints JSON
    python bench/generator_modes.py RUN --samples 512 --out RUN_DIAG.json

Loads the run's resolved config (``config.yaml``) and its newest checkpoint, draws ``--samples``
latents, and reports: the pixel statistics of G(z) (per-image and across-batch spread: a
collapsed G has a small across-batch spread), the class histogram of T_nat and of the student on
G(z), KL(T_nat ‖ S) there, the student's class histogram on uniform noise, and the spread of the
student's logits over the batch (≈ 0: the student is a constant function, e.g. after its hidden
ReLUs died). And the robust teacher's view of the same G(z): its class histogram, and per T_nat class
the share of those images T_rob gives the same label (``teacher_agreement_by_class``: where it is low,
the robust soft labels a Stage-II student distils on that class's pseudo images name another class);
for a class-conditional G, per label y the share T_nat files under y (``natural_follows_label_by_class``). Why: a row that scores 1/num_classes on every column can be a collapsed G (T sees one
class), a dead student (S outputs one class whatever T says), or both; this tells which.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def share_by_class(by, hit, classes: int) -> list:
    """Per class c of the labels ``by``: the fraction of its samples where ``hit`` is true (None: no sample)."""
    import torch

    n = torch.bincount(by, minlength=classes)
    k = torch.bincount(by, weights=hit.float(), minlength=classes)
    return [round(k[c].item() / n[c].item(), 4) if n[c] else None for c in range(classes)]


def generator_modes(run: Path, samples: int = 512, seed: int = 0) -> dict:
    import torch

    from derd_scale.config import load_config
    from derd_scale.trainer import build_models

    if not (run / "config.yaml").exists():
        raise SystemExit(f"{run}: no config.yaml (a run restored from an archive keeps results, not checkpoints)")
    cfg = load_config(str(run / "config.yaml"), [])
    models = build_models(cfg)
    checkpoints = sorted((run / "checkpoints").glob("stage*-*"))
    if not checkpoints:
        raise SystemExit(f"{run}: no checkpoint to read")
    state = torch.load(checkpoints[-1] / "state.pt", map_location="cpu", weights_only=False)
    models.generator.load_state_dict(state["models"]["generator"]["model"])
    models.student.load_state_dict(state["models"]["student"]["model"])
    generator, teacher, student = models.generator.eval(), models.natural_teacher.eval(), models.student.eval()
    robust_teacher = models.robust_teacher.eval()
    classes = models.info.num_classes

    def histogram(logits) -> list[int]:
        return torch.bincount(logits.argmax(1), minlength=classes).tolist()

    with torch.no_grad():
        z, y = generator.sample(samples, torch.Generator().manual_seed(seed))
        x = generator(z, y)
        t_logits, s_logits, r_logits = teacher(x), student(x), robust_teacher(x)
        t_label, r_label = t_logits.argmax(1), r_logits.argmax(1)
        p_t = t_logits.softmax(1)
        kl = (p_t * (p_t.clamp_min(1e-8).log() - s_logits.log_softmax(1))).sum(1).mean()
        noise = torch.rand((samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed + 1))
        return {
            "run": str(run),
            "checkpoint": checkpoints[-1].name,
            "pixels": {
                "min": x.min().item(),
                "max": x.max().item(),
                "mean": x.mean().item(),
                "per_image_std": x.flatten(1).std(1).mean().item(),
                "across_batch_std": x.std(0).mean().item(),
            },
            "teacher_classes_on_gz": histogram(t_logits),
            "teacher_max_prob_on_gz": p_t.max(1).values.mean().item(),
            "robust_teacher_classes_on_gz": histogram(r_logits),
            "robust_teacher_max_prob_on_gz": r_logits.softmax(1).max(1).values.mean().item(),
            "teacher_agreement": (t_label == r_label).float().mean().item(),
            "teacher_agreement_by_class": share_by_class(t_label, t_label == r_label, classes),
            "natural_follows_label_by_class": None if y is None else share_by_class(y, t_label == y, classes),
            "student_classes_on_gz": histogram(s_logits),
            "kl_teacher_student_on_gz": kl.item(),
            "student_classes_on_noise": histogram(student(noise)),
            "student_logit_std_over_batch": s_logits.std(0).mean().item(),
        }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run folder (config.yaml + checkpoints/)")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.samples < 2:
        print("--samples must be ≥ 2", file=sys.stderr)
        return 2
    result = generator_modes(args.run, args.samples, args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
