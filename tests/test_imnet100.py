"""The main target (ImageNet-100, ViT-S teachers → ViT-T student) at CPU scale."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from derd_scale.config import load_config
from derd_scale.data import dataset_info
from derd_scale.teachers import model_from_config

REPO = Path(__file__).resolve().parent.parent
OFFLINE_TEACHERS = [
    # the real config's hub teachers, as random-init timm models of the same size
    "teachers.natural.arch=vit_small_patch16_224",
    "teachers.natural.pretrained=false",
    "teachers.robust.arch=vit_small_patch16_224",
]


def test_real_config_validates_and_builds_every_model():
    from derd_scale.trainer import build_models

    cfg = load_config(REPO / "configs" / "imnet100_vit.yaml", OFFLINE_TEACHERS)
    models = build_models(cfg)
    assert models.info.num_classes == 100 and models.info.image_size == 224
    x = models.generator(*models.generator.sample(2, torch.Generator().manual_seed(0)))
    assert x.shape == (2, 3, 224, 224)
    with torch.no_grad():
        for m in (models.natural_teacher, models.robust_teacher, models.student):
            assert m(x).shape == (2, 100)
    # class subset: the natural teacher has a 1000-way head restricted to the 100 wnids
    assert models.natural_teacher.model.get_classifier().out_features == 1000
    assert models.student.model.get_classifier().out_features == 100
    assert sum(p.numel() for p in models.student.parameters()) < 6e6  # ViT-T
    assert sum(p.numel() for p in models.natural_teacher.parameters()) > 20e6  # ViT-S


def test_class_subset_gives_exactly_those_logits_in_dataset_order():
    from timm.data import ImageNetInfo

    from derd_scale.config import ModelConfig

    info = dataset_info("imagenet100")
    mcfg = ModelConfig(
        arch="vit_tiny_patch16_224", class_subset="imagenet100", kwargs={"img_size": 32, "patch_size": 16, "depth": 1}
    )
    teacher = model_from_config(mcfg, info).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        full = teacher.model(teacher.normalize(x))  # 1000 logits
        sub = teacher(x)
    wnids = ImageNetInfo().label_names()
    order = [wnids.index(w) for w in info.class_names]
    assert full.shape == (3, 1000) and sub.shape == (3, 100)
    assert torch.equal(sub, full[:, order])
    assert info.class_names[0] == "n02869837"  # dataset order, not ImageNet-1k order
    assert order != sorted(order)


@pytest.mark.slow
def test_tiny_twin_runs_both_stages_under_accelerate_launch(tmp_path, shared_data):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate, "accelerate CLI not installed"
    cmd = [
        accelerate,
        "launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO / "launch" / "train.py"),
        "--config",
        str(REPO / "configs" / "imnet100_vit_tiny.yaml"),
        "--set",
        f"output.root={tmp_path}",
        "--set",
        f"data.path={shared_data}",
        "--set",
        "logging.progress_bar=false",
    ]
    env = dict(os.environ, ACCELERATE_USE_CPU="true")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "imnet100_vit_tiny"
    assert (run / "DONE").exists() and (run / "student" / "model.safetensors").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    s2 = [r for r in records if r["stage"] == "stage2"]
    assert {r["stage"] for r in records} == {"stage1", "stage2"}
    # Each step's KL to the robust teacher is measured on a fresh pseudo batch before the
    # update, i.e. held out: it must fall over the run.
    assert s2[-1]["l_2"] < s2[0]["l_2"]
    report = json.loads((run / "eval" / "report.json").read_text())
    assert "clean" in json.dumps(report)


@pytest.mark.slow
def test_one_real_size_stage2_step_at_batch_2():
    from accelerate import Accelerator

    from derd_scale.state import TrainState
    from derd_scale.trainer import build_training, stage2_step

    cfg = load_config(
        REPO / "configs" / "imnet100_vit.yaml",
        OFFLINE_TEACHERS + ["stage2.batch_size=2", "stage2.sa.chunk_size=2", "distributed.mixed_precision=no"],
    )
    models, par, scheds, _ = build_training(cfg, Accelerator(cpu=True))
    before = [p.detach().clone() for p in models.student.parameters()]
    metrics = stage2_step(models, cfg, TrainState(stage="stage2"), scheds, par)
    assert all(torch.isfinite(torch.tensor(float(v))) for k, v in metrics.items() if isinstance(v, (int, float)))
    assert any(not torch.equal(a, b) for a, b in zip(before, models.student.parameters()))
