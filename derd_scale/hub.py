"""Push a distilled student to the Hugging Face Hub with a model card that carries its robust metrics.

    python launch/push_to_hub.py --model runs/cifar10_local --repo-id me/derd-resnet20-cifar10 [--private]
    python launch/push_to_hub.py --model runs/cifar10_local --repo-id me/x --dry-run /tmp/upload   # writes, uploads nothing

What is uploaded is the run's export folder (``student/``: config.json, model.safetensors)
plus ``README.md`` — a model card whose YAML front matter has ``library_name: timm``, tags,
datasets, license, ``base_model`` (the teachers) and a ``model-index`` with one metric per
evaluation column (clean and every attack, with ε, steps and n), read from the run's
``eval/report.json``. The token comes from the standard Hugging Face login or ``HF_TOKEN``;
it is never written to disk, logs or the card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import yaml

ATTACK_NAMES = {
    "clean": "Clean accuracy", "fgsm": "FGSM", "pgd_s": "PGD_S (Madry, CE)", "pgd_t": "PGD_T (TRADES, KL)",
    "cw": "CW (L∞ margin PGD)", "aa": "AutoAttack (standard)", "square": "Square (black-box)",
    "transfer_pgd": "Transfer PGD", "transfer_cw": "Transfer CW", "pgd_s_2x": "PGD_S (2× steps)",
}
HUB_DATASETS = {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100", "fashion_mnist": "zalando-datasets/fashion_mnist", "mnist": "ylecun/mnist", "imagenet100": "clane9/imagenet-100"}


def _teacher_base_model(arch: str) -> Optional[str]:
    """A Hub id for ``base_model`` when the teacher came from the Hub, else None."""
    if arch.startswith("hf-hub:"):
        return arch[len("hf-hub:"):]
    if arch.startswith("timm:"):
        return f"timm/{arch[len('timm:'):]}"
    return None


def build_model_card(run_dir: Path, repo_id: str, license: str = "apache-2.0") -> str:
    """The README.md text (YAML front matter + body) for a finished run folder."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    export = json.loads((run_dir / "student" / "config.json").read_text())
    report_path = run_dir / "eval" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {"attacks": {}}
    summary = json.loads((run_dir / "DONE").read_text() or "{}") if (run_dir / "DONE").exists() else {}
    dataset = config["data"]["name"]
    dataset_id = HUB_DATASETS.get(dataset, dataset)
    results = []
    for name, r in report.get("attacks", {}).items():
        results.append(EvalResult(
            task_type="image-classification", dataset_type=dataset_id, dataset_name=dataset, dataset_split=config["data"].get("eval_split", "test"),
            metric_type="accuracy" if name == "clean" else "robust_accuracy", metric_name=ATTACK_NAMES.get(name, name),
            metric_value=round(100 * r["accuracy"], 2),
            metric_config=f"{name}: linf eps={r.get('eps', 0):.5f}, step={r.get('alpha', 0):.5f}, steps={r.get('steps', 0)}, n={r.get('n')}",
        ))
    teachers = config["teachers"]
    base = [b for b in (_teacher_base_model(teachers["natural"]["arch"]), _teacher_base_model(teachers["robust"]["arch"])) if b]
    data = ModelCardData(
        library_name="timm" if export["derd_scale"]["library"] == "timm" else "derd_scale",
        license=license, tags=["image-classification", "adversarial-robustness", "knowledge-distillation", "data-free", "derd", "derd_scale"],
        datasets=[dataset_id], base_model=base or None, model_name=repo_id.split("/")[-1], eval_results=results or None,
    )
    arch = export["architecture"]
    if export["derd_scale"]["library"] == "timm":
        load = f'```python\nimport timm\nmodel = timm.create_model("hf-hub:{repo_id}", pretrained=True)\n```'
    else:
        load = (f"`{arch}` is a derd_scale CIFAR architecture (not in timm):\n\n```python\nfrom huggingface_hub import snapshot_download\n"
                f"from derd_scale.export import load_exported\nmodel = load_exported(snapshot_download(\"{repo_id}\"))  # feed [0, 1] pixels\n```")
    table = ""
    if report.get("attacks"):
        rows = [f"| {ATTACK_NAMES.get(k, k)} | {100 * v['accuracy']:.2f} | {v.get('eps', 0):.5f} | {v.get('steps', '')} | {v.get('n')} |" for k, v in report["attacks"].items()]
        table = "| attack | accuracy (%) | ε | steps | n |\n|---|---|---|---|---|\n" + "\n".join(rows)
        if report.get("warnings"):
            table += "\n\nEvaluator warnings:\n" + "\n".join(f"- {w}" for w in report["warnings"])
    s2 = config["stage2"]
    body = f"""
# {repo_id.split('/')[-1]}

A `{arch}` student distilled **without training data** by DERD (data-free experts-guided
robustness distillation) with [derd_scale](https://github.com/): a generator makes pseudo
images, a self-adversarial step turns them into discrepancy data between the two frozen
teachers, and the student learns from both with stochastic gradient aggregation.

- Natural teacher: `{teachers['natural']['arch']}`
- Robust teacher: `{teachers['robust']['arch']}`
- Stage I: {config['stage1']['steps'] if config['stage1']['enabled'] else 0} steps; Stage II: {s2['steps'] if s2['enabled'] else 0} steps,
  SA K={s2['sa']['steps']} α={s2['sa']['alpha']:.5f}, λ_rob={s2['eg']['lambda_rob']}, aggregation `{s2['aggregation']['method']}`
- Training: {summary.get('world_size', 1)} process(es), {summary.get('train_seconds', float('nan')) / 60:.1f} min
- The full resolved config is `derd_config.yaml` in this repository.

## Robustness (real {dataset} {config['data'].get('eval_split', 'test')} data)

{table or 'No evaluation report was found for this run.'}

## How to load

{load}

Inputs are pixels in [0, 1]; normalisation uses `pretrained_cfg` mean/std.
"""
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body).content


def stage_upload(run_dir: Path, repo_id: str, target: Path, license: str = "apache-2.0") -> list[str]:
    """Write exactly the files to upload into ``target``; returns their names."""
    run_dir = Path(run_dir)
    if not (run_dir / "student" / "model.safetensors").exists():
        raise FileNotFoundError(f"{run_dir}: no student export (student/model.safetensors); is the run finished?")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(run_dir / "student" / name, target / name)
    shutil.copy2(run_dir / "config.yaml", target / "derd_config.yaml")
    if (run_dir / "eval" / "report.json").exists():
        shutil.copy2(run_dir / "eval" / "report.json", target / "eval_report.json")
    (target / "README.md").write_text(build_model_card(run_dir, repo_id, license))
    return sorted(p.name for p in target.iterdir())


def push_to_hub(run_dir: Path, repo_id: str, private: bool = False, revision: Optional[str] = None, license: str = "apache-2.0", commit_message: Optional[str] = None) -> str:
    """Create the repo (if needed) and upload the staged folder in one commit; returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi()  # token: the standard login / HF_TOKEN, never passed around or stored here
    with tempfile.TemporaryDirectory() as tmp:
        files = stage_upload(run_dir, repo_id, Path(tmp), license)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message or f"derd_scale: upload distilled student ({', '.join(files)})")
    return str(getattr(info, "commit_url", info))
