"""One full Stage-II step (SA + EG + GA + SGA) against a straight-line reference."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_models

from derd_scale.config import config_from_dict
from derd_scale.derd.aggregation import sga_noise
from derd_scale.state import TrainState
from derd_scale.trainer import build_training, stage2_step, step_noise


def _setup(method="sga", natural_data="x_d", balance="none"):
    cfg = config_from_dict(
        {"data": {"name": "fashion_mnist"}},
        [
            "seed=3",
            "stage1.batch_size=8",
            "stage2.batch_size=8",
            "stage2.sa.steps=2",
            "stage2.sa.alpha=0.05",
            "stage2.sa.lambda_d=0.5",
            "stage2.eg.lambda_rob=2.0",
            f"stage2.eg.natural_data={natural_data}",
            f"stage2.aggregation.method={method}",
            f"stage2.aggregation.balance={balance}",
            "stage2.aggregation.sigma_r=0.05",
            "stage2.aggregation.lambda_sga=3.0",
            "stage2.generator_updates=false",
            "optim.student.lr=0.1",
            "optim.student.schedule=constant",
        ],
    )
    return cfg, tiny_models()


def _reference(cfg, models, student):
    s2 = cfg.stage2
    gen = copy.deepcopy(models.generator)
    z, _ = gen.sample(s2.batch_size, step_noise(cfg.seed, "stage2", 0))
    x0 = gen(z).detach()
    nat, rob = models.natural_teacher, models.robust_teacher
    labels = nat(x0).argmax(1)
    x = x0.clone()
    for _ in range(s2.sa.steps):
        x.requires_grad_(True)
        obj = (F.softmax(nat(x), 1) - F.softmax(rob(x), 1)).abs().sum(1).mean() + s2.sa.lambda_d * F.cross_entropy(
            nat(x), labels
        )
        (g,) = torch.autograd.grad(obj, x)
        x = (x.detach() + s2.sa.alpha * g.sign()).clamp(0, 1)
    params = [p for p in student.parameters()]
    names = [n for n, _ in student.named_parameters()]
    out = student(x)
    kl = lambda t, s: F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)  # noqa: E731
    if s2.eg.natural_data == "x_d":
        l1 = kl(nat(x).detach(), out)
    else:
        l1 = kl(nat(x0).detach(), student(x0))
    l2 = s2.eg.lambda_rob * kl(rob(x).detach(), out)
    g1 = torch.cat([g.flatten() for g in torch.autograd.grad(l1, params, retain_graph=True)])
    g2 = torch.cat([g.flatten() for g in torch.autograd.grad(l2, params)])
    if s2.aggregation.balance == "norm":  # ‖g1‖ : ‖g2‖ = λ_nat : λ_rob around the mean unweighted norm
        w1, w2 = s2.eg.lambda_nat, s2.eg.lambda_rob
        m = 0.5 * (g1.norm() / w1 + g2.norm() / w2)
        g1, g2 = g1 * (w1 * m / g1.norm()), g2 * (w2 * m / g2.norm())
    dot = g1 @ g2
    if s2.aggregation.method == "sum" or dot >= 0:
        t1 = t2 = 1.0
    else:
        t1, t2 = 1 - dot / (g1 @ g1), 1 - dot / (g2 @ g2)
    g = t1 * g1 + t2 * g2
    theta = torch.cat([p.detach().flatten() for p in params])
    if s2.aggregation.method == "sga":
        r = torch.cat(
            [sga_noise(cfg.seed, 0, n, torch.arange(p.numel()), s2.aggregation.sigma_r) for n, p in zip(names, params)]
        )
        tau = 0.5 * (t1 + t2)
        g = g + s2.aggregation.lambda_sga * tau * (r * r * theta) / torch.linalg.vector_norm(r * theta)
    # SGD, first step: momentum buffer = g + wd·θ
    oc = cfg.optim.student
    return theta - oc.lr * (g + oc.weight_decay * theta), (float(t1), float(t2))


@pytest.mark.parametrize(
    "method,natural_data,balance",
    [
        ("sga", "x_d", "none"),
        ("ga", "x_d", "none"),
        ("sum", "x_d", "none"),
        ("sga", "gz", "none"),
        ("sga", "x_d", "norm"),
    ],
)
def test_one_stage2_step_matches_the_formulas(method, natural_data, balance):
    from accelerate import Accelerator

    cfg, models = _setup(method, natural_data, balance)
    ref_student = copy.deepcopy(models.student)
    expected, (t1, t2) = _reference(cfg, models, ref_student)
    teachers_before = [
        p.clone() for p in list(models.natural_teacher.parameters()) + list(models.robust_teacher.parameters())
    ]
    models, par, scheds, _ = build_training(cfg, Accelerator(cpu=True), models)  # one process: nothing wrapped
    metrics = stage2_step(models, cfg, TrainState(stage="stage2"), scheds, par)
    got = torch.cat([p.detach().flatten() for p in models.student.parameters()])
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (got - expected).abs().max()
    assert metrics["tau1"] == pytest.approx(t1, rel=1e-5) and metrics["tau2"] == pytest.approx(t2, rel=1e-5)
    for name in (
        "g1_norm",
        "g2_norm",
        "cos_g1_g2",
        "sga_norm",
        "d_before",
        "d_after",
        "flip_rate",
        "teacher_agreement",
        "l_1",
        "l_2",
    ):
        assert name in metrics
    assert (metrics["sga_norm"] > 0) == (method == "sga")
    assert ("g1_scale" in metrics) == (balance == "norm")
    for p, q in zip(
        list(models.natural_teacher.parameters()) + list(models.robust_teacher.parameters()), teachers_before
    ):
        assert torch.equal(p, q) and p.grad is None


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_generator_and_student_updates_do_not_leak_into_each_other(stage):
    """G is updated inside every step (Stage I, and Stage II's method step 5). G ends exactly
    at its Eq.-11 update alone, no gradient is left on either model, and in Stage II the
    student makes exactly the straight-line update from the pre-update G(z): neither
    model's loss reaches the other's parameters or gradients."""
    from accelerate import Accelerator

    from derd_scale.trainer import generator_update, generator_weights, sample_latents, stage1_step

    cfg, models = _setup("sga")
    cfg.stage2.generator_updates = True
    expected, _ = _reference(cfg, models, copy.deepcopy(models.student))
    # G's update on its own, from an identical copy, through the same code path.
    _, lone = _setup("sga")
    lone.generator.load_state_dict(models.generator.state_dict())
    lone, lone_par, lone_scheds, _ = build_training(cfg, Accelerator(cpu=True), lone)
    batch = getattr(cfg, stage).batch_size
    generator_update(
        lone,
        lone.natural_teacher,
        sample_latents(lone, cfg, stage, 0, batch, lone_par),
        cfg,
        lone_scheds["generator"],
        lone_par,
        generator_weights(cfg, stage, 0),
    )
    assert all(p.grad is None for p in lone.student.parameters()), "G's update wrote gradients into the student"

    models, par, scheds, _ = build_training(cfg, Accelerator(cpu=True), models)
    if stage == "stage1":
        stage1_step(models, cfg, 0, scheds, par)
    else:
        stage2_step(models, cfg, TrainState(stage="stage2"), scheds, par)
        got = torch.cat([p.detach().flatten() for p in models.student.parameters()])
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (got - expected).abs().max()
    for (name, a), b in zip(models.generator.state_dict().items(), lone.generator.state_dict().values()):
        assert torch.equal(a, b), f"generator {name} differs from its lone Eq.-11 update"
    assert all(p.grad is None for p in models.generator.parameters()), "the student's loss left gradients on G"
    assert all(p.grad is None for p in models.student.parameters())


def test_generator_batch_size_gives_g_its_own_batch_and_the_student_the_whole_pre_update_batch():
    """stage2.generator_batch_size = n: G makes exactly Eq. 11's update on n latents of its own stream
    (generator_batch_noise), and the student makes exactly the straight-line update from the step's
    whole batch of G(z) as G made it before that update."""
    from accelerate import Accelerator

    from derd_scale.trainer import generator_batch_noise, generator_update, generator_weights, sample_latents

    cfg, models = _setup("sga")
    cfg.stage2.generator_updates, cfg.stage2.generator_batch_size = True, 4
    expected, _ = _reference(cfg, models, copy.deepcopy(models.student))  # pre-update G on all 8 latents
    _, lone = _setup("sga")
    lone.generator.load_state_dict(models.generator.state_dict())
    lone, lone_par, lone_scheds, _ = build_training(cfg, Accelerator(cpu=True), lone)
    latents = sample_latents(lone, cfg, "stage2", 0, 4, lone_par, generator_batch_noise(cfg.seed, 0))
    assert latents[0][0].shape[0] == 4
    weights = generator_weights(cfg, "stage2", 0)
    generator_update(lone, lone.natural_teacher, latents, cfg, lone_scheds["generator"], lone_par, weights)
    g_before = [p.detach().clone() for p in models.generator.parameters()]

    models, par, scheds, _ = build_training(cfg, Accelerator(cpu=True), models)
    metrics = stage2_step(models, cfg, TrainState(stage="stage2"), scheds, par)
    got = torch.cat([p.detach().flatten() for p in models.student.parameters()])
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (got - expected).abs().max()
    # Parameters, not the state dict: the anchors' no-gradient forward also moves G's BN running
    # statistics, which G (always in train mode) never reads.
    for a, b, before in zip(models.generator.parameters(), lone.generator.parameters(), g_before):
        assert torch.equal(a, b) and not torch.equal(a, before)
    assert "l_g" in metrics and all(p.grad is None for p in models.student.parameters())


@pytest.mark.parametrize("generator_teacher", ["natural", "robust"])
def test_stage2_generator_learns_eq11_on_the_chosen_teacher(generator_teacher):
    """stage2.generator_teacher: in Stage II G makes exactly Eq. 11's update on that teacher
    (the natural expert, the paper; or T_rob), and not the other's."""
    from accelerate import Accelerator

    from derd_scale.trainer import generator_update, generator_weights, sample_latents

    cfg, models = _setup("sga")
    cfg.stage2.generator_updates = True
    cfg.stage2.generator_teacher = generator_teacher
    lone = {}
    for role in ("natural", "robust"):
        _, copy_models = _setup("sga")
        copy_models.generator.load_state_dict(models.generator.state_dict())
        copy_models, copy_par, copy_scheds, _ = build_training(cfg, Accelerator(cpu=True), copy_models)
        teacher = copy_models.natural_teacher if role == "natural" else copy_models.robust_teacher
        latents = sample_latents(copy_models, cfg, "stage2", 0, cfg.stage2.batch_size, copy_par)
        weights = generator_weights(cfg, "stage2", 0)
        generator_update(copy_models, teacher, latents, cfg, copy_scheds["generator"], copy_par, weights)
        lone[role] = torch.cat([p.detach().flatten() for p in copy_models.generator.parameters()])
    models, par, scheds, _ = build_training(cfg, Accelerator(cpu=True), models)
    stage2_step(models, cfg, TrainState(stage="stage2"), scheds, par)
    got = torch.cat([p.detach().flatten() for p in models.generator.parameters()])
    other = "robust" if generator_teacher == "natural" else "natural"
    assert torch.equal(got, lone[generator_teacher]) and not torch.allclose(got, lone[other])


def test_lambda_robust_g_adds_eq11_on_t_rob_with_t_nat_pseudo_labels():
    """stage1.lambda_robust_g = λ: G's loss is Eq. 11 on T_nat + λ·Eq. 11 on T_rob whose one-hot
    term uses T_nat's argmax labels; one plain SGD step on it (linear in the gradient, unlike Adam's
    first step), checked against a straight-line copy."""
    from accelerate import Accelerator

    from derd_scale.derd.losses import generator_loss
    from derd_scale.optim import build_optimizer
    from derd_scale.trainer import generator_update, generator_weights, sample_latents

    cfg, models = _setup("sga")
    cfg.stage1.lambda_robust_g = 0.7
    cfg.optim.generator.name, cfg.optim.generator.momentum, cfg.optim.generator.lr = "sgd", 0.0, 0.5
    s1 = cfg.stage1
    ref = copy.deepcopy(models.generator)
    opt = build_optimizer(ref.parameters(), cfg.optim.generator)
    models, par, scheds, _ = build_training(cfg, Accelerator(cpu=True), models)
    latents = sample_latents(models, cfg, "stage1", 0, s1.batch_size, par)
    (z, y), weights = latents[0], (s1.lambda_oh, s1.lambda_a, s1.lambda_bn, s1.lambda_ie, s1.lambda_tv)
    x = ref(z, y)
    l_nat, t_logits, _ = generator_loss(models.natural_teacher, x, *weights)
    l_rob, _, _ = generator_loss(models.robust_teacher, x, *weights, targets=t_logits.argmax(1))
    (l_nat + 0.7 * l_rob).backward()
    opt.step()
    g_weights = generator_weights(cfg, "stage1", 0)
    _, _, parts = generator_update(models, models.natural_teacher, latents, cfg, scheds["generator"], par, g_weights)
    assert parts["l_g_robust"].item() == pytest.approx(l_rob.item(), rel=1e-6)
    for a, b in zip(models.generator.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
