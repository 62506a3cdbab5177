"""Model card and push path, with huggingface_hub's HTTP calls replaced."""

import json

import pytest
import yaml

from derd_scale.export import export_model
from derd_scale.hub import build_model_card, push_to_hub, stage_upload
from derd_scale.models import create_model


@pytest.fixture
def finished_run(tmp_path):
    from derd_scale.config import RunConfig, save_config

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    cfg = RunConfig()
    cfg.teachers.natural.arch = "timm:vit_small_patch16_224.augreg_in21k_ft_in1k"
    save_config(cfg, run / "config.yaml")
    export_model(create_model("resnet20", 10), run / "student", "resnet20", 10, 3, 32)
    report = {"attacks": {
        "clean": {"accuracy": 0.7283, "n": 1000, "eps": 0.0314, "alpha": 0.0078, "steps": 10, "seconds": 1.0},
        "pgd_s": {"accuracy": 0.5364, "n": 1000, "eps": 0.0314, "alpha": 0.0078, "steps": 10, "seconds": 9.0},
        "aa": {"accuracy": 0.3603, "n": 1000, "eps": 0.0314, "alpha": 0.0078, "steps": 10, "seconds": 99.0},
    }, "warnings": ["suspected gradient masking: PGD_S exceeds AutoAttack"]}
    (run / "eval" / "report.json").write_text(json.dumps(report))
    (run / "DONE").write_text(json.dumps({"train_seconds": 600, "world_size": 1}))
    return run, report


def test_model_card_parses_back_with_the_eval_results(finished_run):
    from huggingface_hub import ModelCard

    run, report = finished_run
    card = ModelCard(build_model_card(run, "me/derd-resnet20"))
    data = card.data
    assert data.library_name == "derd_scale" and "adversarial-robustness" in data.tags
    assert data.datasets == ["uoft-cs/cifar10"]
    assert data.base_model == ["timm/vit_small_patch16_224.augreg_in21k_ft_in1k"]
    got = {r.metric_name: r.metric_value for r in data.eval_results}
    assert got == {"Clean accuracy": 72.83, "PGD_S (Madry, CE)": 53.64, "AutoAttack (standard)": 36.03}
    assert all("n=1000" in r.metric_config for r in data.eval_results)
    assert "load_exported" in card.text and "gradient masking" in card.text
    front = yaml.safe_load(str(card).split("---")[1])
    assert front["model-index"][0]["results"]


def test_dry_run_writes_exactly_the_upload(finished_run, tmp_path):
    run, _ = finished_run
    files = stage_upload(run, "me/x", tmp_path / "up")
    assert files == ["README.md", "config.json", "derd_config.yaml", "eval_report.json", "model.safetensors"]


def test_push_calls_the_hub_with_repo_files_and_message(finished_run, monkeypatch):
    from huggingface_hub import HfApi

    run, _ = finished_run
    calls = {}

    def fake_create_repo(self, repo_id, **kw):
        calls["create_repo"] = (repo_id, kw)

    def fake_upload_folder(self, *, repo_id, folder_path, revision=None, commit_message=None, **kw):
        import os

        calls["upload"] = (repo_id, sorted(os.listdir(folder_path)), revision, commit_message)

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"

        return Info()

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    url = push_to_hub(run, "me/derd-resnet20", private=True)
    assert calls["create_repo"] == ("me/derd-resnet20", {"private": True, "exist_ok": True, "repo_type": "model"})
    repo, files, revision, message = calls["upload"]
    assert repo == "me/derd-resnet20" and "model.safetensors" in files and "README.md" in files and revision is None
    assert message.startswith("derd_scale: upload distilled student")
    assert url.endswith("/commit/abc")
    for path in run.rglob("*"):
        if path.is_file():
            assert b"hf_secret_token_value" not in path.read_bytes()
