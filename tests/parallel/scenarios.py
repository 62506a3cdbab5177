"""Tiny DERD runs shared by the multi-process workers and their one-process references.

A scenario builds the same teachers, student and generator from fixed seeds, calls
``distributed.prepare`` for the requested backend and runs a few real ``stage1_step`` /
``stage2_step`` (or a baseline's ``method_step``) calls on a fixed global batch. ``run``
returns the full (gathered) student and generator state dicts, so a 2-process run can be
compared with the 1-process run of the same global batch (``tests/parallel/test_parallel.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
DEEPSPEED_JSON = {
    1: REPO / "configs/deepspeed/zero1.json",
    2: REPO / "configs/deepspeed/zero2.json",
    3: REPO / "configs/deepspeed/zero3_partition_all.json",
}

BASE = [
    "data.name=fashion_mnist",
    "seed=3",
    "stage1.batch_size=8",
    "stage2.batch_size=8",
    "stage2.sa.steps=2",
    "stage2.sa.alpha=0.05",
    "stage2.sa.lambda_d=0.5",
    "stage2.eg.lambda_rob=2.0",
    "stage2.aggregation.method=sga",
    "stage2.aggregation.sigma_r=0.05",
    "stage2.aggregation.lambda_sga=3.0",
    "optim.student.lr=0.05",
    "optim.student.schedule=cosine",
    # Contiguous memory: oneDNN's channels-last conv kernels sum a batch of 4 and one of 8 in a
    # different order (4e-6 after three steps); the layout's logic is what these tests compare,
    # tests/test_distributed.py checks channels-last against contiguous.
    "distributed.channels_last=false",
    # SGD for G here: Adam's first steps are sign-like (m/√v), so for a parameter whose true
    # gradient is ~0 — the Linear bias in front of G's BatchNorm1d — it turns fp32 round-off
    # into a ±lr step, and a 1-process run then differs from itself across thread counts.
    # Adam (the default) is still run, sharded and resumed, by the kill-and-resume tests.
    "optim.generator.name=sgd",
    "optim.generator.lr=0.01",
]

# Refused under DeepSpeed (trainer.check_backend_support): the worker records the one-line refusal.
NOT_ON_DEEPSPEED = {"stage2_student_steps"}

# name: (extra overrides, Stage-I steps, Stage-II steps)
SCENARIOS = {
    "stage1": ([], 1, 0),
    "stage1_replay": (["stage1.replay_steps=2"], 3, 0),  # steps 2 and 3 replay an earlier step's local slices
    # crop + flip views, each drawn for the global batch and sliced by rank: Stage I's two halves
    # (current, replayed), then Stage II's anchors. (All three in one run of 2 + 1 steps differed
    # by 3e-5 under DDP; the same run with SA off agrees within PARAM_TOL, as does each part
    # alone: the gap enters in SA's sign(∇) ascent, where a ~0 gradient component can flip sign
    # under another summation order.)
    "stage1_augment_replay": (["stage1.replay_steps=2", "stage1.augment=crop_flip"], 3, 0),
    "stage2_augment": (["stage2.augment=crop_flip"], 1, 1),
    "stage2": ([], 0, 3),  # full DERD: G update + SA + EG + GA + SGA, three steps
    # ‖g‖ ≈ 0.5: clipping acts; class-balance weights from counts over the global batch (an
    # all-reduce), times the experts-agree mask on L_2; T_rob's marginal on the global batch's
    # anchors (another all-reduce) corrects the robust targets
    "gz_per_tensor_clip": (
        [
            "stage2.eg.natural_data=gz",
            "stage2.aggregation.granularity=per_tensor",
            "optim.student.grad_clip=0.05",
            "stage2.eg.robust_target=anchor",
            "stage2.eg.robust_mask=agreed",
            "stage2.eg.class_balance=true",
            "stage2.eg.robust_prior_correction=1.0",
        ],
        0,
        2,
    ),
    # gathered snapshot + EMA of the sharded student; the norm balance's scales come from the
    # globally reduced ‖g1‖², ‖g2‖², so every shard scales its part alike
    "ema_natural": (
        ["stage2.eg.natural_teacher=ema", "stage2.eg.ema_decay=0.5", "stage2.aggregation.balance=norm"],
        0,
        2,
    ),
    "accumulation": (["distributed.gradient_accumulation_steps=2"], 1, 2),
    "bf16": (["distributed.mixed_precision=bf16"], 1, 1),
    # The recommended preset: SA in the eps-ball, the student's inner maximisation (a
    # forward/backward of the wrapped or sharded student w.r.t. its input only), SGA.
    "recommended": (["preset=derd_recommended", "stage2.eps=0.1", "stage2.adv.steps=2"], 0, 2),
    # two student updates per G update and SA: the second inner maximisation attacks the stepped student
    # (not under DeepSpeed: trainer.check_backend_support refuses it there)
    "stage2_student_steps": (
        ["preset=derd_recommended", "stage2.eps=0.1", "stage2.adv.steps=2", "stage2.student_steps=2"],
        0,
        2,
    ),
    # Stage II's bank: steps 1 and 2 replay an earlier step's local anchors with their stored
    # [T_nat | T_rob] logits, the replayed inner maximisation's start drawn globally, sliced by rank
    "stage2_replay": (
        ["preset=derd_recommended", "stage2.eps=0.1", "stage2.adv.steps=2", "stage2.replay_steps=2"],
        0,
        3,
    ),
    # A registered baseline (trainer.method_step): G steps through the plain student in train mode
    # (DFAD's -D, global BatchNorm), then student steps with RSLAD's inner maximisation.
    "dfad_rslad": (
        [
            "method=dfad",
            "baselines.variant=rslad",
            "stage1.enabled=false",
            "stage2.eps=0.1",
            "baselines.attack_steps=2",
            "baselines.student_steps=2",
        ],
        0,
        2,
    ),
}


def _warm_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Give a random teacher non-trivial running statistics (L_BN's targets)."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 1, 28, 28, generator=g) * 0.8 + 0.1)


def build(name: str, backend: str, accelerator, ds_stage: int | None = None, extra_overrides: tuple = ()):
    from derd_scale.config import config_from_dict
    from derd_scale.data import dataset_info
    from derd_scale.derd.generator import PseudoImageGenerator
    from derd_scale.models import create_model, freeze
    from derd_scale.state import Models
    from derd_scale.trainer import build_training

    extra, s1, s2 = SCENARIOS[name]
    overrides = BASE + extra + list(extra_overrides) + [f"distributed.backend={backend}"]
    if ds_stage is not None:
        overrides.append(f"distributed.deepspeed_config={DEEPSPEED_JSON[ds_stage]}")
    cfg = config_from_dict({}, overrides)
    torch.manual_seed(0)
    nat = create_model("small_cnn", 10, in_chans=1, width=4)
    rob = create_model("small_cnn", 10, in_chans=1, width=4)
    _warm_batchnorm(nat, 1)
    _warm_batchnorm(rob, 2)
    student = create_model("small_cnn", 10, in_chans=1, width=4)
    generator = PseudoImageGenerator(28, 1, latent_dim=16, base_channels=4)
    models = Models(freeze(nat), freeze(rob), student, generator, dataset_info("fashion_mnist"))
    models, par, scheds, _ = build_training(cfg, accelerator, models)
    return cfg, models, par, scheds, (s1, s2)


def run(name: str, backend: str, accelerator, ds_stage: int | None = None, extra: tuple = ()) -> dict:
    from derd_scale.derd.replay import ReplayBank
    from derd_scale.trainer import TrainState, method_step, stage1_step, stage2_bank, stage2_step

    cfg, models, par, scheds, (s1, s2) = build(name, backend, accelerator, ds_stage, tuple(extra))
    models.student.train()
    models.generator.train()
    metrics = []
    replay = ReplayBank(cfg.stage1.replay_steps) if cfg.stage1.replay_steps else None
    for i in range(s1):
        metrics.append(par.mean_metrics(stage1_step(models, cfg, i, scheds, par, replay)))
    state = TrainState(stage="stage2", replay2=stage2_bank(cfg))
    if s2:
        par.natural_expert.start(par.student)
    for i in range(s2):
        state.step = i
        step = stage2_step if cfg.method == "derd" else method_step
        metrics.append(par.mean_metrics(step(models, cfg, state, scheds, par)))
    return {
        "student": {k: v.detach().cpu().clone() for k, v in par.student.full_state_dict().items()},
        "generator": {k: v.detach().cpu().clone() for k, v in par.generator.full_state_dict().items()},
        "metrics": metrics,
        "layout": layout(par),
        "backend": par.backend,
        "world_size": par.world_size,
    }


def layout(par) -> dict:
    """How many student parameters this rank holds only a part of (and of the optimiser state)."""
    adapter = par.student
    total = len(adapter.params)
    if adapter.kind == "deepspeed" and adapter.stage == 3:
        partial = sum(p.ds_tensor.ds_numel < p.ds_numel for p in adapter.params)
        released = sum(p.numel() == 0 for p in adapter.params)  # outside forward: only the partition is held
        return {"params_partitioned": partial, "params_released": released, "total": total}
    if adapter.kind == "deepspeed":
        partial = sum(
            getattr(p, "_hp_mapping", None) is None or p._hp_mapping.lp_fragment_address.numel < p.numel()
            for p in adapter.params
        )
        return {"grad_and_optimizer_partitioned": partial, "total": total}
    if adapter.kind == "fsdp":
        return {"params_partitioned": sum(p.to_local().numel() < p.numel() for p in adapter.params), "total": total}
    return {"total": total}


def max_difference(a: dict, b: dict) -> tuple[float, str]:
    """Largest absolute difference over every floating tensor of two state dicts, and where."""
    worst, where = 0.0, ""
    assert a.keys() == b.keys(), set(a) ^ set(b)
    for k in a:
        if a[k].is_floating_point():
            d = (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0
            if d > worst:
                worst, where = d, k
        else:
            assert torch.equal(a[k], b[k]), k
    return worst, where
