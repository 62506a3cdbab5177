"""Push a distilled student to the Hugging Face Hub with a model card that carries its robust metrics.

    python launch/push_to_hub.py --model runs/cifar10_local --repo-id me/derd-resnet20-cifar10 [--private]
    python launch/push_to_hub.py --model runs/cifar10_local --repo-id me/x --dry-run /tmp/upload   # writes, uploads nothing

A finished run folder holds ``config.yaml``, ``student/`` (the export: config.json,
model.safetensors), ``DONE`` (training summary) and, once evaluated, ``eval/report.json``.
What is uploaded, in one commit: ``config.json`` + ``model.safetensors`` (timm format),
``derd_config.yaml`` (the resolved run config), ``eval_report.json`` and ``README.md`` — a
model card whose YAML front matter has ``library_name``, tags, datasets, license,
``base_model`` (the teachers that came from the Hub) and a ``model-index`` with one metric
per evaluation column (clean and every attack, with ε, step, steps, restarts, n and, for
AutoAttack, its version and component budgets in its ``args``), and whose body says which
protocol produced each number, how the student was distilled and how to load it.

The token comes from the standard Hugging Face login (``hf auth login``) or ``HF_TOKEN``,
read by huggingface_hub itself; this module never sees, logs or writes it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Optional

import yaml

from .run_dir import RunDir

ATTACK_NAMES = {
    "clean": "Clean accuracy",
    "fgsm": "FGSM",
    "pgd_s": "PGD_S (Madry, CE)",
    "pgd_t": "PGD_T (TRADES, KL)",
    "cw": "CW (L∞ margin PGD)",
    "aa": "AutoAttack (standard)",
    "square": "Square (black-box)",
    "aa_fast": "aa_fast (torchattacks AutoAttack defaults, 10 iterations; not the standard AutoAttack)",
    "transfer_pgd": "Transfer PGD",
    "transfer_cw": "Transfer CW",
    "pgd_s_2x": "PGD_S (2× steps)",
}
# Which budget fields of an eval/report.json entry describe each attack (the report copies
# the whole protocol into every entry; FGSM's "steps" or Square's "alpha" would mislead).
ATTACK_ARGS = {
    "clean": ("n",),
    "fgsm": ("eps", "n"),
    "pgd_s": ("eps", "alpha", "steps", "restarts", "n"),
    "pgd_s_2x": ("eps", "alpha", "steps", "restarts", "n"),
    "pgd_t": ("eps", "alpha", "steps", "n"),
    "cw": ("eps", "alpha", "steps", "restarts", "cw_kappa", "n"),
    "aa": ("eps", "n"),
    "aa_fast": ("eps", "n"),
    "square": ("eps", "square_queries", "n"),
    "transfer_pgd": ("eps", "alpha", "steps", "n"),
    "transfer_cw": ("eps", "alpha", "steps", "cw_kappa", "n"),
}
DEFAULT_ATTACK_ARGS = ("eps", "alpha", "steps", "n")
# AutoAttack budgets copied from an entry's "autoattack" record into its metric args.
AUTOATTACK_ARGS = (
    "version",
    "apgd_steps",
    "apgd_restarts",
    "apgd_rho",
    "apgdt_steps",
    "apgdt_restarts",
    "apgdt_target_classes",
    "fab_steps",
    "fab_restarts",
    "fab_target_classes",
    "square_queries",
    "square_restarts",
    "square_p_init",
)
UNRECORDED_AA = (
    "AutoAttack version not recorded in the report (reports written before the evaluator recorded it ran "
    "torchattacks' 10-iteration default under the name aa, i.e. what is now aa_fast)"
)


class RunFolderError(RuntimeError):
    """The run folder lacks something the card or upload needs (one line, names the file)."""


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path}: not found ({what})") from None
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def read_eval_report(path: Path) -> dict[str, dict]:
    """``{attack: {"accuracy": 0-1, "n": …, "eps": …, …}}`` from an evaluation report; {} if absent.

    Optional fields may be missing; an entry without a numeric accuracy in [0, 1] is an
    error — a card must never show a number that is not the evaluator's.
    """
    if not path.exists():
        return {}
    report = _read_json(path, "evaluation report")
    attacks = report.get("attacks") if isinstance(report, dict) else None
    if not isinstance(attacks, dict):
        raise RunFolderError(f"{path}: no 'attacks' mapping")
    out = {}
    for name, entry in attacks.items():
        acc = entry.get("accuracy") if isinstance(entry, dict) else None
        if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not (0.0 <= acc <= 1.0) or math.isnan(acc):
            raise RunFolderError(f"{path}: attacks.{name}.accuracy must be a number in [0, 1], got {acc!r}")
        out[str(name)] = entry
    return out


def metric_args(name: str, entry: dict, protocol_steps: Optional[int] = None) -> dict:
    """The budget of one evaluation column (clean accuracy has no ε)."""
    args = {k: entry[k] for k in ATTACK_ARGS.get(name, DEFAULT_ATTACK_ARGS) if entry.get(k) is not None}
    if name == "pgd_s_2x" and "steps" in args and args["steps"] == protocol_steps:
        # The evaluator runs twice the protocol's steps but records the protocol's value.
        args["steps"] = 2 * args["steps"]
    if name != "clean":
        args = {"norm": "Linf", **args}
    if name in ("aa", "aa_fast"):
        budgets = entry.get("autoattack")
        if isinstance(budgets, dict):
            args.update(
                {
                    f"aa_{k}" if k != "version" else "aa_version": budgets[k]
                    for k in AUTOATTACK_ARGS
                    if budgets.get(k) is not None
                }
            )
    return args


def metric_name(name: str, entry: dict) -> str:
    """The card's label of one column; `aa` is called standard AutoAttack only if the report says so."""
    if name == "aa" and (entry.get("autoattack") or {}).get("version") != "standard":
        return "AutoAttack (version not recorded)"
    return ATTACK_NAMES.get(name, name)


def describe_autoattack(entry: dict) -> str:
    """One sentence: which AutoAttack produced an aa/aa_fast number, with its budgets."""
    b = entry.get("autoattack")
    if not isinstance(b, dict):
        return UNRECORDED_AA
    return (
        f"version `{b.get('version')}` — APGD-CE {b.get('apgd_steps')} iterations × {b.get('apgd_restarts')} restart (ρ = {b.get('apgd_rho')}), "
        f"APGD-T {b.get('apgdt_steps')} iterations × {b.get('apgdt_target_classes')} target classes, "
        f"FAB-T {b.get('fab_steps')} iterations × {b.get('fab_target_classes')} target classes, "
        f"Square {b.get('square_queries')} queries (p_init {b.get('square_p_init')}); {b.get('implementation', '')}"
    ).rstrip("; ")


def _wilson(correct, n) -> Optional[tuple]:
    """The 95 % Wilson interval for reports written before they carried ``ci95``."""
    if not isinstance(correct, int) or not isinstance(n, int) or not 0 <= correct <= n:
        return None
    from .evaluation.report import wilson_interval

    return wilson_interval(correct, n)


def describe_protocol(protocol: dict, n: Optional[int]) -> str:
    """One line: the L∞ budget every attack column was run at."""
    if not protocol:
        return "Protocol: not recorded in the report."
    fmt = lambda v: f"{v:.5g}" if isinstance(v, float) else str(v)  # noqa: E731
    return (
        f"Protocol `{protocol.get('name', '?')}`: L∞ ε = {fmt(protocol.get('eps'))} (pixels in [0, 1]), step = {fmt(protocol.get('alpha'))}, "
        f"{protocol.get('steps')} steps, {protocol.get('restarts', 1)} restart(s) (PGD_S, CW), CW κ = {protocol.get('cw_kappa', 0.0)}, "
        f"Square {protocol.get('square_queries', '?')} queries, on the first {n} examples of the split."
    )


def _hub_base_model(mcfg: dict) -> Optional[str]:
    """The Hub repo a teacher's weights came from, else None (local files, RobustBench)."""
    arch = str(mcfg.get("arch", ""))
    if arch.startswith("hf-hub:"):
        return arch[len("hf-hub:") :]
    name = arch[len("timm:") :] if arch.startswith("timm:") else arch
    if (arch.startswith("timm:") or mcfg.get("pretrained")) and not mcfg.get("checkpoint"):
        try:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(name)
        except Exception:  # unknown name: no claim
            cfg = None
        if cfg is not None and getattr(cfg, "hf_hub_id", None):
            return cfg.hf_hub_id
    return None


def _describe_teacher(mcfg: dict) -> str:
    """One line: the source string, plus what a derd_scale-trained teacher folder says about itself."""
    arch = str(mcfg.get("arch", "?"))
    text = f"`{arch}`" if not arch.startswith("local-dir:") else f"`local-dir:…/{Path(arch[len('local-dir:') :]).name}`"
    if mcfg.get("checkpoint"):
        text += f" with weights `{Path(str(mcfg['checkpoint'])).name}`"
    if mcfg.get("class_subset"):
        text += f", logits restricted to `{mcfg['class_subset']}`"
    if arch.startswith("local-dir:"):
        cfg_path = Path(arch[len("local-dir:") :]) / "config.json"
        try:
            meta = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            return text
        ours = meta.get("derd_scale", {})
        text += f" ({meta.get('architecture', '?')}"
        training, metrics = ours.get("training"), ours.get("metrics")
        if training:
            text += f", trained by derd_scale: {training.get('method')}"
            if training.get("method") != "ce":
                text += f" ε={training.get('eps')}"
            text += f", {training.get('epochs')} epoch(s)"
        if metrics and "clean" in metrics:
            text += f"; clean {100 * metrics['clean']:.2f}%"
            if "pgd_s" in metrics:
                text += f", PGD-{metrics.get('eval_steps', '?')} (ε={metrics.get('eps')}) {100 * metrics['pgd_s']:.2f}%"
        text += ")"
    return text


def _dataset_hub_id(name: str) -> str:
    from .data import known_dataset

    info = known_dataset(name)  # no network: any other name is a Hub id (or a local folder) already
    return info.hub_id if info is not None else name


def build_model_card(run_dir: Path, repo_id: str, license: str = "apache-2.0") -> str:
    """The README.md text (YAML front matter + body) for a finished run folder."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    run_dir = Path(run_dir)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{run_dir / 'config.yaml'}: not found (is {run_dir} a run folder?)") from None
    export = _read_json(run_dir / "student" / "config.json", "student export")
    attacks = read_eval_report(run_dir / "eval" / "report.json")
    report = _read_json(run_dir / "eval" / "report.json", "evaluation report") if attacks else {}
    summary = RunDir(run_dir).summary()

    data_cfg = config.get("data", {})
    dataset = data_cfg.get("name", "unknown")
    dataset_id = _dataset_hub_id(dataset)
    split = report.get("split") or data_cfg.get("eval_split", "test")
    protocol_steps = (report.get("protocol") or {}).get("steps")
    budgets = {name: metric_args(name, entry, protocol_steps) for name, entry in attacks.items()}
    results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=dataset_id,
            dataset_name=dataset,
            dataset_split=split,
            metric_type="accuracy",
            metric_name=metric_name(name, entry),
            metric_config=name,
            metric_value=round(100 * float(entry["accuracy"]), 2),
            metric_args=budgets[name],
        )
        for name, entry in attacks.items()
    ]
    teachers = config.get("teachers", {})
    nat, rob = teachers.get("natural", {}), teachers.get("robust", {})
    base = list(dict.fromkeys(b for b in (_hub_base_model(nat), _hub_base_model(rob)) if b))
    library = export.get("derd_scale", {}).get("library", "timm")
    # timm exports name their architecture; transformers' save_pretrained lists its classes.
    arch = export["architecture"] if library != "transformers" else (export.get("architectures") or ["?"])[0]
    data = ModelCardData(
        # derd_scale's own CIFAR nets are not timm architectures: claiming timm would make
        # the Hub's "use this model" snippet fail, so they say derd_scale.
        library_name=library if library in ("timm", "transformers") else "derd_scale",
        license=license,
        tags=[
            "image-classification",
            "adversarial-robustness",
            "knowledge-distillation",
            "data-free",
            "derd",
            "derd_scale",
            arch,
            dataset,
        ],
        datasets=[dataset_id],
        base_model=base or None,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )
    card_text = "---\n{{ card_data }}\n---\n" + _card_body(
        repo_id, arch, library, export, config, summary, attacks, budgets, report, nat, rob, dataset, split
    )
    return ModelCard.from_template(data, template_str=card_text).content


def _card_body(
    repo_id, arch, library, export, config, summary, attacks, budgets, report, nat, rob, dataset, split
) -> str:
    s1, s2 = config.get("stage1", {}), config.get("stage2", {})
    sa, eg, agg = s2.get("sa", {}), s2.get("eg", {}), s2.get("aggregation", {})
    opt = config.get("optim", {}).get("student", {})
    stage2 = (
        (
            f"Stage II: {s2.get('steps')} steps × batch {s2.get('batch_size')} — self-adversary K={sa.get('steps')} α={sa.get('alpha')}"
            f"{'' if sa.get('enabled', True) else ' (off)'}, λ_rob={eg.get('lambda_rob')}"
            f"{', natural teacher off' if not eg.get('enabled', True) else ''}, gradient aggregation `{agg.get('method')}`"
            + (f" (σ_r={agg.get('sigma_r')}, λ_SGA={agg.get('lambda_sga')})" if agg.get("method") == "sga" else "")
        )
        if s2.get("enabled", True)
        else "Stage II: off"
    )
    stage1 = (
        f"Stage I: {s1.get('steps')} steps × batch {s1.get('batch_size')}"
        if s1.get("enabled", True)
        else "Stage I: off"
    )
    seconds = summary.get("train_seconds")
    hardware = summary.get("hardware") or "not recorded by the run"
    if library == "transformers":
        size = export["derd_scale"]["input_size"]
        c, h, w = export.get("num_channels", 3), size, size
    else:
        c, h, w = export["pretrained_cfg"]["input_size"]
    table = "No evaluation report (eval/report.json) was found for this run."
    if attacks:
        rows = []
        for name, e in attacks.items():
            b = budgets[name]
            cell = lambda key: f"{b[key]:.4g}" if isinstance(b.get(key), float) else str(b.get(key, "—"))  # noqa: E731
            ci = e.get("ci95") if "ci95" in e else _wilson(e.get("correct"), e.get("n"))
            ci_text = (
                f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
                if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci
                else "—"
            )
            rows.append(
                f"| {metric_name(name, e)} | {100 * e['accuracy']:.2f} | {ci_text} | {cell('eps')} | {cell('alpha')} | {cell('steps')} | {cell('restarts')} | {cell('n')} |"
            )
        table = (
            describe_protocol(report.get("protocol") or {}, report.get("n"))
            + "\n\n"
            + "| evaluation | accuracy (%) | 95 % CI (Wilson) | ε (L∞) | step | steps | restarts | n |\n|---|---|---|---|---|---|---|---|\n"
            + "\n".join(rows)
            + "\n\nRobust accuracy counts an example only if it is also classified correctly without attack."
        )
        for name in ("aa", "aa_fast"):
            if name in attacks:
                table += f"\n\n{metric_name(name, attacks[name])}: {describe_autoattack(attacks[name])}."
        if report.get("warnings"):
            table += "\n\nEvaluator warnings:\n" + "\n".join(f"- {w}" for w in report["warnings"])
    if library == "transformers":
        load = (
            f"```python\nfrom transformers import AutoImageProcessor, AutoModelForImageClassification\n"
            f'model = AutoModelForImageClassification.from_pretrained("{repo_id}").eval()\n'
            f'processor = AutoImageProcessor.from_pretrained("{repo_id}")  # {c}×{h}×{w}, rescale + mean/std\n'
            f'logits = model(**processor(images, return_tensors="pt")).logits\n```\n\n'
            f"With derd_scale, `teachers.natural.arch=transformers:{repo_id}` (or `derd_scale.export.load_exported` on a "
            "local copy) includes the normalisation and takes [0, 1] pixels."
        )
    elif library == "timm":
        load = (
            f'```python\nimport timm\nmodel = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()\n'
            f"cfg = timm.data.resolve_data_config({{}}, model=model)  # {c}×{h}×{w}, mean/std from config.json\n```\n\n"
            "timm's model expects normalised inputs (timm's transforms apply the mean/std). With derd_scale, "
            f'`derd_scale.export.load_exported(snapshot_download("{repo_id}"))` includes the normalisation and takes [0, 1] pixels.'
        )
    else:
        load = (
            f"`{arch}` is a derd_scale architecture (timm does not ship it), so load it with derd_scale:\n\n"
            f"```python\nfrom huggingface_hub import snapshot_download\nfrom derd_scale.export import load_exported\n\n"
            f'model = load_exported(snapshot_download("{repo_id}")).eval()  # normalisation included: feed [0, 1] pixels, {c}×{h}×{w}\n```'
        )
    return f"""
# {repo_id.split("/")[-1]}

A `{arch}` image classifier for {dataset}, distilled **without any training data** by DERD
(data-free experts-guided robustness distillation) with derd_scale. A generator turns
noise into pseudo images (Stage I, guided by the natural teacher's one-hot, activation,
BatchNorm-statistics and entropy priors); in Stage II a self-adversarial ascent turns them
into inputs on which the two frozen teachers disagree, and the student learns from both
teachers there, their gradients combined by (stochastic) gradient aggregation. Real data
was used only to evaluate.

## Distillation

- Natural teacher: {_describe_teacher(nat)}
- Robust teacher: {_describe_teacher(rob)}
- {stage1}
- {stage2}
- Student optimiser: {opt.get("name")} lr={opt.get("lr")} ({opt.get("schedule")}), seed {config.get("seed")}
- Hardware: {hardware}; {summary.get("world_size", 1)} process(es); training time {f"{seconds / 60:.1f} min" if isinstance(seconds, (int, float)) else "not recorded"}
- The full resolved configuration is `derd_config.yaml` in this repository; the evaluation report is `eval_report.json`.

## Robustness (real {dataset} `{split}` split, white-box unless noted)

{table}

## How to load

{load}
"""


def check_finite_weights(path: Path) -> None:
    """Refuse a weights file that does not read back or holds NaN/Inf (a diverged model is never published)."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                t = fh.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
                    raise RunFolderError(
                        f"{path}: tensor {name} holds {kind} values (a diverged model); refusing to publish it"
                    )
    except RunFolderError:
        raise
    except Exception as err:  # noqa: BLE001 — safetensors raises its own types for a bad file
        raise RunFolderError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())[:200]})") from None


def stage_upload(run_dir: Path, repo_id: str, target: Path, license: str = "apache-2.0") -> list[str]:
    """Write exactly the files to upload into ``target`` (new or empty); returns their names."""
    run_dir, target = Path(run_dir), Path(target)
    for name in ("config.json", "model.safetensors"):
        if not (run_dir / "student" / name).is_file():
            raise RunFolderError(f"{run_dir / 'student' / name}: not found; is the run finished?")
    check_finite_weights(run_dir / "student" / "model.safetensors")
    if target.exists() and any(target.iterdir()):
        raise RunFolderError(f"{target}: not empty; the staging folder must hold exactly the upload")
    card = build_model_card(run_dir, repo_id, license)  # before writing anything: fails leave no half folder
    target.mkdir(parents=True, exist_ok=True)
    # A transformers student also carries its image processor's config.
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        if name != "preprocessor_config.json" or (run_dir / "student" / name).is_file():
            shutil.copy2(run_dir / "student" / name, target / name)
    shutil.copy2(run_dir / "config.yaml", target / "derd_config.yaml")
    if (run_dir / "eval" / "report.json").exists():
        shutil.copy2(run_dir / "eval" / "report.json", target / "eval_report.json")
    (target / "README.md").write_text(card)
    return sorted(p.name for p in target.iterdir())


def push_to_hub(
    run_dir: Path,
    repo_id: str,
    private: bool = False,
    revision: Optional[str] = None,
    license: str = "apache-2.0",
    commit_message: Optional[str] = None,
) -> str:
    """Create the repo (if needed), the branch ``revision`` (if given), and upload the staged
    files in one commit; returns the commit URL.

    One explicit ``create_commit`` rather than ``upload_folder``: recent huggingface_hub
    versions may split a folder upload into several commits, and a model card must never
    be live beside the previous revision's weights.
    """
    import tempfile

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()  # token: the standard login / HF_TOKEN, resolved inside huggingface_hub
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "upload"
        files = stage_upload(run_dir, repo_id, staged, license)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.create_commit(
            repo_id,
            [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(staged / name)) for name in files],
            commit_message=commit_message or f"derd_scale: upload distilled student ({', '.join(files)})",
            repo_type="model",
            revision=revision,
        )
    return str(getattr(info, "commit_url", info))
