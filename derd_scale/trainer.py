"""DERD training: Stage I (warm-up) and Stage II (robustness distillation), one explicit loop each.

Run it through ``launch/train.py``::

    accelerate launch launch/train.py --config configs/cifar10_resnet.yaml --set stage2.sa.steps=5
    python launch/train.py --config configs/cifar10_local.yaml           # one process

Reading order: ``train`` (setup, resume, the two stages, export, evaluation) →
``stage1_step`` → ``stage2_step``. Every quantity the method names is logged, and every
``checkpoint_every`` steps the full state (student, generator, optimisers, schedulers,
EMA, RNG, stage, step) is saved so a killed run resumes exactly.

Noise is a pure function of (seed, stage, step): every step draws the *global* batch of
latents from a generator seeded with those three numbers, cuts it into
``distributed.gradient_accumulation_steps`` micro-batches and each rank keeps its own slice
of each, so ranks see different data, the global batch is their sum, and a resumed or
re-sharded run draws exactly the same pseudo images.

Distribution lives in ``derd_scale.distributed``: ``prepare`` returns a ``Parallel`` whose
``student`` / ``generator`` adapters do backward, optimiser step and (Stage II) hand out
this rank's shard of the two task gradients, whatever the backend (plain, DDP, DeepSpeed
ZeRO-1/2/3, FSDP2). The loops below are the same for all of them.
"""

from __future__ import annotations

import time
import warnings
from typing import Optional

import torch
import torch.nn as nn

from .checkpoint import maybe_simulate_preemption, save_checkpoint
from .config import RunConfig
from .data import dataset_info
from .derd.aggregation import aggregate
from .derd.expert_guiding import (
    class_balance_weights,
    concat_batches,
    replayed_batch,
    robust_target_logits,
    student_batch,
    student_losses,
)
from .derd.generator import build_generator
from .derd.losses import GENERATOR_WEIGHTS, diversified_weights, generator_loss, kd_kl
from .derd.replay import ReplayBank
from .derd.self_adversary import craft_discrepancy_data
from .distributed import Parallel, build_accelerator, prepare, unwrap, world
from .methods import Batch, Context, get_method, reads_real_data
from .methods.augment import crop_flip, mixup, resized_crop_flip
from .methods.base import mode
from .methods.cmi import agreement_adv
from .models import freeze
from .optim import build_scheduler, build_two_stage_scheduler
from .parallel.adapters import sum_across_ranks
from .run_dir import RunDir
from .state import STAGES, Models, TrainState

# --------------------------------------------------------------------------------------
# Setup helpers
# --------------------------------------------------------------------------------------


def step_noise(seed: int, stage: str, step: int) -> torch.Generator:
    """The generator of this step's global latent batch (a pure function of its inputs)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + STAGES.index(stage) * 7_919 + step) % (2**63 - 1))


def generator_step_noise(seed: int, step: int, update: int) -> torch.Generator:
    """The latents of Stage-I G update ``update`` ≥ 1 of a step (update 0 draws ``step_noise``'s)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + 104_729 * (step + 1) + 7_927 * update) % (2**63 - 1))


def generator_batch_noise(seed: int, step: int) -> torch.Generator:
    """The latents of Stage-II step ``step``'s G update when it has its own batch (stage2.generator_batch_size)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + 15_485_863 * (step + 1) + 1) % (2**63 - 1))


MIXUP_STREAM = 1_000  # augment_uniforms' stream of stage2's mixup weights (crop_flip uses 0…accumulation − 1)
# stage2.augment=resized_crop_flip's area fraction: at most a 1.41× zoom, so a crop keeps most of
# a 32-px object (CMI's 0.25 is for its contrastive local views, not for a student's inputs).
RESIZED_CROP_SCALE = (0.5, 1.0)


def augment_uniforms(
    seed: int, stage: str, step: int, stream: int, local_n: int, par: Parallel, width: int = 3
) -> torch.Tensor:
    """(local_n, width) uniforms for stream ``stream`` of a step — 3 for ``crop_flip`` (left, top,
    flip), 5 for ``resized_crop_flip`` (area, aspect, left, top, flip): drawn for the global batch
    from (seed, stage, step, stream) and sliced by rank, as the latents are, so any process count
    and any resume crops the same views."""
    gen = torch.Generator().manual_seed(
        (seed * 1_000_003 + STAGES.index(stage) * 7_919 + 65_537 * step + 257 * (stream + 1)) % (2**63 - 1)
    )
    full = torch.rand((local_n * par.world_size, width), generator=gen)
    return local_slice(full, par.rank, par.world_size)


def local_slice(t: Optional[torch.Tensor], rank: int, world_size: int) -> Optional[torch.Tensor]:
    """Part ``rank`` of ``world_size`` equal parts along the batch (also cuts micro-batches)."""
    if t is None:
        return None
    n = t.shape[0] // world_size
    return t[rank * n : (rank + 1) * n]


def build_models(cfg: RunConfig) -> Models:
    from .config import ConfigError
    from .models.inherit import inherit_blocks
    from .teachers import model_from_config

    info = dataset_info(cfg.data)
    natural = freeze(model_from_config(cfg.teachers.natural, info))
    robust = freeze(model_from_config(cfg.teachers.robust, info))
    student = model_from_config(cfg.student, info)
    if cfg.student_init == "natural_teacher":
        try:  # before any wrapping: a data-free start near T_nat's function
            inherit_blocks(student, natural)
        except ValueError as err:
            raise ConfigError(f"student_init=natural_teacher: {err}") from None
    g = cfg.generator
    # A data-driven method generates nothing: building G would only fill its checkpoints (most of a
    # CIFAR ResNet-20 run's 17 MB) and its optimiser state.
    generator = None if reads_real_data(cfg.method) else _build_generator(cfg, info, natural)
    for key, module, wanted in (
        ("student.grad_checkpointing", student.model, cfg.student.grad_checkpointing),
        ("generator.grad_checkpointing", generator, g.grad_checkpointing),
    ):
        if wanted and module is not None:
            if not hasattr(module, "set_grad_checkpointing"):
                raise ValueError(f"{key}: {type(module).__name__} does not support activation checkpointing")
            module.set_grad_checkpointing(True)
    return Models(natural, robust, student, generator, info)


def _build_generator(cfg: RunConfig, info, natural: nn.Module) -> nn.Module:
    """G as ``cfg.generator`` configures it, for ``info``'s images and ``natural``'s input space."""
    g = cfg.generator
    return build_generator(
        g.kind,
        info.image_size,
        info.channels,
        info.num_classes,
        g.latent_dim,
        g.base_channels,
        g.pseudo_labels,
        g.implicit_bank_size,
        cfg.seed,
        g.head,
        # A normalised head (tanh_bn, bn) emits the natural teacher's input space: its mean/std map it to
        # pixels. Only then: the sigmoid head needs none, and a teacher built for other data must reach
        # the teacher/data compatibility check with its own one-line error.
        natural.mean.flatten() if g.head != "sigmoid" and natural.has_norm else None,
        natural.std.flatten() if g.head != "sigmoid" and natural.has_norm else None,
    )


# --------------------------------------------------------------------------------------
# Training state and checkpoints
# --------------------------------------------------------------------------------------


def check_backend_support(cfg: RunConfig, adapter_kind: str) -> None:
    """Refuse, in one line, what a backend is not verified for: ``stage2.student_steps`` > 1 under
    DeepSpeed (2-process ZeRO-2 runs drift from the 1-process run by 3e-4 from the second Stage-II
    step on, tests/parallel; DDP and FSDP2 agree within round-off)."""
    from .config import ConfigError

    if cfg.stage2.student_steps > 1 and adapter_kind == "deepspeed":
        raise ConfigError(
            "stage2.student_steps: > 1 is not verified under DeepSpeed (2-process ZeRO-2 drifts from the "
            "1-process run); use distributed.backend=ddp or fsdp, or stage2.student_steps=1"
        )


def build_training(cfg: RunConfig, accelerator, models: Optional[Models] = None) -> tuple[Models, Parallel, dict, dict]:
    """The one setup of a run (``train``, the benchmarks and the tests call it): models by role,
    prepared for the backend, with the schedules ``train`` steps. Returns (models, par, scheds, steps)."""
    models = models or build_models(cfg)
    par = prepare(models, cfg, accelerator)  # wraps student + generator; places the teachers
    check_backend_support(cfg, par.student.kind)
    steps = {
        "stage1": cfg.stage1.steps if cfg.stage1.enabled else 0,
        "stage2": cfg.stage2.steps if cfg.stage2.enabled else 0,
    }
    scheds = {
        # The student's schedule restarts (warm-up, cosine/step) at the start of Stage II.
        "student": build_two_stage_scheduler(
            par.student.optimizer, steps["stage1"], steps["stage2"], cfg.optim.student, cfg.stage2.lr_scale
        ),
    }
    if par.generator is not None:
        scheds["generator"] = build_scheduler(
            par.generator.optimizer, steps["stage1"] * cfg.stage1.generator_steps + steps["stage2"], cfg.optim.generator
        )
    return models, par, scheds, steps


# --------------------------------------------------------------------------------------
# One step of each stage
# --------------------------------------------------------------------------------------


def sample_latents(
    models: Models,
    cfg: RunConfig,
    stage: str,
    step: int,
    batch_size: int,
    par: Parallel,
    noise: Optional[torch.Generator] = None,
) -> list[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """This rank's slices of the step's global latent batch, one per micro-batch.

    The global batch is cut into micro-batches first and each micro-batch is then sliced by
    rank, so global micro-batch k holds the same samples under any number of processes.
    ``noise`` replaces the step's own stream (the baselines draw several batches per step)."""
    latent, labels = unwrap(models.generator).sample(batch_size, noise or step_noise(cfg.seed, stage, step))
    a = par.accumulation
    return [
        (
            local_slice(local_slice(latent, k, a), par.rank, par.world_size),
            local_slice(local_slice(labels, k, a), par.rank, par.world_size),
        )
        for k in range(a)
    ]


def generator_weights(cfg: RunConfig, stage: str, step: int, update: int = 0) -> dict[str, float]:
    """The weights of G's objective for G update ``update`` of ``stage``'s step ``step``: the
    configured λ's, or with ``stage1.loss_weights=uniform`` each times its own U(0, 1) draw
    (diversified_weights), drawn from (seed, stage, step, update) so every rank and every resume
    draws the same."""
    fixed = {name: getattr(cfg.stage1, name) for name in GENERATOR_WEIGHTS}
    if cfg.stage1.loss_weights == "fixed":
        return fixed
    gen = torch.Generator().manual_seed(
        (cfg.seed * 1_000_003 + STAGES.index(stage) * 7_919 + 49_157 * (step + 1) + 31 * update + 3) % (2**63 - 1)
    )
    return diversified_weights(fixed, torch.rand(len(fixed), generator=gen))


def generator_update(
    models: Models,
    teacher: nn.Module,
    latents: list,
    cfg: RunConfig,
    sched,
    par: Parallel,
    weights: dict[str, float],
) -> tuple[list, list, dict]:
    """Eq. 11 on ``teacher`` (frozen), one optimiser step for G (+ λ_adv·L_adv, ``stage1.lambda_adv``;
    + λ·Eq. 11 on T_rob with ``teacher``'s pseudo-labels, ``stage1.lambda_robust_g``), with the
    update's ``weights`` (generator_weights: the configured λ's, or their drawn multiples).

    Returns, per micro-batch, G(z) before the update (detached, fp32 pixels) and the
    teacher's logits on it — Stage I's KD targets — plus the loss parts."""

    def eq11(on: nn.Module, x: torch.Tensor, targets: Optional[torch.Tensor]):
        eq11_weights = (
            weights["lambda_oh"],
            weights["lambda_a"],
            weights["lambda_bn"],
            weights["lambda_ie"],
            weights["lambda_tv"],
        )
        return generator_loss(on, x, *eq11_weights, targets=targets, batch_mean=par.batch_mean)

    images, logits, parts = [], [], []
    for m, (z, y) in enumerate(latents):
        with par.generator.micro_batch(m):
            with par.autocast():
                x = models.generator(z, y)
                loss, t_logits, p = eq11(teacher, x, y)
                if cfg.stage1.lambda_robust_g:  # Eq. 11 on T_rob too, on the same pseudo-labels (docs/derd.md)
                    l_rob, _, p_rob = eq11(
                        models.robust_teacher, x, y if y is not None else t_logits.detach().argmax(1)
                    )
                    loss = loss + weights["lambda_robust_g"] * l_rob
                    p["l_g_robust"] = p_rob["l_g"]
            if cfg.stage1.lambda_adv:
                loss = loss + _adversarial_term(x, t_logits, weights["lambda_adv"], par, p)
            if cfg.stage1.loss_weights == "uniform":  # the drawn weights, for the curves
                p.update({f"g_{name}": torch.tensor(value) for name, value in weights.items()})
            par.generator.backward(loss)
        images.append(x.detach().float())
        logits.append(t_logits.detach())
        parts.append(p)
    par.generator.step()
    sched.step()
    return images, logits, _mean_dicts(parts)


def _adversarial_term(x: torch.Tensor, teacher_logits: torch.Tensor, weight: float, par: Parallel, parts: dict):
    """λ_adv·L_adv as a surrogate whose gradient w.r.t. G is λ_adv·⟨∂L_adv/∂x, ∂x/∂θ_G⟩: L_adv is
    differentiated w.r.t. the images only (a leaf), so no parameter gradient reaches the student
    under any backend (its plain module, eval mode, as the inner maximisation uses it)."""
    leaf = x.detach().float().requires_grad_(True)
    with mode(par.student.unwrapped, False), par.autocast():
        l_adv = agreement_adv(par.student.unwrapped(leaf).float(), teacher_logits.detach().float())
    (grad,) = torch.autograd.grad(weight * l_adv, leaf)
    parts["l_adv"] = l_adv.detach()
    return (x.float() * grad).sum()


def _mean_dicts(items: list[dict]) -> dict:
    return {k: sum(d[k] for d in items) / len(items) for k in items[0]}


def stage1_step(
    models: Models, cfg: RunConfig, step: int, scheds: dict, par: Parallel, replay: Optional[ReplayBank] = None
) -> dict:
    """G learns Eq. 11 against T_nat (or T_rob: ``stage1.generator_teacher``; ``stage1.generator_steps``
    updates, each on fresh latents); S distils T_nat on the last update's (detached) batch, Eq. 12,
    for ``stage1.student_steps`` updates — with ``replay`` (stage1.replay_steps), each update on that
    batch with one earlier step's batch appended (a new draw per update). The metrics are the last G
    update's."""
    robust_g = cfg.stage1.generator_teacher == "robust"
    g_teacher = models.robust_teacher if robust_g else models.natural_teacher
    for g_update in range(cfg.stage1.generator_steps):
        noise = generator_step_noise(cfg.seed, step, g_update) if g_update else None
        latents = sample_latents(models, cfg, "stage1", step, cfg.stage1.batch_size, par, noise)
        weights = generator_weights(cfg, "stage1", step, g_update)
        images, teacher_logits, metrics = generator_update(
            models, g_teacher, latents, cfg, scheds["generator"], par, weights
        )
    if robust_g:  # G's update ran T_rob; Eq. 12 distils T_nat, so its logits on the batch (one forward)
        with torch.no_grad(), par.autocast():
            teacher_logits = [models.natural_teacher(x) for x in images]
    earlier = [None] * cfg.stage1.student_steps
    if replay is not None:  # drawn before this step joins the bank: always earlier steps
        earlier = [replay.draw(cfg.seed, step, update) for update in range(cfg.stage1.student_steps)]
        replay.add(step, images, teacher_logits)
    for update, old in enumerate(earlier):
        losses = []
        batches = list(zip(images, teacher_logits))
        if old is not None:
            batches = [(torch.cat([x, ox]), torch.cat([t.float(), ot])) for (x, t), (ox, ot) in zip(batches, old)]
        if cfg.stage1.augment == "crop_flip":  # a fresh view per update, T_nat's targets on it
            views = []
            for m, (x, _) in enumerate(batches):
                x = crop_flip(x, _stage1_views(cfg, step, update, m, x.shape[0], old is not None, par).to(x.device))
                with torch.no_grad(), par.autocast():
                    views.append((x, models.natural_teacher(x).float()))
            batches = views
        weights: list = [None] * len(batches)
        if cfg.stage1.class_balance:  # T_nat's labels of what this update distils, global counts
            weights, metrics["class_balance_max_weight"] = _class_balance([t for _, t in batches], par)
        for m, ((x, t), w) in enumerate(zip(batches, weights)):
            with par.student.micro_batch(m):
                with par.autocast():
                    loss = kd_kl(t, par.student.module(x), cfg.stage1.kd_temperature, w)
                par.student.backward(loss)
            losses.append(loss.detach())
        par.student.step()
    scheds["student"].step()
    metrics["l_s"] = sum(losses) / len(losses)
    metrics["lr"] = scheds["student"].get_last_lr()[0]
    return metrics


def _stage1_views(cfg: RunConfig, step: int, update: int, m: int, n: int, replayed: bool, par: Parallel):
    """Uniforms of update ``update``'s views of micro-batch ``m`` (``n`` local images): the current
    and the replayed half are drawn as separate global batches, each sliced by rank."""
    stream = (update * par.accumulation + m) * 2
    if not replayed:
        return augment_uniforms(cfg.seed, "stage1", step, stream, n, par)
    half = n // 2
    # The replay buffer appends one stored batch of the same size, so the halves are equal; an odd
    # n would silently draw one uniform short and crop_flip would fail on the size mismatch.
    assert 2 * half == n, f"stage1 replay: the current and replayed halves differ in size ({n} images)"
    parts = [augment_uniforms(cfg.seed, "stage1", step, stream + i, half, par) for i in range(2)]
    return torch.cat(parts)


def stage2_bank(cfg: RunConfig) -> Optional[ReplayBank]:
    """Stage II's replay bank (stage2.replay_steps; None when off)."""
    n = cfg.stage2.replay_steps
    # fp32 anchors: the student's inner maximisation starts from them at a radius of a few 1/255
    # (fp16 rounds pixels near 1 by 2.4e-4), and a 1e-7 difference between process layouts must
    # not change a stored pixel (tests/parallel: two processes equal one).
    if not n:
        return None
    return ReplayBank(n, name="replay2", setting="stage2.replay_steps", stream=1, image_dtype=torch.float32)


def stage2_step(
    models: Models, cfg: RunConfig, state: TrainState, scheds: dict, par: Parallel, eps: Optional[float] = None
) -> dict:
    """One Stage-II step, in the order of docs/derd.md:
    G update (Eq. 11) → SA: discrepancy data (Eqs. 13–16) → student inputs and targets (Eq. 17's
    switches) → SA only: one loss | EG: two task gradients → GA/SGA (Eqs. 18–26) → student step.

    ``eps`` is ``training_eps(cfg)``, which ``train`` resolves once before the loop; a caller
    that leaves it out (a benchmark, a test) gets it resolved here."""
    s2 = cfg.stage2
    expert = par.natural_expert.module  # T_nat: the natural teacher, or the student's snapshot / EMA
    latents = sample_latents(models, cfg, "stage2", state.step, s2.batch_size, par)
    metrics: dict = {}

    # 0. Pseudo images G(z): the clean anchors (G keeps learning Eq. 11 unless switched off), made
    #    by G before its update; the update is on the anchors' own batch or, with
    #    stage2.generator_batch_size, on a batch of its own (the student's batch grows, G's does not).
    teacher = models.robust_teacher if s2.generator_teacher == "robust" else expert
    g_weights = generator_weights(cfg, "stage2", state.step)
    if s2.generator_updates and s2.generator_batch_size is None:
        anchors, _, parts = generator_update(models, teacher, latents, cfg, scheds["generator"], par, g_weights)
        metrics.update(parts)
    else:
        with torch.no_grad(), par.autocast():
            anchors = [models.generator(z, y).float() for z, y in latents]
        if s2.generator_updates:
            noise = generator_batch_noise(cfg.seed, state.step)
            g_latents = sample_latents(models, cfg, "stage2", state.step, s2.generator_batch_size, par, noise)
            metrics.update(generator_update(models, teacher, g_latents, cfg, scheds["generator"], par, g_weights)[2])

    if s2.augment in ("crop_flip", "crop_flip_mixup"):  # the student's anchors are a random view of G(z)
        anchors = [
            crop_flip(x, augment_uniforms(cfg.seed, "stage2", state.step, m, x.shape[0], par).to(x.device))
            for m, x in enumerate(anchors)
        ]
    if s2.augment == "resized_crop_flip":  # ...or a zoomed-in view: a random resized crop + flip
        anchors = [
            resized_crop_flip(
                x,
                augment_uniforms(cfg.seed, "stage2", state.step, m, x.shape[0], par, width=5).to(x.device),
                scale=RESIZED_CROP_SCALE,
            )
            for m, x in enumerate(anchors)
        ]
    if s2.augment == "crop_flip_mixup":  # ...blended with a neighbour: inputs between G's modes
        # Partners are neighbours within this rank's micro-batch (as timm's Mixup under DDP), so
        # the blends depend on the process count; the weights come from the global draw.
        anchors = [
            mixup(
                x,
                augment_uniforms(cfg.seed, "stage2", state.step, MIXUP_STREAM + m, x.shape[0], par)[:, 0].to(x.device),
            )
            for m, x in enumerate(anchors)
        ]

    # 1. Self-adversary: discrepancy data x_d (local to each rank, per micro-batch).
    sa_steps = s2.sa.steps if s2.sa.enabled else 0  # no ascent: x_d = G(z)
    eps = training_eps(cfg) if eps is None else eps
    with par.autocast():
        dds = [
            craft_discrepancy_data(
                expert,
                models.robust_teacher,
                x,
                sa_steps,
                s2.sa.alpha,
                s2.sa.lambda_d,
                s2.sa.discrepancy_on,
                s2.sa.chunk_size,
                eps if s2.sa.ball else None,
            )
            for x in anchors
        ]
    metrics.update(
        {
            k: sum(getattr(dd, a) for dd in dds) / len(dds)
            for k, a in (
                ("d_before", "discrepancy_before"),
                ("d_after", "discrepancy_after"),
                ("flip_rate", "flip_rate"),
                ("teacher_agreement", "teacher_agreement"),
            )
        }
    )

    # Class-balance weights from T_nat's labels of the anchors.
    weights: list = [None] * len(anchors)
    if s2.eg.class_balance:
        weights, metrics["class_balance_max_weight"] = _class_balance([dd.anchor_natural_logits for dd in dds], par)
    # The robust targets' marginal over the global batch, for their prior correction.
    robust_prior = None
    if s2.eg.robust_prior_correction:
        robust_prior = _mean_probs([robust_target_logits(s2.eg, dd) for dd in dds], par)
        metrics["robust_prior_max"], metrics["robust_prior_min"] = robust_prior.max().item(), robust_prior.min().item()

    # Stage II's bank (stage2.replay_steps): each update also learns from one earlier step's anchors
    # with their stored T_nat and T_rob logits (no teacher pass); drawn before this step joins the
    # bank, so always earlier steps.
    earlier: list = [None] * s2.student_steps
    if state.replay2 is not None:
        earlier = [state.replay2.draw(cfg.seed, state.step, update) for update in range(s2.student_steps)]
        state.replay2.add(
            state.step,
            anchors,
            [torch.cat([dd.anchor_natural_logits.float(), dd.anchor_robust_logits.float()], 1) for dd in dds],
        )

    # Steps 2-3 run stage2.student_steps times on these anchors and x_d: the teachers' outputs are
    # reused, only the student's own inner maximisation is redone against the updated student.
    for update in range(s2.student_steps):
        # 2. What the student learns from: inputs and targets per micro-batch (the student's own
        #    inner maximisation x_adv runs here when robust_data=x_adv).
        with par.autocast():
            batches = [
                student_batch(
                    s2.eg,
                    s2.adv,
                    x,
                    dd,
                    par.student.unwrapped,
                    _adv_noise(cfg, state.step, m, x, par, update),
                    eps,
                    weights[m],
                    robust_prior,
                )
                for m, (x, dd) in enumerate(zip(anchors, dds))
            ]
            if earlier[update] is not None:  # [current; earlier step's anchors] per micro-batch
                batches = [
                    concat_batches(b, _replayed_batch(cfg, state.step, m, update, old, par, eps))
                    for m, (b, old) in enumerate(zip(batches, earlier[update]))
                ]

        # 3. The student's update: SA only (one loss) or expert guiding with GA/SGA.
        if s2.eg.enabled:
            losses = _expert_guided_update(models, cfg, state.step * s2.student_steps + update, batches, par, metrics)
        else:
            losses = _robust_only_update(models, cfg, batches, par, metrics)
        par.student.step()  # clip + optimiser step (DeepSpeed: engine.step())
        par.natural_expert.update(par.student)  # the EMA follows the student (a collective when sharded)
    scheds["student"].step()  # the schedule counts Stage-II steps, as Stage I's counts G steps

    with torch.no_grad():  # the last update's predictions on this step's rows (not the replayed ones)
        pred = torch.cat([losses[m].prediction[: len(dds[m].x_d)] for m in range(len(batches))])
        metrics["student_agree_rob"] = (
            (pred == torch.cat([b.robust_target[: len(dd.x_d)] for b, dd in zip(batches, dds)]).argmax(1))
            .float()
            .mean()
            .item()
        )
        metrics["student_agree_nat"] = (
            (pred == torch.cat([dd.natural_logits for dd in dds]).argmax(1)).float().mean().item()
        )
    metrics["lr"] = scheds["student"].get_last_lr()[0]
    return metrics


def _replayed_batch(cfg: RunConfig, step: int, m: int, update: int, stored, par: Parallel, eps: float):
    """Micro-batch ``m``'s replayed anchors (``stored``: the bank's images and [T_nat | T_rob]
    logits) as a ``StudentBatch``, with their own inner-maximisation start noise."""
    images, logits = stored
    c = logits.shape[1] // 2
    noise = _adv_noise(cfg, step, m, images, par, update, replayed=True)
    with par.autocast():
        return replayed_batch(
            cfg.stage2.eg, cfg.stage2.adv, images, logits[:, :c], logits[:, c:], par.student.unwrapped, noise, eps
        )


def _class_balance(natural_logits: list[torch.Tensor], par: Parallel) -> tuple[list[torch.Tensor], float]:
    """``class_balance_weights`` per micro-batch from T_nat's labels (argmax of ``natural_logits``),
    counted over the global batch (every micro-batch and rank) so any process count weighs a sample
    alike; plus the global batch's largest weight (its rarest present class, equal on every rank)."""
    labels = [t.argmax(1) for t in natural_logits]
    counts = sum(torch.bincount(y, minlength=natural_logits[0].shape[1]) for y in labels).float()
    if par.world_size > 1:
        counts = sum_across_ranks(counts)
    present = torch.nonzero(counts).flatten()
    return [class_balance_weights(y, counts) for y in labels], float(class_balance_weights(present, counts).max())


def _mean_probs(logits: list[torch.Tensor], par: Parallel) -> torch.Tensor:
    """The mean of softmax(``logits``) over the global batch (every micro-batch and rank; fp32), so
    any process count corrects a sample alike."""
    sums = sum(torch.softmax(t.float(), dim=1).sum(0) for t in logits)
    total = torch.cat([sums, sums.new_tensor([float(sum(t.shape[0] for t in logits))])])
    if par.world_size > 1:
        total = sum_across_ranks(total)
    return total[:-1] / total[-1]


def training_eps(cfg: RunConfig) -> float:
    """Stage II's training radius: stage2.eps, or the evaluation protocol's ε."""
    from .evaluation.runner import protocol_from_config

    return cfg.stage2.eps if cfg.stage2.eps is not None else protocol_from_config(cfg.eval, cfg.data.name).eps


def _robust_only_update(models: Models, cfg: RunConfig, batches: list, par: Parallel, metrics: dict) -> dict:
    """ "SA only": the student distils the robust target alone (Eq. 12 with T_rob), one backward."""
    grads, out, values = par.student, {}, []
    for m, batch in enumerate(batches):
        with grads.micro_batch(m):
            with par.autocast():
                out[m] = student_losses(
                    par.student.module, batch, cfg.stage2.eg, cfg.stage2.kd_temperature, natural_term=False
                )
            grads.backward(out[m].robust)
        values.append(out[m].robust.detach())
    loss = sum(values) / len(values)
    metrics.update(l_2=loss, l_dis=loss)
    return out


def _expert_guided_update(
    models: Models, cfg: RunConfig, update: int, batches: list, par: Parallel, metrics: dict
) -> dict:
    """Eq. 17's two tasks → this rank's shard of g1 = ∇(λ_nat L_1), g2 = ∇(λ_rob L_2) after the
    data-parallel reduction → GA/SGA (Eqs. 18–26) → written back as the student's gradient.

    ``update`` numbers the student's Stage-II updates (= the step with one update per step): SGA's
    noise is drawn from (seed, update)."""
    s2, grads, out = cfg.stage2, par.student, {}

    def losses(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        with par.autocast():
            out[m] = student_losses(par.student.module, batches[m], s2.eg, s2.kd_temperature)
        return out[m].natural, out[m].robust

    g1, g2, l_1, l_2w = grads.task_gradients(losses)  # the adapter may call losses(m) once per task
    agg = s2.aggregation
    combined, stats = aggregate(
        g1,
        g2,
        grads.shards(),
        agg.method,
        granularity=agg.granularity,
        seed=cfg.seed,
        step=update,
        sigma_r=agg.sigma_r,
        lambda_sga=agg.lambda_sga,
        tau_mode=agg.tau,
        all_reduce=grads.all_reduce,
        balance=agg.balance,
        weights=(s2.eg.lambda_nat, s2.eg.lambda_rob),
    )
    grads.write_gradients(combined)
    metrics.update(
        l_1=l_1,
        l_2=sum(o.robust_kl for o in out.values()) / len(out),
        l_dis=l_1 + l_2w,
        g1_norm=stats.norm1,
        g2_norm=stats.norm2,
        cos_g1_g2=stats.cos,
        tau1=stats.tau1,
        tau2=stats.tau2,
        sga_norm=stats.sga_norm,
    )
    if agg.balance != "none":
        metrics.update(g1_scale=stats.scale1, g2_scale=stats.scale2)
    return out


def _adv_noise(
    cfg: RunConfig, step: int, m: int, x: torch.Tensor, par: Parallel, update: int = 0, replayed: bool = False
) -> Optional[torch.Tensor]:
    """RSLAD's 0.001·N(0, 1) start for the student's inner maximisation: drawn for the global
    micro-batch from (seed, step, m, update) and sliced by rank, so any process count draws the same.
    ``replayed``: the bank's anchors of that micro-batch (always RSLAD's start; their own stream)."""
    adv = cfg.stage2.adv
    if not replayed and (cfg.stage2.eg.robust_data != "x_adv" or (adv.start == "x_d" and cfg.stage2.sa.enabled)):
        return None
    key = cfg.seed * 1_000_003 + 104_729 * step + m + 15_485_863 * update + 998_244_353 * int(replayed)
    gen = torch.Generator().manual_seed(key % (2**63 - 1))
    full = torch.randn((x.shape[0] * par.world_size, *x.shape[1:]), generator=gen)
    return local_slice(full, par.rank, par.world_size).to(x.device)


# --------------------------------------------------------------------------------------
# Methods other than DERD (derd_scale/methods, docs/baselines.md), in Stage II's slot
# --------------------------------------------------------------------------------------


def method_noise(seed: int, step: int, stream: int) -> torch.Generator:
    """Stream ``stream`` of a baseline's step: a pure function of (seed, step, stream)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + 15_485_863 * (stream + 1) + 1_009 * step) % (2**63 - 1))


class _StepNoise:
    """The context's random draws (``methods.Context.noise/uniform/shared_uniform``): each call is a
    fresh stream of the step, drawn for the global batch and sliced to this rank's share."""

    def __init__(self, seed: int, step: int, par: Parallel):
        self.seed, self.step, self.par, self.calls = seed, step, par, 0

    def _draw(self, fn, shape: tuple, sliced: bool) -> torch.Tensor:
        self.calls += 1
        gen = method_noise(self.seed, self.step, 1_000 + self.calls)
        size = self.par.world_size if sliced else 1
        full = fn((shape[0] * size, *shape[1:]), generator=gen)
        return local_slice(full, self.par.rank, size).to(self.par.accelerator.device)

    def normal(self, shape: tuple) -> torch.Tensor:
        return self._draw(torch.randn, shape, True)

    def uniform(self, shape: tuple) -> torch.Tensor:
        return self._draw(torch.rand, shape, True)

    def shared_uniform(self, shape: tuple) -> torch.Tensor:
        return self._draw(torch.rand, shape, False)


def _global_mean(par: Parallel):
    if par.world_size == 1:
        return lambda t: t
    return lambda t: sum_across_ranks(t) / par.world_size


def method_context(
    models: Models, cfg: RunConfig, state: TrainState, par: Parallel, eps: Optional[float] = None
) -> Context:
    """What a method's objectives see this step (``eps``: ``training_eps(cfg)`` when not given)."""
    noise = _StepNoise(cfg.seed, state.step, par)
    return Context(
        natural_teacher=models.natural_teacher,
        robust_teacher=models.robust_teacher,
        student=par.student.module,
        plain_student=par.student.unwrapped,
        settings=cfg.baselines,
        eps=training_eps(cfg) if eps is None else eps,
        num_classes=models.info.num_classes,
        progress=state.step / max(1, cfg.stage2.steps),
        state=state.method_state,
        noise=noise.normal,
        uniform=noise.uniform,
        shared_uniform=noise.shared_uniform,
        global_mean=_global_mean(par),
        all_gather=par.accelerator.gather if par.world_size > 1 else (lambda t: t),
        batch_mean=par.batch_mean,
    )


def method_step(
    models: Models, cfg: RunConfig, state: TrainState, scheds: dict, par: Parallel, eps: Optional[float] = None
) -> dict:
    """One step of the registered method ``cfg.method``: ``generator_steps`` G steps on its generator
    objective (data-free methods), then ``student_steps`` student steps on its student objective,
    each through the same gradient adapters as DERD (plain, DDP, ZeRO, FSDP2). ``eps`` as in
    ``stage2_step``."""
    method = get_method(cfg.method)
    b = cfg.baselines
    real = reads_real_data(cfg.method)
    n_g = 0 if real else (b.generator_steps if b.generator_steps is not None else method.generator_steps)
    n_s = b.student_steps if b.student_steps is not None else method.student_steps
    ctx = method_context(models, cfg, state, par, eps)
    metrics: dict = {}

    # 1. Generator steps: x = G(z), the method's objective on x, one optimiser step each.
    last = None  # (latents, images before the update) of the last G step
    for k in range(n_g):
        latents = sample_latents(
            models, cfg, "stage2", state.step, cfg.stage2.batch_size, par, method_noise(cfg.seed, state.step, k)
        )
        last = (latents, _method_generator_update(models, method, ctx, latents, par, metrics))
    if n_g:
        scheds["generator"].step()

    # 2. Student steps on the batches the method names (fresh G(z), the G step's, or real data).
    regenerated = None
    for k in range(n_s):
        if real:
            batches = real_batches(cfg, state.step * n_s + k, par)
        elif method.student_batches == "reuse" and last is not None:
            batches = [Batch(x, y) for x, (_, y) in zip(last[1], last[0])]
        elif method.student_batches == "regenerate" and last is not None:
            regenerated = regenerated or _pseudo_batches(models, last[0], par)  # G is fixed during these steps
            batches = regenerated
        else:
            latents = sample_latents(
                models,
                cfg,
                "stage2",
                state.step,
                cfg.stage2.batch_size,
                par,
                method_noise(cfg.seed, state.step, 100 + k),
            )
            batches = _pseudo_batches(models, latents, par)
        parts = []
        for m, batch in enumerate(batches):
            with par.student.micro_batch(m):
                with par.autocast():
                    loss, p = method.student_objective(ctx, batch)
                par.student.backward(loss)
            parts.append(p)
        par.student.step()
    scheds["student"].step()
    metrics.update(_mean_dicts(parts))
    metrics["lr"] = scheds["student"].get_last_lr()[0]
    return metrics


def _pseudo_batches(models: Models, latents: list, par: Parallel) -> list[Batch]:
    """G(z) per micro-batch, detached (G in train mode: its BatchNorm uses batch statistics)."""
    with torch.no_grad(), par.autocast():
        return [Batch(models.generator(z, y).float(), y) for z, y in latents]


def _method_generator_update(models: Models, method, ctx: Context, latents: list, par: Parallel, metrics: dict) -> list:
    """One G step on the method's objective L_G(x), x = G(z). L_G is differentiated w.r.t. the
    images only, then G backpropagates ⟨x, ∂L_G/∂x⟩: the same gradient for G's parameters, and no
    parameter gradient reaches the student or the teachers the objective runs through (under any
    backend: the student is used through its plain module, as the inner maximisation does).
    Returns G(z) before the update per micro-batch (detached, fp32 pixels)."""
    images, parts = [], []
    train = method.student_mode_in_generator_step == "train"
    for m, (z, y) in enumerate(latents):
        with par.generator.micro_batch(m):
            with par.autocast():
                x = models.generator(z, y)
            leaf = x.detach().float().requires_grad_(True)
            with mode(ctx.plain_student, train), par.autocast():
                loss, p = method.generator_objective(ctx, leaf, y)
            (grad,) = torch.autograd.grad(loss, leaf)
            par.generator.backward((x.float() * grad).sum())
        images.append(x.detach().float())
        parts.append(p)
    par.generator.step()
    metrics.update(_mean_dicts(parts))
    return images


_TRAIN_CACHE: dict = {}


def real_training_data(cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split as (uint8 N×C×H×W, labels), read once per process."""
    from .data import load_dataset_split

    key = (cfg.data.name, cfg.data.source, cfg.data.path, cfg.data.train_split)
    if key not in _TRAIN_CACHE:
        ds, _ = load_dataset_split(cfg.data, cfg.data.train_split)
        _TRAIN_CACHE[key] = ds.tensors()
    return _TRAIN_CACHE[key]


def real_batch_indices(seed: int, t: int, n: int, batch_size: int) -> torch.Tensor:
    """Indices of global batch ``t``: epochs of ⌊n/B⌋ batches, each epoch a permutation drawn from
    (seed, epoch) — a pure function of its inputs, so a resumed or re-sharded run reads the same."""
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(t, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed((seed * 1_000_003 + 7_927 * epoch) % (2**63 - 1)))
    return order[i * batch_size : (i + 1) * batch_size]


def real_batches(cfg: RunConfig, t: int, par: Parallel) -> list[Batch]:
    """Global real batch ``t`` (pixels in [0, 1], optionally crop + flip), cut into micro-batches
    and then this rank's slice of each, as ``sample_latents`` cuts latents."""
    x_all, y_all = real_training_data(cfg)
    idx = real_batch_indices(cfg.seed, t, len(y_all), cfg.stage2.batch_size)
    x, y = x_all[idx].float().div(255), y_all[idx].long()
    if cfg.baselines.augment == "crop_flip":
        x = crop_flip(x, torch.rand((x.shape[0], 3), generator=method_noise(cfg.seed, t, 500)))
    device, a = par.accelerator.device, par.accumulation
    return [
        Batch(
            local_slice(local_slice(x, k, a), par.rank, par.world_size).to(device),
            local_slice(local_slice(y, k, a), par.rank, par.world_size).to(device),
        )
        for k in range(a)
    ]


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def train(cfg: RunConfig, config_stem: str = "run", accelerator=None) -> RunDir:
    """One run: check the inputs, open (or resume) the run folder, Stage I, Stage II, export,
    evaluate. Bad input stops before the first step and before anything is written
    (``preflight``, ``run_dir.plan_run_dir``); NaN/Inf in a step's losses or gradient norms, or
    in the weights before a checkpoint or the export, stops with ``DivergenceError`` and leaves
    the last good checkpoint as it was (docs/runs.md)."""
    from tqdm.auto import tqdm

    from .checkpoint import maybe_inject_nan, resume
    from .config import ConfigError
    from .errors import DivergenceError
    from .preflight import check_inputs, check_models
    from .run_dir import open_run_dir, plan_run_dir
    from .trackers import start_trackers

    accelerator = accelerator or build_accelerator(cfg.distributed)
    size = accelerator.num_processes
    for stage in STAGES:
        bs, parts = getattr(cfg, stage).batch_size, size * cfg.distributed.gradient_accumulation_steps
        if bs % parts:
            raise ConfigError(
                f"{stage}.batch_size: {bs} is not divisible by {size} processes × {cfg.distributed.gradient_accumulation_steps} micro-batches (it is the global batch)"
            )
    plan = plan_run_dir(cfg, config_stem)  # read-only: a refused folder stops before anything is built
    check_inputs(cfg)
    torch.manual_seed(cfg.seed)
    models, par, scheds, steps = _build_checked(cfg, accelerator)
    check_models(models, par)
    run = _on_main_agreed(par, lambda: open_run_dir(plan, cfg, accelerator.is_main_process), plan.run)

    state = TrainState(
        replay=ReplayBank(cfg.stage1.replay_steps) if cfg.stage1.replay_steps else None,
        replay2=stage2_bank(cfg),
    )
    if plan.action == "resume":
        chosen = resume(run, plan.checkpoints, state, models, scheds, par)
        if accelerator.is_main_process:
            run.truncate_metrics(state.stage, state.step)  # the resumed run re-logs what came after
        accelerator.print(f"resumed from {chosen} ({state.stage} step {state.step})")
    # logging.trackers: they receive every run.log record from here on, and keep what metrics.jsonl keeps
    trackers = start_trackers(accelerator, cfg, run, steps, starts_after=(state.stage, state.step))
    if state.stage == "stage1" and steps["stage1"] == 0:
        state.stage, state.step = "stage2", 0

    eps = training_eps(cfg)  # Stage II's radius, resolved once (it builds the evaluation protocol)
    seconds_before, start_time = state.train_seconds, time.time()

    def checkpoint(stage: str) -> None:
        state.train_seconds = seconds_before + time.time() - start_time
        _check_finite_weights(models, state, par, stage)  # a diverged state never replaces a good checkpoint
        save_checkpoint(run, state, models, scheds, par)

    for stage in STAGES:
        if STAGES.index(stage) < STAGES.index(state.stage) or steps[stage] == 0:
            continue
        if stage == "stage2":
            par.natural_expert.start(par.student)  # who plays T_nat (a snapshot is a collective when sharded)
            par.student_average.start(par.student)  # stage2.student_ema: the average starts at Stage I's student
        par.student.module.train()
        if models.generator is not None:
            models.generator.train()
        bar = tqdm(
            total=steps[stage],
            initial=state.step,
            desc=stage,
            disable=not (accelerator.is_main_process and cfg.logging.progress_bar),
            dynamic_ncols=True,
        )
        window_start, window_steps = time.time(), 0
        while state.step < steps[stage]:
            maybe_inject_nan(stage, state.step + 1, "before", models)
            if stage == "stage1":
                metrics = stage1_step(models, cfg, state.step, scheds, par, state.replay)
            elif cfg.method == "derd":
                metrics = stage2_step(models, cfg, state, scheds, par, eps)
            else:  # a registered baseline (docs/baselines.md), in Stage II's slot
                metrics = method_step(models, cfg, state, scheds, par, eps)
            state.step += 1
            if stage == "stage2":
                par.student_average.update(par.student, state.step)  # a no-op when stage2.student_ema = 0
            window_steps += 1
            bar.update(1)
            bad = _nonfinite_terms(metrics, par)  # every step: one small sync (and all-reduce)
            probe_due = _probe_due(cfg, state.step, steps[stage]) and not bad
            if state.step % cfg.logging.every_steps == 0 or state.step == steps[stage] or probe_due or bad:
                record = {
                    "stage": stage,
                    "step": state.step,
                    **par.mean_metrics(metrics),
                    **_throughput(window_steps, time.time() - window_start, getattr(cfg, stage).batch_size, par),
                }
                if probe_due:
                    record.update(_probe(models, cfg, par))
                if bad:
                    record["diverged"] = bad[0][0]
                if accelerator.is_main_process:
                    run.log(record)
                    bar.set_postfix(
                        {
                            k: f"{record[k]:.3g}"
                            for k in ("l_s", "l_dis", "cos_g1_g2", "probe_pgd_s")
                            if isinstance(record.get(k), float)
                        }
                    )
                window_start, window_steps = time.time(), 0
            if bad:
                bar.close()
                raise DivergenceError(_divergence_line(stage, state.step, bad))
            maybe_inject_nan(stage, state.step, "after", models)
            if (
                cfg.output.checkpoint_every
                and state.step % cfg.output.checkpoint_every == 0
                and state.step < steps[stage]
            ):
                checkpoint(stage)
            maybe_simulate_preemption(stage, state.step)
        bar.close()
        checkpoint(stage)
        if stage == "stage1":
            state.stage, state.step = "stage2", 0

    state.train_seconds = seconds_before + time.time() - start_time
    summary = {
        "train_seconds": state.train_seconds,
        "world_size": par.world_size,
        "backend": par.backend,
        # "bf16" or "no": what this process trained in (distributed.mixed_precision "auto" resolves
        # per machine, so a table of runs from several machines reads it here, not from the config)
        "mixed_precision": par.mixed_precision,
        "student_digest": check_ranks_in_sync(par.student),
    }
    last = "stage2" if steps["stage2"] else "stage1"
    _export_student(run, models, cfg, par, where=f"{last} step {steps[last]}")
    if cfg.eval.final:
        summary["eval"] = _final_eval(run, models, cfg, par)
    if accelerator.is_main_process:
        run.mark_finished(summary)
    trackers.finish(run)
    accelerator.wait_for_everyone()
    return run


def _build_checked(cfg: RunConfig, accelerator) -> tuple:
    """``build_training`` with its failures (a constructor refusing kwargs, a state_dict that
    does not fit, a launch trap) as one-line ``InputError``s; ``--debug`` shows the traceback."""
    from .config import ConfigError
    from .errors import InputError, RunError, one_line

    try:
        built = build_training(cfg, accelerator)
        if reads_real_data(cfg.method):
            real_training_data(cfg)  # read the training split now: a missing one is an input error
        return built
    except (ConfigError, RunError):
        raise
    except (ValueError, TypeError, KeyError, LookupError, OSError, RuntimeError, ImportError, AssertionError) as err:
        raise InputError(f"setup failed ({type(err).__name__}): {one_line(err, 400)}") from err


def _on_main_agreed(par: Parallel, action, fallback):
    """Run ``action`` (the main process's writes; other ranks get ``fallback``) and let every
    rank fail together when it fails, instead of the others hanging at the next barrier."""
    from .errors import RunError, RunExistsError

    error, result = None, fallback
    try:
        result = action()
    except RunError as err:
        error = err
    if _any_rank(par, error is not None):
        raise error or RunExistsError("the main process could not prepare the run folder (see its error)")
    par.accelerator.wait_for_everyone()
    return result


def _any_rank(par: Parallel, flag: bool) -> bool:
    if par.world_size == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=par.accelerator.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _nonfinite_terms(metrics: dict, par: Parallel) -> list[tuple[str, str]]:
    """(name, "nan" | "inf") of each non-finite scalar of a step's metrics (losses, gradient
    norms, …), in the step's order and agreed across ranks: one small tensor, one sync."""
    scalars = [
        k
        for k, v in metrics.items()
        if (torch.is_tensor(v) and v.numel() == 1) or (isinstance(v, (int, float)) and not isinstance(v, bool))
    ]
    if not scalars:
        return []
    device = par.accelerator.device
    tensors = [k for k in scalars if torch.is_tensor(metrics[k])]
    numbers = [k for k in scalars if not torch.is_tensor(metrics[k])]
    parts = []
    if tensors:
        parts.append(torch.stack([metrics[k].detach().reshape(()).float().to(device) for k in tensors]))
    if numbers:
        parts.append(torch.tensor([float(metrics[k]) for k in numbers], device=device))
    values = torch.cat(parts)
    codes = torch.isnan(values).int() + 2 * torch.isinf(values).int()
    if par.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(codes, op=dist.ReduceOp.MAX)
    order = {k: i for i, k in enumerate(metrics)}
    bad = [(k, "nan" if c == 1 else "inf") for k, c in zip(tensors + numbers, codes.tolist()) if c]
    return sorted(bad, key=lambda item: order[item[0]])


def _divergence_line(stage: str, step: int, bad: list[tuple[str, str]]) -> str:
    name, kind = bad[0]
    also = (
        f" (also non-finite: {', '.join(k for k, _ in bad[1:8])}{', …' if len(bad) > 8 else ''})"
        if len(bad) > 1
        else ""
    )
    return f"divergence: {stage} step {step}: {name} is {kind}{also}"


def _first_nonfinite(named) -> Optional[tuple[str, str]]:
    """(name, "nan" | "inf") of the first floating tensor holding a non-finite value, or None;
    one reduction per tensor and a single sync."""
    named = [(n, t) for n, t in named if torch.is_tensor(t) and t.is_floating_point() and t.numel()]
    if not named:
        return None
    peaks = torch.stack([t.detach().abs().amax().float().to(named[0][1].device) for _, t in named])
    finite = torch.isfinite(peaks)
    if bool(finite.all()):
        return None
    i = int((~finite).nonzero()[0])
    return named[i][0], "nan" if bool(torch.isnan(peaks[i])) else "inf"


def _check_finite_weights(models: Models, state: TrainState, par: Parallel, stage: str) -> None:
    """Student, generator (parameters and buffers) and the EMAs (T_nat's, the shipped student's)
    must be finite before a checkpoint; every rank checks (a gather on ZeRO-3/FSDP2) and all
    stop together."""
    from .errors import DivergenceError

    found = None
    for who, adapter in par.adapters.items():
        named = adapter.local_parameters() if adapter.sharded else list(adapter.unwrapped.state_dict().items())
        hit = _first_nonfinite(named)
        if hit:
            found = (f"{who} weight {hit[0]}", hit[1])
            break
    for who, ema in (("EMA", par.natural_expert.ema), ("student average", par.student_average.module)):
        if found is None and ema is not None:
            hit = _first_nonfinite(ema.state_dict().items())
            if hit:
                found = (f"{who} weight {hit[0]}", hit[1])
    if _any_rank(par, found is not None):
        name, kind = found or ("a weight on another rank", "non-finite")
        raise DivergenceError(
            f"divergence: {stage} step {state.step}: {name} is {kind}; the checkpoint was not written (the last good one is kept)"
        )


def _throughput(steps: int, seconds: float, global_batch: int, par: Parallel) -> dict:
    """Pseudo samples per second over the logging window. Steps are synchronous across
    ranks (every step ends in a collective), so rank 0's clock is the job's clock; the
    global rate counts the global batch, the per-rank rate is its share."""
    seconds = max(seconds, 1e-9)
    return {
        "step_seconds": seconds / max(steps, 1),
        "samples_per_s": steps * global_batch / seconds,
        "samples_per_s_per_rank": steps * global_batch / seconds / par.world_size,
        "world_size": par.world_size,
    }


def check_ranks_in_sync(student) -> str:
    """SHA-256 of the student's parameters, compared across ranks.

    Data-parallel replicas must end with bit-identical parameters; a gradient that skipped
    the reduction (docs/platform.md's silent trap) makes them drift with no error. One all_gather
    of a string turns that into a loud failure at the end of every run. (BatchNorm running
    statistics are buffers, not compared.) ``student`` is a module or a gradient adapter;
    for ZeRO-3/FSDP2 the adapter gathers the full parameters, so the check then covers
    the gather, not independent replicas."""
    import hashlib

    named = (
        student.local_parameters() if hasattr(student, "local_parameters") else list(unwrap(student).named_parameters())
    )
    digest = hashlib.sha256()
    for name, t in sorted(named, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    mine = digest.hexdigest()
    rank, size = world()
    if size > 1:
        import torch.distributed as dist

        digests: list = [None] * size
        dist.all_gather_object(digests, mine)
        if len(set(digests)) != 1:
            raise RuntimeError(f"data-parallel ranks diverged: student digests {digests}")
    return mine


def _probe_due(cfg: RunConfig, step: int, total: int) -> bool:
    """A probe runs every eval.every_steps student steps and at the end of each stage."""
    if not cfg.eval.probe_attacks or cfg.eval.probe_examples <= 0:
        return False
    every = cfg.eval.every_steps
    return bool(every and step % every == 0) or step == total


def _probe(models: Models, cfg: RunConfig, par: Parallel) -> dict:
    """Small robust-accuracy probe on real test data (a collective: every rank calls it)."""
    try:
        dataset = _eval_dataset(cfg, cfg.eval.probe_examples)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        warnings.warn(f"probe evaluation skipped: {err}", stacklevel=1)
        return {}
    from .evaluation import evaluate, protocol_from_config

    # Replicated: the live module; sharded: a gathered copy (a sharded forward is a
    # collective, and ranks evaluate different numbers of batches). With stage2.student_ema the
    # average is what ships, so it is what the probe measures.
    student, _ = par.shipped_student()
    was = student.training
    device = par.accelerator.device
    # The evaluation seeds the global RNG: fork it, so probes never change what training draws.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        report = evaluate(
            student,
            dataset,
            cfg.eval.probe_attacks,
            protocol_from_config(cfg.eval, cfg.data.name),
            accelerator=par.accelerator,
            seed=cfg.seed,
            progress=False,
            optimized=cfg.eval.optimized_copy,
        )
    student.train(was)
    return {f"probe_{name}": r["accuracy"] for name, r in report.results.items()}


_EVAL_CACHE: dict = {}


def _eval_dataset(cfg: RunConfig, n: Optional[int]):
    from .data import load_dataset_split

    key = (cfg.data.name, cfg.data.source, cfg.data.path, cfg.data.eval_split)
    if key not in _EVAL_CACHE:
        ds, _ = load_dataset_split(cfg.data, cfg.data.eval_split)
        _EVAL_CACHE[key] = ds
    return _EVAL_CACHE[key].subset(n)


def _export_student(run: RunDir, models: Models, cfg: RunConfig, par: Parallel, where: str = "end of training") -> None:
    """Write the consolidated student to ``run/student`` — never a non-finite one."""
    from .errors import DivergenceError
    from .export import export_model

    accelerator = par.accelerator
    _, state_dict = par.shipped_student()  # the EMA's weights when stage2.student_ema > 0
    if state_dict is None:
        state_dict = par.student.full_state_dict()  # consolidated on every rank (ZeRO-3 gather, FSDP2 full_tensor)
    hit = _first_nonfinite(state_dict.items())
    if hit:
        raise DivergenceError(f"divergence: {where}: student weight {hit[0]} is {hit[1]}; nothing exported")
    if accelerator.is_main_process:
        info = models.info
        export_model(
            par.student.unsharded,
            run.student_dir,
            arch=cfg.student.arch,
            num_classes=info.num_classes,
            in_chans=info.channels,
            img_size=info.image_size,
            class_names=list(info.class_names),
            model_kwargs=dict(cfg.student.kwargs),
            metadata={
                "teachers": {"natural": cfg.teachers.natural.arch, "robust": cfg.teachers.robust.arch},
                "dataset": cfg.data.name,
            },
            state_dict=_strip_norm_prefix(state_dict),
        )
    accelerator.wait_for_everyone()


def _strip_norm_prefix(sd: dict) -> dict:
    """The NormalizedModel's backbone lives under `model.`; export writes the bare backbone."""
    return {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")} or sd


def _final_eval(run: RunDir, models: Models, cfg: RunConfig, par: Parallel) -> dict:
    from .evaluation import evaluate, protocol_from_config

    try:
        dataset = _eval_dataset(cfg, cfg.eval.n_examples)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        warnings.warn(f"final evaluation skipped: {err}", stacklevel=1)
        return {"skipped": str(err)}
    accelerator = par.accelerator
    student, _ = par.shipped_student()
    surrogate = None
    if cfg.eval.surrogate:
        from .config import ModelConfig
        from .teachers import model_from_config

        surrogate = model_from_config(
            ModelConfig(arch=cfg.eval.surrogate, checkpoint=cfg.eval.surrogate_checkpoint), models.info
        ).to(accelerator.device)
    report = evaluate(
        student,
        dataset,
        cfg.eval.attacks,
        protocol_from_config(cfg.eval, cfg.data.name),
        accelerator=accelerator,
        seed=cfg.seed,
        progress=cfg.logging.progress_bar,
        surrogate=surrogate,
        masking_check=cfg.eval.masking_check,
        masking_threshold=cfg.eval.masking_threshold,
        optimized=cfg.eval.optimized_copy,
    )
    out = run.path / "eval"
    if accelerator.is_main_process:
        out.mkdir(exist_ok=True)
        report.save(out)
    return {name: r["accuracy"] for name, r in report.results.items()}
