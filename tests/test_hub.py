"""Model card and push path, with huggingface_hub's commit call replaced at the HTTP boundary."""

import json

import pytest
import yaml

from derd_scale.export import export_model
from derd_scale.hub import ATTACK_ARGS, RunFolderError, build_model_card, push_to_hub, stage_upload
from derd_scale.models import create_model

P = {
    "eps": 0.0314,
    "alpha": 0.0078,
    "steps": 10,
    "restarts": 1,
    "cw_kappa": 0.0,
    "square_queries": 5000,
    "batch_size": 512,
}
REPORT = {
    "protocol": {"name": "cifar", **P},
    "n": 1000,
    "attacks": {
        "clean": {"accuracy": 0.7283, "correct": 7283, "n": 1000, "seconds": 1.0, **P},
        "fgsm": {"accuracy": 0.6232, "correct": 6232, "n": 1000, "seconds": 2.0, **P},
        "pgd_s": {"accuracy": 0.5364, "correct": 5364, "n": 1000, "seconds": 9.0, **P},
        "pgd_s_2x": {"accuracy": 0.5312, "correct": 5312, "n": 1000, "seconds": 18.0, **P},
        "aa": {"accuracy": 0.3603, "correct": 3603, "n": 1000, "seconds": 99.0, **P},
    },
    "warnings": ["suspected gradient masking: PGD_S exceeds AutoAttack"],
}


@pytest.fixture
def finished_run(tmp_path):
    from derd_scale.config import RunConfig, save_config

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    cfg = RunConfig()
    cfg.teachers.natural.arch = "timm:vit_small_patch16_224"
    cfg.teachers.natural.class_subset = "imagenet100"
    save_config(cfg, run / "config.yaml")
    export_model(create_model("resnet20", 10), run / "student", "resnet20", 10, 3, 32)
    (run / "eval" / "report.json").write_text(json.dumps(REPORT))
    (run / "DONE").write_text(json.dumps({"train_seconds": 600, "world_size": 1, "hardware": "1× CPU (test)"}))
    return run


def test_model_card_eval_results_equal_the_evaluation_json(finished_run, tmp_path):
    from huggingface_hub import ModelCard

    stage_upload(finished_run, "me/derd-resnet20", tmp_path / "up")
    card = ModelCard.load(tmp_path / "up" / "README.md")  # parses the front matter back
    results = card.data.eval_results
    assert [r.metric_config for r in results] == list(REPORT["attacks"])  # one metric per column, in order
    for r in results:
        entry = REPORT["attacks"][r.metric_config]
        assert r.metric_value == round(100 * entry["accuracy"], 2)
        assert (
            r.task_type == "image-classification" and r.dataset_type == "uoft-cs/cifar10" and r.dataset_split == "test"
        )
        want = {k: entry[k] for k in ATTACK_ARGS[r.metric_config]}
        if r.metric_config == "pgd_s_2x":
            want["steps"] = 20  # the evaluator runs 2× the protocol's steps
        if r.metric_config != "clean":
            want["norm"] = "Linf"
        assert r.metric_args == want
    assert "steps" not in results[1].metric_args  # FGSM is one step of ε, whatever the protocol says


def test_model_card_front_matter_and_body(finished_run):
    from huggingface_hub import ModelCard

    card = ModelCard(build_model_card(finished_run, "me/derd-resnet20"))
    data = card.data
    # resnet20 is derd_scale's own net: timm cannot build it, so the card must not claim timm.
    assert data.library_name == "derd_scale" and data.license == "apache-2.0"
    assert {"adversarial-robustness", "knowledge-distillation", "data-free"} <= set(data.tags)
    assert data.datasets == ["uoft-cs/cifar10"]
    # timm:NAME resolves to the Hub repo of its default pretrained tag, offline.
    assert data.base_model == ["timm/vit_small_patch16_224.augreg_in21k_ft_in1k"]
    front = yaml.safe_load(str(card).split("---")[1])
    assert front["model-index"][0]["name"] == "derd-resnet20"
    text = card.text
    assert "load_exported" in text and "gradient masking" in text and "1× CPU (test)" in text and "10.0 min" in text
    assert "restricted to `imagenet100`" in text


def test_timm_student_card_says_timm_and_how_to_load(finished_run):
    from huggingface_hub import ModelCard

    vit = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 48, "num_heads": 3}
    export_model(
        create_model("vit_tiny_patch16_224", 10, **vit),
        finished_run / "student",
        "vit_tiny_patch16_224",
        10,
        3,
        32,
        model_kwargs=vit,
    )
    card = ModelCard(build_model_card(finished_run, "me/derd-vit"))
    assert card.data.library_name == "timm"
    assert 'timm.create_model("hf-hub:me/derd-vit", pretrained=True)' in card.text


def test_card_without_report_and_with_a_broken_report(finished_run):
    from huggingface_hub import ModelCard

    (finished_run / "eval" / "report.json").unlink()
    card = ModelCard(build_model_card(finished_run, "me/x"))
    assert not card.data.eval_results and "No evaluation report" in card.text
    (finished_run / "eval" / "report.json").write_text(json.dumps({"attacks": {"clean": {"accuracy": 72.8}}}))
    with pytest.raises(RunFolderError, match=r"attacks.clean.accuracy must be a number in \[0, 1\], got 72.8"):
        build_model_card(finished_run, "me/x")


def _push_cli(argv, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "launch" / "push_to_hub.py"
    spec = importlib.util.spec_from_file_location("push_to_hub_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_dry_run_writes_exactly_the_upload(finished_run, tmp_path, capsys):
    files = stage_upload(finished_run, "me/x", tmp_path / "up")
    assert files == ["README.md", "config.json", "derd_config.yaml", "eval_report.json", "model.safetensors"]
    with pytest.raises(RunFolderError, match="not empty"):
        stage_upload(finished_run, "me/x", tmp_path / "up")
    code, out, err = _push_cli(
        ["--model", str(finished_run), "--repo-id", "me/x", "--dry-run", str(tmp_path / "cli")], capsys
    )
    assert code == 0 and "dry run: wrote README.md" in out
    code, out, err = _push_cli(
        ["--model", str(finished_run), "--repo-id", "justaname", "--dry-run", str(tmp_path / "cli2")], capsys
    )
    assert code == 2 and "expected ORG/NAME" in err


def test_a_done_that_is_not_json_is_one_line(finished_run, tmp_path, capsys):
    (finished_run / "DONE").write_text('{"train_seconds": 6')  # a DONE torn mid-write
    code, out, err = _push_cli(
        ["--model", str(finished_run), "--repo-id", "me/x", "--dry-run", str(tmp_path / "cli")], capsys
    )
    lines = err.strip().splitlines()
    assert (
        code == 2 and len(lines) == 1 and lines[0].endswith("DONE: not valid JSON (Expecting ',' delimiter at line 1)")
    )
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize("revision", [None, "v1"])
def test_push_sends_the_dry_run_files_in_one_commit(finished_run, tmp_path, monkeypatch, capsys, revision):
    """create_repo / create_branch / create_commit are huggingface_hub's HTTP calls (create_commit
    does the LFS/xet pre-upload and the commit); the fakes record what would go over the wire."""
    from huggingface_hub import HfApi

    calls = []

    def fake_create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))

    def fake_create_branch(self, repo_id, *, branch, **kw):
        calls.append(("create_branch", repo_id, branch))

    def fake_create_commit(self, repo_id, operations, *, commit_message, revision=None, repo_type=None, **kw):
        sent = {}
        for op in operations:
            with op.as_file() as fh:  # how huggingface_hub itself reads an operation's bytes
                sent[op.path_in_repo] = fh.read()
        calls.append(("create_commit", repo_id, sent, commit_message, revision, repo_type))

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"

        return Info()

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_branch", fake_create_branch)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    url = push_to_hub(finished_run, "me/derd-resnet20", private=True, revision=revision)
    assert url.endswith("/commit/abc")
    assert calls[0] == ("create_repo", "me/derd-resnet20", {"private": True, "exist_ok": True, "repo_type": "model"})
    if revision:
        assert calls[1] == ("create_branch", "me/derd-resnet20", "v1")
    name, repo, sent, message, rev, repo_type = calls[-1]
    assert name == "create_commit" and repo == "me/derd-resnet20" and rev == revision and repo_type == "model"
    assert [c[0] for c in calls] == ["create_repo"] + (["create_branch"] if revision else []) + ["create_commit"]
    assert (
        message
        == "derd_scale: upload distilled student (README.md, config.json, derd_config.yaml, eval_report.json, model.safetensors)"
    )
    # Exactly what --dry-run writes, byte for byte.
    stage_upload(finished_run, "me/derd-resnet20", tmp_path / "dry")
    assert sent == {p.name: p.read_bytes() for p in (tmp_path / "dry").iterdir()}
    assert all(b"hf_secret_token_value" not in blob for blob in sent.values())
    for path in finished_run.rglob("*"):
        if path.is_file():
            assert b"hf_secret_token_value" not in path.read_bytes()
    assert "hf_secret_token_value" not in capsys.readouterr().out


def test_card_names_the_protocol_and_the_autoattack_budgets(finished_run):
    from huggingface_hub import ModelCard

    from derd_scale.evaluation.autoattack import STANDARD, fast_budgets

    card = ModelCard(build_model_card(finished_run, "me/x"))  # REPORT predates the record: no claim of "standard"
    assert "AutoAttack (version not recorded)" in card.text and "AutoAttack (standard)" not in card.text
    assert "Protocol `cifar`: L∞ ε = 0.0314" in card.text and "10 steps, 1 restart(s)" in card.text
    report = json.loads((finished_run / "eval" / "report.json").read_text())
    report["attacks"]["aa"]["autoattack"] = STANDARD.as_dict(10)
    report["attacks"]["aa"]["ci95"] = [0.3309, 0.3906]
    report["attacks"]["aa_fast"] = {**report["attacks"]["aa"], "accuracy": 0.37, "autoattack": fast_budgets(10)}
    (finished_run / "eval" / "report.json").write_text(json.dumps(report))
    card = ModelCard(build_model_card(finished_run, "me/x"))
    text = card.text
    assert "| AutoAttack (standard) | 36.03 | [33.1, 39.1] |" in text
    assert (
        "APGD-CE 100 iterations × 1 restart (ρ = 0.75), APGD-T 100 iterations × 9 target classes, FAB-T 100 iterations × 9 target classes, Square 5000 queries"
        in text
    )
    assert "aa_fast (torchattacks AutoAttack defaults, 10 iterations; not the standard AutoAttack)" in text
    args = {r.metric_config: r.metric_args for r in card.data.eval_results}
    assert (
        args["aa"]["aa_version"] == "standard"
        and args["aa"]["aa_apgd_steps"] == 100
        and args["aa"]["aa_square_queries"] == 5000
    )
    assert args["aa_fast"]["aa_apgd_steps"] == 10
