"""Teacher training: each objective runs, a killed run resumes to the same weights."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent


def _cmd(out, shared_data, method="pgd", epochs=2):
    settings = [
        "data.name=fashion_mnist",
        "data.source=parquet",
        f"data.path={shared_data}",
        "model.arch=small_cnn",
        "model.kwargs={width: 4}",
        f"method={method}",
        "eps=0.1",
        "alpha=0.05",
        "attack_steps=2",
        f"epochs={epochs}",
        "batch_size=64",
        "max_train_examples=256",
        "eval_examples=64",
        "eval_steps=2",
        "optim.lr=0.05",
        "progress=false",
    ]
    return [
        sys.executable,
        str(REPO / "launch" / "train_teacher.py"),
        *(a for s in settings for a in ("--set", s)),
        "--out",
        str(out),
    ]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_killed_teacher_run_resumes_to_the_same_weights(tmp_path, shared_data):
    straight = subprocess.run(_cmd(tmp_path / "a", shared_data), capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    env = dict(os.environ, DERD_SIMULATE_PREEMPTION="teacher:1")
    killed = subprocess.run(_cmd(tmp_path / "b", shared_data), capture_output=True, text=True, timeout=600, env=env)
    assert killed.returncode != 0 and "simulated preemption" in killed.stderr
    env.pop("DERD_SIMULATE_PREEMPTION")
    resumed = subprocess.run(_cmd(tmp_path / "b", shared_data), capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0 and "resumed" in resumed.stdout + resumed.stderr
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "b" / "metrics.json").exists()


@pytest.mark.parametrize("method", ["ce", "trades"])
def test_objectives_run_and_export_a_teacher_source(tmp_path, shared_data, method):
    from derd_scale.config import DataConfig, ModelConfig, OptimizerConfig
    from derd_scale.data import dataset_info
    from derd_scale.teacher_training import TeacherTrainConfig, train_teacher
    from derd_scale.teachers import model_from_config

    cfg = TeacherTrainConfig(
        data=DataConfig(name="fashion_mnist", source="parquet", path=str(shared_data)),
        model=ModelConfig(arch="small_cnn", kwargs={"width": 4}),
        method=method,
        eps=0.1,
        alpha=0.05,
        attack_steps=2,
        epochs=1,
        batch_size=64,
        max_train_examples=128,
        eval_examples=32,
        eval_steps=2,
        optim=OptimizerConfig(lr=0.05),
        out=str(tmp_path / method),
        progress=False,
    )
    metrics = train_teacher(cfg)
    assert 0.0 <= metrics["pgd_s"] <= metrics["clean"] <= 1.0 and metrics["n"] == 32
    from derd_scale.config import load_config

    assert (
        load_config(tmp_path / method / "teacher_config.yaml", cls=TeacherTrainConfig) == cfg
    )  # the resolved config beside the export
    teacher = model_from_config(ModelConfig(arch=f"local-dir:{tmp_path / method}"), dataset_info("fashion_mnist"))
    assert teacher(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def _teacher_cli(argv, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_teacher_cli", REPO / "launch" / "train_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_method_and_kwargs_are_rejected():
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "train_teacher.py"), "--set", "method=madry", "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert (
        out.returncode == 2
        and out.stderr.strip() == "config error: method: invalid value 'madry'; allowed: ce, pgd, trades, fgsm_rs"
    )
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "train_teacher.py"), "--set", "model.kwargs={width:16}", "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.strip().startswith("config error: model.kwargs: 'width:16' has no value")


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--set", "epochz=1", "--out", "x"],
            r"^config error: epochz: unknown key; allowed: data, model, method, eps, alpha, attack_steps",
        ),
        (
            ["--set", "optim.lrr=0.1", "--out", "x"],
            r"^config error: optim\.lrr: unknown key; allowed: name, lr, momentum",
        ),
        (["--set", "epochs=0", "--out", "x"], r"^config error: epochs: must be > 0, got 0$"),
        (["--set", "epochs=two", "--out", "x"], r"^config error: epochs: expected an integer, got 'two'$"),
        (
            ["--set", "augment=crop", "--out", "x"],
            r"^config error: augment: invalid value 'crop'; allowed: auto, none, flip_crop, resized_crop$",
        ),
        (
            ["--set", "method=pgd", "--set", "eps=0", "--out", "x"],
            r"^config error: eps: must be > 0 for adversarial training",
        ),
        (["--set", "eps=8", "--out", "x"], r"^config error: eps: must be in \[0, 1\] \(pixel units\), got 8\.0$"),
        (
            ["--set", "eval_examples=0", "--out", "x"],
            r"^config error: eval_examples: must be > 0, or null for the whole split, got 0$",
        ),
        (["--set", "optim.lr=0", "--out", "x"], r"^config error: optim\.lr: must be > 0, got 0\.0$"),
        (["--set", "method=pgd"], r"^config error: out: required: the output \(export\) folder$"),
        (["--config", "nowhere.yaml", "--out", "x"], r"^config error: config file not found: nowhere\.yaml$"),
    ],
)
def test_cli_errors_are_one_line_naming_the_key(capsys, argv, message):
    import re

    code, out, err = _teacher_cli(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_cli_print_schema_lists_every_key(capsys):
    from derd_scale.config import schema_lines
    from derd_scale.teacher_training import TeacherTrainConfig

    code, out, err = _teacher_cli(["--print-schema"], capsys)
    assert code == 0
    keys = [line.split()[0] for line in out.splitlines()]
    assert keys == [line.split()[0] for line in schema_lines(TeacherTrainConfig)]
    for key in (
        "data.name",
        "data.path",
        "model.arch",
        "model.kwargs",
        "method",
        "eps",
        "alpha",
        "attack_steps",
        "beta",
        "epochs",
        "batch_size",
        "optim.name",
        "optim.lr",
        "optim.weight_decay",
        "augment",
        "max_train_examples",
        "eval_examples",
        "eval_steps",
        "eval_alpha",
        "workers",
        "seed",
        "out",
        "progress",
    ):
        assert key in keys, key
    assert any(
        line.split()[0] == "model.arch" and "'small_cnn'" in line for line in out.splitlines()
    )  # the field's own default


def test_yaml_and_set_round_trip_and_the_shipped_teacher_configs(tmp_path, capsys):
    import yaml

    from derd_scale.config import load_config
    from derd_scale.teacher_training import TeacherTrainConfig

    (tmp_path / "t.yaml").write_text(
        "data: {name: fashion_mnist}\nmodel: {arch: small_cnn, kwargs: {width: 8}}\nmethod: trades\nbeta: 3\noptim: {lr: 0.05}\n"
    )
    code, out, err = _teacher_cli(
        [
            "--config",
            str(tmp_path / "t.yaml"),
            "--set",
            "beta=1.5",
            "--set",
            "model.kwargs.width=4",
            "--set",
            "optim.name=adamw",
            "--out",
            str(tmp_path / "o"),
            "--print-config",
        ],
        capsys,
    )
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["method"] == "trades" and resolved["beta"] == 1.5 and resolved["model"]["kwargs"] == {"width": 4}
    assert resolved["optim"] == {**resolved["optim"], "name": "adamw", "lr": 0.05, "momentum": 0.9} and resolved[
        "out"
    ] == str(tmp_path / "o")
    assert (
        resolved["model"]["arch"] == "small_cnn"
        and resolved["eps"] == 8 / 255
        and resolved["data"]["name"] == "fashion_mnist"
    )
    (tmp_path / "resolved.yaml").write_text(out)
    assert load_config(tmp_path / "resolved.yaml", cls=TeacherTrainConfig) == load_config(
        tmp_path / "t.yaml",
        ["beta=1.5", "model.kwargs.width=4", "optim.name=adamw", f"out={tmp_path / 'o'}"],
        cls=TeacherTrainConfig,
    )
    for name, method in (("fmnist_natural", "ce"), ("fmnist_pgd", "pgd")):  # the committed teachers' recipe
        cfg = load_config(REPO / "configs" / "teachers" / f"{name}.yaml", ["out=x"], cls=TeacherTrainConfig)
        assert (
            cfg.method == method
            and cfg.model.kwargs == {"width": 16}
            and cfg.eps == 0.1
            and cfg.alpha == 0.025
            and cfg.eval_examples is None
        )


VIT_FM = {"img_size": 28, "patch_size": 7, "depth": 1, "embed_dim": 24, "num_heads": 2, "drop_rate": 0.2}


class _Preempted(Exception):
    pass


def _vit_cfg(shared_data, out, **kw):
    from derd_scale.config import DataConfig, ModelConfig, OptimizerConfig
    from derd_scale.teacher_training import TeacherTrainConfig

    base = dict(
        data=DataConfig(name="fashion_mnist", source="parquet", path=str(shared_data)),
        model=ModelConfig(arch="vit_tiny_patch16_224", kwargs=VIT_FM),
        method="pgd",
        eps=0.1,
        alpha=0.05,
        attack_steps=2,
        epochs=2,
        batch_size=32,
        max_train_examples=96,
        eval_examples=32,
        eval_steps=2,
        optim=OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.05),
        out=str(out),
        progress=False,
    )
    return TeacherTrainConfig(**{**base, **kw})


def test_in_process_resume_is_exact_with_dropout_and_refuses_changed_settings(tmp_path, shared_data, monkeypatch):
    """A ViT with dropout (global RNG) and PGD-AT (per-epoch generator): stop after epoch 1,
    resume, and land on the uninterrupted run's weights bit for bit."""
    import derd_scale.checkpoint as checkpoint
    from derd_scale.teacher_training import train_teacher

    straight = train_teacher(_vit_cfg(shared_data, tmp_path / "a"))

    def preempt(stage, step):
        if stage == "teacher" and step == 1:
            raise _Preempted()

    monkeypatch.setattr(checkpoint, "maybe_simulate_preemption", preempt)
    with pytest.raises(_Preempted):
        train_teacher(_vit_cfg(shared_data, tmp_path / "b"))
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    with pytest.raises(ValueError, match="different method, beta"):
        train_teacher(_vit_cfg(shared_data, tmp_path / "b", method="trades", beta=1.0))
    monkeypatch.undo()
    resumed = train_teacher(_vit_cfg(shared_data, tmp_path / "b", eval_examples=16))  # evaluation size may change
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["n"] == 16 and straight["n"] == 32
    log = [json.loads(line) for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[1]["train_seconds"] > log[0]["train_seconds"]


def _tiny_imagenet100(root):
    """One small image of a random size per ImageNet-100 class and split, as an image folder."""
    import numpy as np
    from PIL import Image

    from derd_scale.data import dataset_info

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for wnid in dataset_info("imagenet100").class_names:
            (root / split / wnid).mkdir(parents=True)
            h, w = rng.integers(20, 48, size=2)
            Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(root / split / wnid / "0.png")


def test_streamed_imagenet_size_training_with_a_class_subset_head(tmp_path):
    """Large images take the streamed path (DataLoader workers, random-resized crops); a
    1000-class head restricted to ImageNet-100 trains and exports as a plain 100-class model."""
    from derd_scale.config import DataConfig, ModelConfig, OptimizerConfig
    from derd_scale.data import dataset_info
    from derd_scale.teacher_training import TeacherTrainConfig, train_teacher
    from derd_scale.teachers import model_from_config

    _tiny_imagenet100(tmp_path / "data")
    vit = {"img_size": 224, "patch_size": 32, "depth": 1, "embed_dim": 24, "num_heads": 2}
    cfg = TeacherTrainConfig(
        data=DataConfig(name="imagenet100", source="imagefolder", path=str(tmp_path / "data")),
        model=ModelConfig(arch="vit_tiny_patch16_224", class_subset="imagenet100", kwargs=vit),
        method="ce",
        epochs=1,
        batch_size=8,
        max_train_examples=16,
        eval_examples=8,
        eval_steps=1,
        eps=0.03,
        alpha=0.03,
        workers=1,
        optim=OptimizerConfig(name="adamw", lr=1e-4, weight_decay=0.05),
        out=str(tmp_path / "vit"),
        progress=False,
    )
    metrics = train_teacher(cfg)
    assert metrics["n"] == 8
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert (
        config["num_classes"] == 100
        and config["model_args"]["num_classes"] == 100
        and config["label_names"][0] == "n02869837"
    )
    teacher = model_from_config(ModelConfig(arch=f"local-dir:{tmp_path / 'vit'}"), dataset_info("imagenet100"))
    assert teacher(torch.rand(1, 3, 224, 224)).shape == (1, 100)


def test_streamed_crops_depend_only_on_seed_epoch_and_index():
    from derd_scale.teacher_training import _StreamedEpoch

    class Images:
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return torch.rand(3, 30 + i, 40, generator=g), i

    order = torch.tensor([3, 1, 2])
    a = _StreamedEpoch(Images(), order, 16, True, seed=0, epoch=0)
    b = _StreamedEpoch(Images(), torch.tensor([2, 3]), 16, True, seed=0, epoch=0)  # another rank / after resume
    c = _StreamedEpoch(Images(), order, 16, True, seed=0, epoch=1)
    assert a[0][0].shape == (3, 16, 16) and 0 <= a[0][0].min() and a[0][0].max() <= 1
    assert torch.equal(a[0][0], b[1][0]) and torch.equal(a[2][0], b[0][0])
    assert not torch.equal(a[0][0], c[0][0])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_two_process_ddp_adversarial_training_runs(tmp_path, shared_data, method):
    """Under DDP the attacks take input gradients only (no reducer hooks fire) and TRADES makes
    two forwards per backward; both must run through accelerate launch."""
    env = dict(os.environ, ACCELERATE_USE_CPU="true")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *_cmd(tmp_path / method, shared_data, method=method, epochs=1)[1:],
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / method / "metrics.json").read_text())["n"] == 64


class _SumModel(torch.nn.Module):
    """f(x) = [0, Σx]: with y = 0, CE = softplus(Σx) and ∂CE/∂x > 0 everywhere; keeps its last input."""

    def forward(self, x):
        self.last = x.detach()
        return torch.stack([torch.zeros(len(x)), x.flatten(1).sum(1)], 1)


def _fgsm_rs(x, eps, alpha, seed):
    """teacher_loss with method fgsm_rs (attack_steps=10 must not matter); → (loss, x')."""
    from derd_scale.teacher_training import TeacherTrainConfig, teacher_loss

    cfg = TeacherTrainConfig(method="fgsm_rs", eps=eps, alpha=alpha, attack_steps=10, out="unused")
    model = _SumModel()
    loss = teacher_loss(model, x, torch.zeros(len(x), dtype=torch.long), cfg, torch.Generator().manual_seed(seed))
    return loss, model.last  # the last forward is the update's, on x'


def test_fgsm_rs_is_one_signed_step_from_a_uniform_start_clipped_to_the_ball_and_the_image():
    """Wong et al.'s train_fgsm.py: δ₀ ~ U(−ε, ε) cut so that x + δ₀ ∈ [0, 1], δ = clip_ε(δ₀ + α·sign ∇),
    x' = clip_[0, 1](x + δ); the gradient is positive here, so the step is +α. One step, whatever
    attack_steps says."""
    # α ≥ 2ε: +ε from any start, and [0, 1] cuts the bright pixel: x' = [0.55, 1.0], CE = softplus(1.55).
    loss, x_adv = _fgsm_rs(torch.tensor([[[[0.5, 0.98]]]]), 0.05, 0.1, 0)
    assert torch.allclose(x_adv, torch.tensor([[[[0.55, 1.0]]]]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(1.55)), rel=1e-6)
    # α < ε: the start counts. It is the generator's first draw u: x + (2u − 1)ε, cut to [0, 1].
    x = torch.rand(4, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    start = (x + (2 * u - 1) * 0.1).clamp(0.0, 1.0)
    expected = torch.minimum(start + 0.01, x + 0.1).clamp(0.0, 1.0)  # 10 steps would reach x + ε
    loss, x_adv = _fgsm_rs(x, 0.1, 0.01, 2)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    assert loss.item() == pytest.approx(F.softplus(expected.flatten(1).sum(1)).mean().item(), rel=1e-5)


def _early_cfg(shared_data, out, **kw):
    from derd_scale.config import DataConfig, ModelConfig, OptimizerConfig
    from derd_scale.teacher_training import TeacherTrainConfig

    base = dict(
        data=DataConfig(name="fashion_mnist", source="parquet", path=str(shared_data)),
        model=ModelConfig(arch="small_cnn", kwargs={"width": 4}),
        method="fgsm_rs",
        eps=0.1,
        alpha=0.125,
        epochs=6,
        batch_size=32,
        max_train_examples=96,
        val_examples=32,
        patience=2,
        eval_examples=16,
        eval_steps=1,
        eval_alpha=0.025,
        optim=OptimizerConfig(name="sgd", lr=0.05),
        out=str(out),
        progress=False,
    )
    return TeacherTrainConfig(**{**base, **kw})


def test_early_stopping_exports_the_best_held_out_epoch_and_resumes_after_a_kill(tmp_path, shared_data, monkeypatch):
    """Held-out PGD accuracy scripted as .3, .4, .2, .1, … (the shape of catastrophic overfitting):
    with patience 2 the run stops after epoch 4 and exports epoch 2's weights; killed after epoch 3
    and resumed, it stops at the same epoch with the same export (and never trains epoch 5)."""
    import derd_scale.checkpoint as checkpoint
    import derd_scale.teacher_training as tt

    scripted = [0.3, 0.4, 0.2, 0.1, 0.05, 0.05]
    weights_at: dict = {}

    def fake_held_out(model, x_u8, y, cfg, epoch, device):
        assert len(y) == 32 and x_u8.dtype == torch.uint8  # the last 32 of the 96 training images
        # the export holds the bare backbone's tensors (no "model." prefix of the normalising wrapper)
        weights_at[(cfg.out, epoch + 1)] = {k.removeprefix("model."): v.clone() for k, v in model.state_dict().items()}
        return 0.5, scripted[epoch]

    monkeypatch.setattr(tt, "held_out_accuracy", fake_held_out)
    straight = tt.train_teacher(_early_cfg(shared_data, tmp_path / "a"))
    assert (straight["best_epoch"], straight["val_pgd_s"], straight["stopped"]) == (2, 0.4, True)
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4] and [r["val_pgd_s"] for r in log] == scripted[:4]
    best = weights_at[(str(tmp_path / "a"), 2)]
    a = _weights(tmp_path / "a")
    assert all(torch.equal(a[k], best[k]) for k in a) and not all(
        torch.equal(a[k], weights_at[(str(tmp_path / "a"), 4)][k]) for k in a
    )
    assert json.loads((tmp_path / "a" / "config.json").read_text())["derd_scale"]["training"]["train_examples"] == 64

    def preempt(stage, step):
        if stage == "teacher" and step == 3:
            raise _Preempted()

    monkeypatch.setattr(checkpoint, "maybe_simulate_preemption", preempt)
    with pytest.raises(_Preempted):
        tt.train_teacher(_early_cfg(shared_data, tmp_path / "b"))
    monkeypatch.setattr(checkpoint, "maybe_simulate_preemption", lambda stage, step: None)
    with pytest.raises(ValueError, match="different patience"):
        tt.train_teacher(_early_cfg(shared_data, tmp_path / "b", patience=3))
    # the held-out PGD picks the epoch and stops the run: its settings cannot change either
    with pytest.raises(ValueError, match="different eval_steps, eval_alpha"):
        tt.train_teacher(_early_cfg(shared_data, tmp_path / "b", eval_steps=2, eval_alpha=0.05))
    resumed = tt.train_teacher(_early_cfg(shared_data, tmp_path / "b"))
    assert (resumed["best_epoch"], resumed["stopped"]) == (2, True)
    b = _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    # A kill between the stopping epoch's checkpoint and the export: the re-run exports, trains nothing.
    (tmp_path / "b" / "model.safetensors").unlink()
    again = tt.train_teacher(_early_cfg(shared_data, tmp_path / "b"))
    assert again["best_epoch"] == 2 and len((tmp_path / "b" / "train_log.jsonl").read_text().splitlines()) == 4


def test_early_stopping_settings_are_checked_in_one_line(tmp_path, shared_data):
    from derd_scale.teacher_training import TeacherTrainError, train_teacher

    with pytest.raises(
        TeacherTrainError, match="^patience: early stopping needs held-out images; set val_examples > 0$"
    ):
        train_teacher(_early_cfg(shared_data, tmp_path / "c", val_examples=0))
    with pytest.raises(TeacherTrainError, match="^val_examples: 96 leaves none of the 96 training examples$"):
        train_teacher(_early_cfg(shared_data, tmp_path / "d", val_examples=96))


def test_teacher_augmentation_is_flip_then_reflect_padded_crop():
    """The teachers' recipe: flip (p = 0.5), reflect-pad 4 px, crop at (dy, dx) ∈ [0, 8]², drawn from
    the recipe's generator in that order; built on methods.augment.crop_flip, checked pixel by pixel."""
    from derd_scale.teacher_training import _augment

    def reflect(i: int, size: int) -> int:  # index into the unpadded axis of padded position i
        j = i - 4
        return -j if j < 0 else (2 * (size - 1) - j if j >= size else j)

    x = torch.arange(2 * 36, dtype=torch.float32).view(2, 1, 6, 6)
    gen = torch.Generator().manual_seed(0)  # draws: flip (yes, no), dx (2, 6), dy (7, 6)
    flip = torch.rand(2, generator=gen) < 0.5
    dx, dy = torch.randint(0, 9, (2,), generator=gen), torch.randint(0, 9, (2,), generator=gen)
    out = _augment(x, torch.Generator().manual_seed(0))
    for n in range(2):
        src = x[n, 0].flip(-1) if flip[n] else x[n, 0]
        for r in range(6):
            for c in range(6):
                want = src[reflect(int(dy[n]) + r, 6), reflect(int(dx[n]) + c, 6)]
                assert out[n, 0, r, c] == want
    assert not torch.equal(out, x)  # the draws moved something


def test_mixed_precision_runs_the_training_step_under_bf16_autocast_and_must_match_on_resume(
    tmp_path, shared_data, monkeypatch
):
    """mixed_precision=bf16: the attack and the loss run under CPU bf16 autocast (the weights stay
    fp32); "no" runs without it; a resume with another precision is refused by name, and a
    checkpoint whose saved config predates the setting resumes as "no"."""
    import derd_scale.teacher_training as tt
    from derd_scale.config import DataConfig, ModelConfig, OptimizerConfig

    seen = []
    real = tt.teacher_loss
    monkeypatch.setattr(tt, "teacher_loss", lambda *a: seen.append(torch.is_autocast_enabled("cpu")) or real(*a))

    def cfg(out, precision):
        return tt.TeacherTrainConfig(
            data=DataConfig(name="fashion_mnist", source="parquet", path=str(shared_data)),
            model=ModelConfig(arch="small_cnn", kwargs={"width": 4}),
            method="fgsm_rs",
            eps=0.1,
            alpha=0.125,
            epochs=1,
            batch_size=32,
            max_train_examples=64,
            eval_examples=16,
            eval_steps=1,
            optim=OptimizerConfig(name="sgd", lr=0.05),
            mixed_precision=precision,
            out=str(out),
            progress=False,
        )

    tt.train_teacher(cfg(tmp_path / "bf16", "bf16"))
    assert seen == [True, True]  # two steps, both under autocast
    assert all(v.dtype == torch.float32 for v in _weights(tmp_path / "bf16").values() if v.is_floating_point())
    seen.clear()
    tt.train_teacher(cfg(tmp_path / "fp32", "no"))
    assert seen == [False, False]
    with pytest.raises(ValueError, match="different mixed_precision"):
        tt.train_teacher(cfg(tmp_path / "fp32", "bf16"))
    saved = tmp_path / "fp32" / "teacher_config.json"
    old = json.loads(saved.read_text())
    del old["mixed_precision"]  # a config written before the setting existed
    saved.write_text(json.dumps(old))
    seen.clear()
    tt.train_teacher(cfg(tmp_path / "fp32", "no"))  # accepted: the finished run is only re-exported
    assert seen == []
