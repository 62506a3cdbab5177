"""The training loops end to end at toy scale: ablations, logging, run folder, exact resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_same_student, student_weights, subprocess_env, train_tiny

from derd_scale.run_dir import RunExistsError

REPO = Path(__file__).resolve().parent.parent

ABLATIONS = {
    "full_derd": [],
    "no_stage1": ["stage1.enabled=false"],
    "sa_only": ["stage2.eg.enabled=false"],
    "sa_eg_sum": ["stage2.aggregation.method=sum"],
    "ga_without_sga": ["stage2.aggregation.method=ga"],
    "per_tensor": ["stage2.aggregation.granularity=per_tensor"],
    "natural_on_gz": ["stage2.eg.natural_data=gz"],
    "no_sa": ["stage2.sa.enabled=false"],
    "implicit_generator": ["generator.kind=implicit"],
    "student_as_natural": ["stage2.eg.natural_teacher=student"],
    "ema_as_natural": ["stage2.eg.natural_teacher=ema"],
    "sampled_labels": ["generator.pseudo_labels=sampled"],
    "sa_in_eps_ball": ["stage2.sa.ball=true", "stage2.eps=0.05"],
    "anchor_targets_x_adv": [
        "stage2.sa.ball=true",
        "stage2.eg.natural_data=gz",
        "stage2.eg.robust_target=anchor",
        "stage2.eg.robust_data=x_adv",
        "stage2.eg.robust_clean_weight=0.5",
        "stage2.adv.steps=2",
    ],
    "anchor_targets_self_adversary": [
        "stage2.sa.ball=true",
        "stage2.eg.natural_data=gz",
        "stage2.eg.robust_target=anchor",
        "stage2.eg.robust_data=x_adv",
        "stage2.adv.objective=self",
        "stage2.adv.steps=2",
        "stage2.replay_steps=2",
    ],
    "balanced_masked": [
        "stage2.eg.natural_data=gz",
        "stage2.eg.robust_target=anchor",
        "stage2.eg.robust_mask=agreed",
        "stage2.eg.class_balance=true",
    ],
    "prior_corrected": [
        "stage2.eg.natural_data=gz",
        "stage2.eg.robust_target=anchor",
        "stage2.eg.robust_data=x_adv",
        "stage2.eg.robust_prior_correction=1.0",
        "stage2.adv.steps=2",
    ],
    "rslad_on_gz": [
        "stage2.eg.enabled=false",
        "stage2.sa.enabled=false",
        "stage2.eg.robust_target=anchor",
        "stage2.eg.robust_data=x_adv",
        "stage2.eg.robust_clean_weight=0.5",
        "stage2.adv.start=anchor",
        "stage2.adv.steps=2",
    ],
}


@pytest.mark.parametrize("variant", sorted(ABLATIONS))
def test_every_ablation_runs(tmp_path, variant):
    run = train_tiny(tmp_path, *ABLATIONS[variant])
    records = run.read_metrics()
    stages = {r["stage"] for r in records}
    assert ("stage1" in stages) == (variant != "no_stage1")
    s2 = [r for r in records if r["stage"] == "stage2"]
    assert len(s2) == 4
    assert all(torch.isfinite(torch.tensor(r["l_2"])) for r in s2)
    robust_only = variant in ("sa_only", "rslad_on_gz")
    if not robust_only:
        for key in (
            "g1_norm",
            "g2_norm",
            "cos_g1_g2",
            "tau1",
            "tau2",
            "sga_norm",
            "d_before",
            "d_after",
            "flip_rate",
            "l_1",
        ):
            assert key in s2[-1], key
    assert (s2[-1].get("sga_norm", 0) > 0) == (not robust_only and variant not in ("sa_eg_sum", "ga_without_sga"))
    assert ("class_balance_max_weight" in s2[-1]) == (variant == "balanced_masked")
    if variant == "prior_corrected":  # T_rob's batch marginal: a distribution over the classes
        assert 0 < s2[-1]["robust_prior_min"] <= 0.1 <= s2[-1]["robust_prior_max"] < 1
    else:
        assert "robust_prior_max" not in s2[-1]
    assert (run.student_dir / "model.safetensors").exists()
    assert run.is_finished()


@pytest.mark.parametrize("method", ["derd", "dfad"])
def test_the_training_radius_is_resolved_once_per_run(tmp_path, monkeypatch, method):
    """training_eps builds the evaluation protocol: train resolves it once, not every Stage-II step."""
    import derd_scale.trainer as trainer

    calls = []
    real = trainer.training_eps
    monkeypatch.setattr(trainer, "training_eps", lambda cfg: calls.append(1) or real(cfg))
    train_tiny(tmp_path, f"method={method}", "stage1.enabled=false", "stage2.steps=3")
    assert len(calls) == 1


def test_run_folder_holds_resolved_config_and_refuses_overwrite(tmp_path):
    run = train_tiny(tmp_path)
    saved = (run.path / "config.yaml").read_text()
    assert "discrepancy_on: probs" in saved and "stage2:" in saved
    with pytest.raises(RunExistsError, match="finished run"):
        train_tiny(tmp_path)
    train_tiny(tmp_path, "output.overwrite=true")


def test_kill_and_resume_gives_the_same_student(tmp_path):
    straight = train_tiny(tmp_path, "stage1.steps=4", "stage2.steps=6", name="straight")
    args = [
        sys.executable,
        str(REPO / "launch" / "train.py"),
        "--set",
        f"output.root={tmp_path}",
        "--set",
        "output.name=resumed",
    ]
    for item in TINY + ["stage1.steps=4", "stage2.steps=6"]:
        args += ["--set", item]
    env = subprocess_env(DERD_SIMULATE_PREEMPTION="stage2:2")  # the same thread count as this process
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0 and "simulated preemption" in killed.stderr
    assert not (tmp_path / "resumed" / "DONE").exists()
    env.pop("DERD_SIMULATE_PREEMPTION")
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert_same_student(straight.path, tmp_path / "resumed")
    # metrics of the resumed run continue where the killed one stopped
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["stage"] == "stage2"
    ]
    assert steps[-1] == 6


def test_cli_config_error_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "train.py"), "--set", "stage2.sa.stepz=3"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "config error: stage2.sa.stepz: unknown key; allowed: enabled, steps, alpha, lambda_d, discrepancy_on, chunk_size, ball"
    )


def test_train_help_documents_every_option():
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "train.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    from derd_scale.config import schema_lines

    for line in schema_lines():
        key = line.strip().split(" ")[0]
        assert key in out, key


def test_bf16_mixed_precision_runs_both_stages(tmp_path):
    run = train_tiny(tmp_path, "distributed.mixed_precision=bf16", "stage1.steps=2", "stage2.steps=2")
    s2 = [r for r in run.read_metrics() if r["stage"] == "stage2"]
    assert len(s2) == 2 and all(
        torch.isfinite(torch.tensor([r["l_1"], r["l_2"], r["tau1"], r["cos_g1_g2"]])).all() for r in s2
    )
    # the student's master weights stay fp32 (autocast computes in bf16)
    assert all(t.dtype == torch.float32 for t in student_weights(run.path).values() if t.is_floating_point())


def test_probe_runs_on_its_own_schedule(tmp_path, shared_data):
    run = train_tiny(
        tmp_path,
        "eval.probe_attacks=[clean]",
        "eval.probe_examples=20",
        "eval.every_steps=3",
        "logging.every_steps=100",
        "data.source=parquet",
        f"data.path={shared_data}",
        "stage1.steps=6",
        "stage2.steps=3",
    )
    probed = [(r["stage"], r["step"]) for r in run.read_metrics() if "probe_clean" in r]
    assert probed == [("stage1", 3), ("stage1", 6), ("stage2", 3)]


def test_stage1_adversarial_term_moves_g_along_its_gradient_and_leaves_the_student_alone():
    """stage1.lambda_adv: with Eq. 11's weights at 0, G's SGD step is exactly −lr·λ·∇_θ L_adv, with
    L_adv = −mean 1{agree}·KL(T(G(z)) ‖ S(G(z))) (S in eval mode, T's logits detached), and no
    gradient reaches the student."""
    import copy

    from accelerate import Accelerator

    from derd_scale.config import config_from_dict
    from derd_scale.data import dataset_info
    from derd_scale.derd.generator import PseudoImageGenerator
    from derd_scale.methods.cmi import agreement_adv
    from derd_scale.models import create_model, freeze
    from derd_scale.state import Models
    from derd_scale.trainer import build_training, generator_update, generator_weights, sample_latents

    zero = [f"stage1.{k}=0" for k in ("lambda_oh", "lambda_a", "lambda_bn", "lambda_ie")]
    cfg = config_from_dict(
        {"data": {"name": "fashion_mnist"}},
        [
            "stage1.batch_size=8",
            *zero,
            "stage1.lambda_adv=2.0",
            "optim.generator.name=sgd",
            "optim.generator.lr=0.1",
            "optim.generator.schedule=constant",
            "distributed.channels_last=false",
        ],
    )
    torch.manual_seed(0)
    teacher = freeze(create_model("small_cnn", 10, in_chans=1, width=4))
    with torch.no_grad():  # an untrained net's logits are flat: sharpen them so argmaxes survive a nudge
        [head for head in teacher.modules() if isinstance(head, torch.nn.Linear)][-1].weight.mul_(50)
    student = copy.deepcopy(teacher).train()
    with torch.no_grad():  # near the teacher: most images agree, so the mask keeps terms
        for p in student.parameters():
            p.requires_grad_(True)
            p.add_(0.01 * torch.randn_like(p))
    gen = PseudoImageGenerator(28, 1, latent_dim=16, base_channels=4)
    ref_gen, ref_student = copy.deepcopy(gen), copy.deepcopy(student).eval()
    models, par, scheds, _ = build_training(
        cfg, Accelerator(cpu=True), Models(teacher, teacher, student, gen, dataset_info("fashion_mnist"))
    )
    latents = sample_latents(models, cfg, "stage1", 0, 8, par)
    (z, y) = latents[0]
    x = ref_gen(z, y)
    l_adv = agreement_adv(ref_student(x), teacher(x).detach())
    assert l_adv.item() < 0  # the mask kept some images
    grads = torch.autograd.grad(2.0 * l_adv, list(ref_gen.parameters()))
    g_weights = generator_weights(cfg, "stage1", 0)
    _, _, parts = generator_update(models, teacher, latents, cfg, scheds["generator"], par, g_weights)
    assert parts["l_adv"].item() == pytest.approx(l_adv.item(), rel=1e-5)
    for (name, got), before, g in zip(models.generator.named_parameters(), ref_gen.parameters(), grads):
        assert torch.allclose(got, before - 0.1 * g, atol=1e-6), name
    assert all(p.grad is None for p in models.student.parameters())
    assert models.student.training  # the eval-mode forward put it back


def _fmnist_training(*overrides: str):
    """A tiny Fashion-MNIST-shaped DERD setup (one process, CPU): cfg, models, par, schedulers."""
    import copy

    from accelerate import Accelerator

    from derd_scale.config import config_from_dict
    from derd_scale.data import dataset_info
    from derd_scale.derd.generator import PseudoImageGenerator
    from derd_scale.models import create_model, freeze
    from derd_scale.state import Models
    from derd_scale.trainer import build_training

    cfg = config_from_dict(
        {"data": {"name": "fashion_mnist"}},
        ["stage1.batch_size=8", "stage2.batch_size=8", "distributed.channels_last=false", *overrides],
    )
    torch.manual_seed(0)
    teacher = freeze(create_model("small_cnn", 10, in_chans=1, width=4))
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    gen = PseudoImageGenerator(28, 1, latent_dim=16, base_channels=4)
    models, par, scheds, _ = build_training(
        cfg, Accelerator(cpu=True), Models(teacher, teacher, student, gen, dataset_info("fashion_mnist"))
    )
    return cfg, models, par, scheds


def test_stage1_generator_steps_update_g_on_fresh_latents_and_distil_the_last_batch(monkeypatch):
    """stage1.generator_steps=3: G takes three optimiser steps per Stage-I step, each on its own
    latents (update 0 = the step's usual draw), and Eq. 12 is distilled on the third batch only —
    G(z₃) as G made it before its third update; the generator schedule counts all three."""
    import copy

    import derd_scale.trainer as trainer

    cfg, models, par, scheds = _fmnist_training("stage1.generator_steps=3")
    gen = copy.deepcopy(models.generator)
    draws = [
        trainer.sample_latents(
            models, cfg, "stage1", 5, 8, par, trainer.generator_step_noise(cfg.seed, 5, u) if u else None
        )
        for u in range(3)
    ]
    assert torch.equal(draws[0][0][0], trainer.sample_latents(models, cfg, "stage1", 5, 8, par)[0][0])
    assert not torch.equal(draws[1][0][0], draws[0][0][0]) and not torch.equal(draws[2][0][0], draws[1][0][0])
    # The replica: three Adam steps of Eq. 11 on the three draws, the same optimiser settings.
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.optim.generator.lr, betas=tuple(cfg.optim.generator.betas))
    for u, latents in enumerate(draws):
        z, y = latents[0]
        x = gen(z, y)
        if u == 2:
            expected_batch = x.detach().clone()
        loss, _, _ = trainer.generator_loss(models.natural_teacher, x, 1.0, 0.1, 1.0, 5.0, 0.0, targets=y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seen = []
    real_kd = trainer.kd_kl
    monkeypatch.setattr(trainer, "kd_kl", lambda t, s_, temp, w=None: seen.append(t) or real_kd(t, s_, temp, w))
    trainer.stage1_step(models, cfg, 5, scheds, par)
    assert scheds["generator"].last_epoch == 3  # one schedule step per G update
    for got, want in zip(models.generator.parameters(), gen.parameters()):
        assert torch.allclose(got, want, atol=1e-5)
    assert len(seen) == 1  # one student update, on the last G update's batch
    assert torch.allclose(seen[0], models.natural_teacher(expected_batch).float(), atol=1e-5)


def test_stage1_generator_teacher_robust_inverts_t_rob_and_distils_t_nat(monkeypatch):
    """stage1.generator_teacher=robust: G takes exactly one Adam step of Eq. 11 on T_rob (its own
    argmax labels, its BN statistics), and Eq. 12's targets are T_nat's logits on G(z) as G made it
    before that step — not T_rob's."""
    import copy

    import derd_scale.trainer as trainer
    from derd_scale.models import create_model, freeze

    cfg, models, par, scheds = _fmnist_training("stage1.generator_teacher=robust")
    torch.manual_seed(1)  # a robust teacher distinct from the natural one
    models.robust_teacher = freeze(create_model("small_cnn", 10, in_chans=1, width=4))
    gen = copy.deepcopy(models.generator)
    (z, y), *_ = trainer.sample_latents(models, cfg, "stage1", 2, 8, par)
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.optim.generator.lr, betas=tuple(cfg.optim.generator.betas))
    x = gen(z, y)
    expected_batch = x.detach().clone()
    loss, _, _ = trainer.generator_loss(models.robust_teacher, x, 1.0, 0.1, 1.0, 5.0, 0.0, targets=y)
    loss.backward()
    opt.step()
    seen = []
    real_kd = trainer.kd_kl
    monkeypatch.setattr(trainer, "kd_kl", lambda t, s_, temp, w=None: seen.append(t) or real_kd(t, s_, temp, w))
    trainer.stage1_step(models, cfg, 2, scheds, par)
    for got, want in zip(models.generator.parameters(), gen.parameters()):
        assert torch.allclose(got, want, atol=1e-5)
    (target,) = seen
    assert torch.allclose(target.float(), models.natural_teacher(expected_batch).float(), atol=1e-5)
    assert not torch.allclose(target.float(), models.robust_teacher(expected_batch).float(), atol=1e-2)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_generator_teacher_robust_refuses_eq11_on_t_rob_twice(stage):
    from derd_scale.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=f"stage1.lambda_robust_g: .* {stage}.generator_teacher=robust"):
        config_from_dict(
            {"data": {"name": "fashion_mnist"}}, [f"{stage}.generator_teacher=robust", "stage1.lambda_robust_g=1"]
        )
    # each switch alone stays valid
    config_from_dict({"data": {"name": "fashion_mnist"}}, [f"{stage}.generator_teacher=robust"])


def test_stage1_class_balance_weights_eq12_by_the_inverse_frequency_of_t_nats_labels(monkeypatch):
    """stage1.class_balance: Eq. 12 becomes (1/B) Σ_i w_i KL(T_nat(x_i) ‖ S(x_i)) with
    w_i = N / (C · n_{ŷ_i}), ŷ = argmax T_nat(x_i) — checked against the sum written out."""

    import torch.nn.functional as F

    import derd_scale.trainer as trainer

    cfg, models, par, scheds = _fmnist_training("stage1.class_balance=true", "stage1.batch_size=32")
    # T_nat's logits on G(z) with a known, unbalanced label histogram (an untrained teacher gives
    # every image one class): 16 × class 0, 8 × class 1, 6 × class 2, 2 × class 3.
    x = torch.rand(32, 1, 28, 28)
    labels_given = torch.tensor([0] * 16 + [1] * 8 + [2] * 6 + [3] * 2)
    logits = torch.randn(32, 10) + 8 * F.one_hot(labels_given, 10)
    monkeypatch.setattr(trainer, "generator_update", lambda *a: ([x], [logits], {}))
    seen = []
    real_kd = trainer.kd_kl
    monkeypatch.setattr(
        trainer, "kd_kl", lambda t, s_, temp, w=None: seen.append((t, s_.detach(), w)) or real_kd(t, s_, temp, w)
    )
    metrics = trainer.stage1_step(models, cfg, 0, scheds, par)
    ((t, s_logits, w),) = seen
    assert torch.equal(t.argmax(1), labels_given)
    # N = 32 over C = 4 present classes: w = 32 / (4 · n_y) = 0.5, 1, 4/3, 4
    expected_w = torch.tensor([0.5] * 16 + [1.0] * 8 + [4 / 3] * 6 + [4.0] * 2)
    assert torch.allclose(w, expected_w)
    assert metrics["class_balance_max_weight"] == pytest.approx(expected_w.max().item())
    kl = [
        (F.softmax(t[i], 0) * (F.log_softmax(t[i], 0) - F.log_softmax(s_logits[i], 0))).sum().item() for i in range(32)
    ]
    hand = sum(expected_w[i].item() * kl[i] for i in range(32)) / 32
    assert metrics["l_s"].item() == pytest.approx(hand, rel=1e-4)


def test_stage1_augment_distils_t_nat_on_a_fresh_view_of_each_batch(monkeypatch):
    """stage1.augment=crop_flip: Eq. 12 becomes KL(T_nat(v) ‖ S(v)) with v = crop_flip(G(z), u) and
    u drawn per (step, update, micro-batch) — so two updates on one batch see different views."""
    import copy

    import derd_scale.trainer as trainer
    from derd_scale.derd.losses import kd_kl
    from derd_scale.methods.augment import crop_flip

    cfg, models, par, scheds = _fmnist_training("stage1.augment=crop_flip", "stage1.student_steps=2")
    seen = []
    real_kd = trainer.kd_kl
    monkeypatch.setattr(
        trainer, "kd_kl", lambda t, s, temp, w=None: seen.append((t, real_kd(t, s, temp, w))) or seen[-1][1]
    )
    student_before = copy.deepcopy(models.student)
    latents = trainer.sample_latents(models, cfg, "stage1", 0, 8, par)
    x = copy.deepcopy(models.generator)(*latents[0]).detach()
    metrics = trainer.stage1_step(models, cfg, 0, scheds, par)
    views = [crop_flip(x, trainer._stage1_views(cfg, 0, u, 0, 8, False, par)) for u in range(2)]
    assert not torch.equal(views[0], views[1])  # a fresh draw per update
    assert not torch.equal(views[0], x)
    assert len(seen) == 2
    for (target, _), view in zip(seen, views):  # T_nat's targets are taken on the view the student sees
        assert torch.allclose(target, models.natural_teacher(view), atol=1e-6)
    first = kd_kl(models.natural_teacher(views[0]), student_before(views[0]), 1.0)
    assert seen[0][1].item() == pytest.approx(first.item(), rel=1e-5)
    assert metrics["l_s"].item() == pytest.approx(seen[1][1].item())  # the logged loss: the last update's


def test_stage1_views_draw_the_current_and_replayed_halves_as_separate_global_batches():
    """With replay each half's crops come from its own global draw, sliced by rank: rank r of 2
    gets rows r·n/2… of each half, which is what one process with the full batch would crop."""
    from types import SimpleNamespace

    from derd_scale.config import config_from_dict
    from derd_scale.trainer import _stage1_views, augment_uniforms

    cfg = config_from_dict({}, [])
    one = SimpleNamespace(world_size=1, rank=0, accumulation=1)
    full = _stage1_views(cfg, 5, 1, 0, 8, True, one)  # 4 current + 4 replayed images, one process
    halves = [augment_uniforms(cfg.seed, "stage1", 5, 2 + i, 4, one) for i in range(2)]
    assert torch.equal(full, torch.cat(halves))
    for rank in range(2):
        par = SimpleNamespace(world_size=2, rank=rank, accumulation=1)
        local = _stage1_views(cfg, 5, 1, 0, 4, True, par)  # 2 current + 2 replayed on this rank
        assert torch.equal(local, torch.cat([h[2 * rank : 2 * rank + 2] for h in halves]))


@pytest.mark.parametrize("augment", ["crop_flip", "crop_flip_mixup", "resized_crop_flip"])
def test_stage2_augment_puts_every_student_term_on_a_view_of_the_anchor(monkeypatch, augment):
    """stage2.augment=crop_flip: the self-adversary (and so x_d, x_adv and the teachers' targets)
    starts from crop_flip(G(z), u), u drawn from (seed, stage2, step, micro-batch);
    crop_flip_mixup: from that view blended with its neighbour, λ from the mixup stream;
    resized_crop_flip: from a resized crop, u five uniforms wide from the same stream."""
    import copy

    import derd_scale.trainer as trainer
    from derd_scale.methods.augment import crop_flip, mixup, resized_crop_flip
    from derd_scale.state import TrainState

    cfg, models, par, scheds = _fmnist_training(f"stage2.augment={augment}", "stage2.sa.steps=1")
    anchors = []
    real = trainer.craft_discrepancy_data
    monkeypatch.setattr(trainer, "craft_discrepancy_data", lambda t, r, x, *a: anchors.append(x) or real(t, r, x, *a))
    latents = trainer.sample_latents(models, cfg, "stage2", 3, 8, par)
    gz = copy.deepcopy(models.generator)(*latents[0]).detach()
    trainer.stage2_step(models, cfg, TrainState(step=3), scheds, par)
    want = crop_flip(gz, trainer.augment_uniforms(cfg.seed, "stage2", 3, 0, 8, par))
    if augment == "resized_crop_flip":
        u = trainer.augment_uniforms(cfg.seed, "stage2", 3, 0, 8, par, width=5)
        want = resized_crop_flip(gz, u, scale=(0.5, 1.0))
        assert not torch.allclose(want, crop_flip(gz, u[:, :3]))
    if augment == "crop_flip_mixup":
        lam = trainer.augment_uniforms(cfg.seed, "stage2", 3, trainer.MIXUP_STREAM, 8, par)[:, 0]
        assert not torch.allclose(mixup(want, lam), want)
        want = mixup(want, lam)
    assert not torch.equal(want, gz)
    assert torch.allclose(anchors[0], want, atol=1e-6)


def test_stage2_student_steps_reuse_the_teachers_outputs_and_step_the_student_k_times(monkeypatch):
    """stage2.student_steps=3: one G update, one SA per micro-batch, three student updates — each
    with its own inner maximisation against the updated student and its own SGA noise — and one
    scheduler step."""
    import derd_scale.trainer as trainer
    from derd_scale.state import TrainState

    cfg, models, par, scheds = _fmnist_training(
        "preset=derd_recommended", "stage2.student_steps=3", "stage2.sa.steps=1", "stage2.adv.steps=1"
    )
    calls = {"sa": 0, "inner": [], "sga_steps": [], "student": 0, "generator": 0}
    real_sa, real_batch, real_agg = trainer.craft_discrepancy_data, trainer.student_batch, trainer.aggregate

    def count_sa(*a):
        calls["sa"] += 1
        return real_sa(*a)

    def count_batch(eg, adv, x, dd, student, *rest):
        calls["inner"].append(sum(float(p.detach().sum()) for p in student.parameters()))  # the student it attacks
        return real_batch(eg, adv, x, dd, student, *rest)

    def count_agg(*a, **k):
        calls["sga_steps"].append(k["step"])
        return real_agg(*a, **k)

    monkeypatch.setattr(trainer, "craft_discrepancy_data", count_sa)
    monkeypatch.setattr(trainer, "student_batch", count_batch)
    monkeypatch.setattr(trainer, "aggregate", count_agg)
    for adapter, key in ((par.student, "student"), (par.generator, "generator")):
        step = adapter.step
        monkeypatch.setattr(
            adapter, "step", lambda step=step, key=key: calls.__setitem__(key, calls[key] + 1) or step()
        )
    lr_before = scheds["student"].get_last_lr()[0]
    trainer.stage2_step(models, cfg, TrainState(stage="stage2", step=5), scheds, par)
    assert calls["sa"] == 1 and calls["generator"] == 1 and calls["student"] == 3
    assert len(calls["inner"]) == 3 and len(set(calls["inner"])) == 3  # each against a student that moved
    assert calls["sga_steps"] == [15, 16, 17]  # SGA's noise: (seed, 5 × 3 + update)
    assert scheds["student"].last_epoch == 1 and scheds["student"].get_last_lr()[0] != lr_before


def test_generator_weights_fixed_are_the_config_and_uniform_draws_are_reproducible():
    """stage1.loss_weights: "fixed" hands G's objective the configured λ's; "uniform" (DSS) draws each
    λ·u, u ∈ [0, 1), from (seed, stage, step, update) alone — the same on a second call (a resume, any
    rank), different for another update, step or stage — and a zero λ stays zero."""
    from derd_scale.config import config_from_dict
    from derd_scale.derd.losses import GENERATOR_WEIGHTS
    from derd_scale.trainer import generator_weights

    fixed = config_from_dict({"data": {"name": "fashion_mnist"}}, ["stage1.lambda_adv=0.5"])
    assert generator_weights(fixed, "stage1", 3, 1) == {name: getattr(fixed.stage1, name) for name in GENERATOR_WEIGHTS}
    cfg = config_from_dict(
        {"data": {"name": "fashion_mnist"}}, ["stage1.lambda_adv=0.5", "stage1.loss_weights=uniform"]
    )
    w = generator_weights(cfg, "stage1", 3, 1)
    assert w == generator_weights(cfg, "stage1", 3, 1)
    for other in (
        generator_weights(cfg, "stage1", 3, 0),
        generator_weights(cfg, "stage1", 4, 1),
        generator_weights(cfg, "stage2", 3, 1),
    ):
        assert other != w
    for name in GENERATOR_WEIGHTS:
        assert 0.0 <= w[name] <= getattr(cfg.stage1, name)
    assert w["lambda_tv"] == 0.0 and w["lambda_robust_g"] == 0.0  # off in this config, off in every draw
    assert 0.0 < w["lambda_bn"] < 1.0 and 0.0 < w["lambda_adv"] < 0.5


def test_generator_update_with_drawn_weights_equals_the_fixed_config_at_those_weights():
    """G's update under drawn weights is Eq. 11 (+ T_rob's Eq. 11) at exactly those λ's: the same
    SGD step as a config whose λ's are set to them."""
    import copy

    from derd_scale.trainer import generator_update, generator_weights, sample_latents

    sgd = ["optim.generator.name=sgd", "optim.generator.lr=0.1", "optim.generator.schedule=constant"]
    cfg, models, par, scheds = _fmnist_training("stage1.loss_weights=uniform", "stage1.lambda_robust_g=1.0", *sgd)
    w = generator_weights(cfg, "stage1", 2)
    assert len({round(v, 6) for k, v in w.items() if k in ("lambda_oh", "lambda_bn", "lambda_ie")}) == 3
    pinned = [f"stage1.{name}={value!r}" for name, value in w.items()]
    ref_cfg, ref_models, ref_par, ref_scheds = _fmnist_training(*pinned, *sgd)
    ref_models.generator.load_state_dict(copy.deepcopy(models.generator.state_dict()))
    latents = sample_latents(models, cfg, "stage1", 2, 8, par)
    _, _, parts = generator_update(models, models.natural_teacher, latents, cfg, scheds["generator"], par, w)
    _, _, ref_parts = generator_update(
        ref_models,
        ref_models.natural_teacher,
        latents,
        ref_cfg,
        ref_scheds["generator"],
        ref_par,
        generator_weights(ref_cfg, "stage1", 2),
    )
    assert parts["l_g"].item() == pytest.approx(ref_parts["l_g"].item(), rel=1e-6)
    assert parts["g_lambda_bn"].item() == pytest.approx(w["lambda_bn"])
    for (name, got), want in zip(models.generator.named_parameters(), ref_models.generator.parameters()):
        assert torch.allclose(got, want, atol=1e-6), name
