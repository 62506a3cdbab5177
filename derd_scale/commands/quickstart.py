"""Quickstart: the whole product at CPU scale on Fashion-MNIST, in about 15 minutes on 2 cores.

    derd-scale quickstart --data-path ../shared/data [--budget tiny] [--out runs/quickstart]
    derd-scale quickstart                         # data from the Hub (zalando-datasets/fashion_mnist)
    make quickstart DATA_PATH=../shared/data      # the same from a checkout (creates .venv first)

1. trains a natural small CNN teacher (CE) and a PGD-AT one (ε = 0.1) on the real training
   split — cached in OUT/teachers and reused on a second run;
2. runs DERD (Stage I + Stage II) data-free: the student never sees a real image — a second
   run reuses the finished OUT/derd when both teachers were reused and its config is unchanged
   (a killed run, new teachers or another budget start it over);
3. evaluates the student on the real test split with the six columns (Clean, FGSM,
   PGD_S, PGD_T, CW, AutoAttack), prints the table and writes OUT/derd/eval/report.md;
4. writes plots: OUT/derd/curves.png (training curves) and OUT/results.png (bars for
   the teachers, an untrained student and the DERD student).

``--budget tiny`` is the CI-sized run (a few minutes): fewer examples and steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from derd_scale.commands import OneLineParser

# The DERD run's settings, shipped inside the package so the quickstart works from a plain
# (non-editable) install; tests/test_cli.py keeps it identical to configs/fmnist_quickstart.yaml.
QUICKSTART_CONFIG = Path(__file__).resolve().parent.parent / "resources" / "configs" / "fmnist_quickstart.yaml"

BUDGETS = {
    # teacher epochs / train examples / PGD-AT steps; DERD steps; evaluation examples
    "full": {
        "nat_epochs": 1,
        "nat_examples": None,
        "rob_epochs": 1,
        "rob_examples": 30000,
        "rob_steps": 3,
        "stage1": 300,
        "stage2": 400,
        "eval_n": 1000,
        "probe_every": 100,
    },
    "tiny": {
        "nat_epochs": 1,
        "nat_examples": 6000,
        "rob_epochs": 1,
        "rob_examples": 4000,
        "rob_steps": 3,
        "stage1": 60,
        "stage2": 60,
        "eval_n": 200,
        "probe_every": 0,
    },
}


def finished_with(run, cfg) -> bool:
    """Whether ``run`` (a RunDir) finished, with its evaluation, under a config equal to ``cfg``
    (``run_dir.config_changes``: the keys a resume ignores, such as the progress bar, aside)."""
    from derd_scale.run_dir import config_changes

    done = run.is_finished() and (run.path / "eval" / "report.json").is_file() and run.config_path.is_file()
    return done and not config_changes(run.config_path, cfg)


def build_parser(prog: str = "derd-scale quickstart") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", default=None, help="local parquet root (e.g. ../shared/data); default: the Hub")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full", help="full (~15 min) or tiny (CI)")
    p.add_argument("--out", default="runs/quickstart", help="output folder (teachers are cached here)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv=None, prog: str = "derd-scale quickstart") -> int:
    args = build_parser(prog).parse_args(argv)
    b = BUDGETS[args.budget]
    out = Path(args.out)
    t0 = time.time()

    from derd_scale.config import DataConfig, ModelConfig, OptimizerConfig, load_config
    from derd_scale.evaluation import PRESETS, evaluate
    from derd_scale.plots import plot_results_bars, plot_training_curves
    from derd_scale.run_dir import RunDir
    from derd_scale.teacher_training import TeacherTrainConfig, train_teacher
    from derd_scale.trainer import train

    data = DataConfig(name="fashion_mnist", source="parquet" if args.data_path else "hub", path=args.data_path)
    fm = PRESETS["fashion_mnist"]
    teachers = {
        "natural": TeacherTrainConfig(
            data=data,
            model=ModelConfig(arch="small_cnn", kwargs={"width": 16}),
            method="ce",
            eps=fm.eps,
            alpha=fm.alpha,
            epochs=b["nat_epochs"],
            batch_size=128,
            max_train_examples=b["nat_examples"],
            optim=OptimizerConfig(name="sgd", lr=0.05, schedule="cosine"),
            eval_examples=b["eval_n"],
            out=str(out / "teachers" / "natural"),
            progress=not args.no_progress,
        ),
        "pgd_at": TeacherTrainConfig(
            data=data,
            model=ModelConfig(arch="small_cnn", kwargs={"width": 16}),
            method="pgd",
            eps=fm.eps,
            alpha=0.05,
            attack_steps=b["rob_steps"],
            epochs=b["rob_epochs"],
            batch_size=128,
            max_train_examples=b["rob_examples"],
            optim=OptimizerConfig(name="sgd", lr=0.05, schedule="cosine"),
            eval_examples=b["eval_n"],
            out=str(out / "teachers" / "pgd_at"),
            progress=not args.no_progress,
        ),
    }
    teacher_metrics = {}
    teachers_reused = True
    for name, tcfg in teachers.items():
        folder = Path(tcfg.out)
        if (folder / "metrics.json").exists() and (folder / "model.safetensors").exists():
            print(f"[quickstart] reusing cached {name} teacher in {folder}")
            teacher_metrics[name] = json.loads((folder / "metrics.json").read_text())
        else:
            teachers_reused = False
            print(f"[quickstart] training the {name} teacher ({tcfg.method}) …", flush=True)
            teacher_metrics[name] = train_teacher(tcfg)
        print(
            f"[quickstart] {name} teacher: clean {100 * teacher_metrics[name]['clean']:.2f}%, PGD-{tcfg.eval_steps} (ε {tcfg.eps}) {100 * teacher_metrics[name]['pgd_s']:.2f}%"
        )

    overrides = [
        f"data.source={data.source}",
        f"teachers.natural.arch=local-dir:{out / 'teachers' / 'natural'}",
        f"teachers.robust.arch=local-dir:{out / 'teachers' / 'pgd_at'}",
        f"stage1.steps={b['stage1']}",
        f"stage2.steps={b['stage2']}",
        f"eval.n_examples={b['eval_n']}",
        f"eval.every_steps={b['probe_every']}",
        f"output.root={out}",
        "output.name=derd",
        "output.overwrite=true",
        f"logging.progress_bar={'false' if args.no_progress else 'true'}",
    ]
    if args.data_path:
        overrides.append(f"data.path={args.data_path}")
    cfg = load_config(QUICKSTART_CONFIG, overrides)
    print(
        f"[quickstart] DERD: Stage I {cfg.stage1.steps} steps, Stage II {cfg.stage2.steps} steps (data-free) …",
        flush=True,
    )
    finished = RunDir(out / "derd")
    if teachers_reused and finished_with(finished, cfg):
        # Same teachers, same resolved config: training again would give the same student (the
        # runs are seeded), so a second quickstart only re-tabulates.
        print(f"[quickstart] reusing the finished DERD run in {finished.path} (same teachers, same config)")
        run = finished
    else:
        run = train(cfg, "fmnist_quickstart")
    report = json.loads((run.path / "eval" / "report.json").read_text())
    plot_training_curves(run.metrics_path, run.path / "curves.png")

    # Reference rows on the same images and attacks: the teachers and an untrained student.
    from derd_scale.data import dataset_info, load_dataset_split
    from derd_scale.teachers import model_from_config

    info = dataset_info("fashion_mnist")
    test, _ = load_dataset_split(cfg.data, cfg.data.eval_split)
    rows = {}
    for name, ref in (
        ("natural teacher", f"local-dir:{out / 'teachers' / 'natural'}"),
        ("robust teacher", f"local-dir:{out / 'teachers' / 'pgd_at'}"),
        ("untrained student", None),
    ):
        model = model_from_config(ModelConfig(arch=ref) if ref else cfg.student, info)
        r = evaluate(model, test, ["clean", "pgd_s"], fm, n_examples=b["eval_n"], seed=cfg.seed, progress=False)
        rows[name] = {k: v["accuracy"] for k, v in r.results.items() if k != "pgd_s_2x"}
    rows["DERD student"] = {k: v["accuracy"] for k, v in report["attacks"].items() if k != "pgd_s_2x"}
    plot_results_bars(rows, out / "results.png", "Fashion-MNIST, ε = 0.1")
    (out / "summary.json").write_text(
        json.dumps(
            {"rows": rows, "teachers": teacher_metrics, "wall_seconds": time.time() - t0, "budget": args.budget},
            indent=2,
        )
    )

    print()
    print((run.path / "eval" / "report.md").read_text())
    print("| model | Clean | PGD_S |\n|---|---|---|")
    for name, accs in rows.items():
        print(f"| {name} | {100 * accs['clean']:.2f} | {100 * accs['pgd_s']:.2f} |")
    print(
        f"\n[quickstart] done in {(time.time() - t0) / 60:.1f} min; plots: {run.path / 'curves.png'}, {out / 'results.png'}"
    )
    return 0


if __name__ == "__main__":  # python -m derd_scale.commands.quickstart: what accelerate launch -m runs
    sys.exit(main())
