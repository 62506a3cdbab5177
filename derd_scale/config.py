"""Typed run configuration: dataclasses loaded from YAML, dotted CLI overrides, validation.

Every decision that ``docs/method.md`` marks **Decision** is a field here with
the spec's default. Load a run config with::

    cfg = load_config("configs/cifar10_resnet.yaml", overrides=["stage2.sa.steps=5"])

Errors are one line and name the bad key (``ConfigError: stage2.sa.stepz: unknown key;
allowed: enabled, steps, alpha, ...``). ``python -m derd_scale.config`` prints the schema
with every option, its type and its default.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config key or value is invalid; the message names the dotted key."""


# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Data is read only for evaluation and teacher training, never for distillation."""

    name: str = "cifar10"
    """Dataset: a known name (cifar10, cifar100, fashion_mnist, mnist, imagenet100), or any Hub image-classification repo id (or local `datasets` folder) with source=hub."""
    source: Literal["hub", "parquet", "imagefolder"] = "hub"
    """Where to read it: the Hub, local parquet files in the Hub layout, or an image folder."""
    path: Optional[str] = None
    """Root of the local copy (parquet: a folder holding `<config>/<split>-*.parquet` or the split files; imagefolder: folder with `<split>/<class>/img`; hub: a local copy of the repo, read by datasets as the repo would be)."""
    eval_split: str = "test"
    train_split: str = "train"
    resize: Optional[int] = None
    """Evaluation resize of the shorter side before center crop (ImageNet: 256); None keeps the size."""
    crop: Optional[int] = None
    """Center-crop size for evaluation (ImageNet: 224); None keeps the size."""
    image_column: Optional[str] = None
    """Column holding the images; None = the known dataset's, else the dataset's only Image feature."""
    label_column: Optional[str] = None
    """Column holding the labels (a ClassLabel: its names are the classes); None = the known dataset's, else the only ClassLabel."""
    hub_config: Optional[str] = None
    """The Hub dataset's configuration name (datasets' `name`), for repos with several; None = the known dataset's or the default."""
    streaming: bool = False
    """source=hub: stream the split through datasets (nothing downloaded ahead, one example in memory; evaluation only)."""


@dataclass
class ModelConfig:
    """One network: a derd_scale/timm architecture, optional weights, optional normalisation."""

    arch: str = "resnet20"
    """Architecture name (derd_scale CIFAR nets or any timm name); or a source string `timm:NAME`, `hf-hub:ORG/REPO`, `local-dir:DIR`, `transformers:ORG/NAME`, `transformers-dir:DIR` (docs/models.md)."""
    checkpoint: Optional[str] = None
    """Local weights (.safetensors, or .pth/.th loaded with weights_only=True)."""
    pretrained: bool = False
    """timm pretrained weights from the Hub (needs network)."""
    mean: Optional[list[float]] = None
    """Input normalisation inside the model; None = the architecture's pretrained_cfg or none."""
    std: Optional[list[float]] = None
    num_classes: Optional[int] = None
    """Output classes; None = the dataset's. A larger head is restricted with class_subset."""
    class_subset: Optional[str] = None
    """File with one class id (e.g. ImageNet wnid) per line, or `imagenet100`: keep only these logits, in this order."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra architecture arguments (timm: img_size, patch_size, depth, ...)."""
    input_size: Optional[int] = None
    """Resize inputs to this size inside the model (bilinear) when it differs from the data's; None = feed as is."""
    grad_checkpointing: bool = False
    """Activation checkpointing (timm `set_grad_checkpointing`) to trade compute for memory."""
    trust_remote_code: bool = False
    """transformers sources only: run the model repo's own Python code (AutoModel's trust_remote_code); never on unless set."""


@dataclass
class TeachersConfig:
    natural: ModelConfig = field(default_factory=lambda: ModelConfig(arch="resnet56"))
    robust: ModelConfig = field(default_factory=lambda: ModelConfig(arch="resnet4b"))


@dataclass
class GeneratorConfig:
    kind: Literal["auto", "dcgan", "implicit"] = "auto"
    """auto/dcgan: a trained generator G(z) sized by the image (upsampling stages); implicit: optimise a bank of pseudo images directly (model inversion)."""
    latent_dim: int = 256
    base_channels: int = 64
    pseudo_labels: Literal["argmax", "sampled"] = "argmax"
    """Decision (Eq. 6): ŷ = argmax T_nat(G(z)) (DAFL); `sampled` draws balanced labels and conditions G on them."""
    implicit_bank_size: int = 1024
    """Number of pseudo images optimised directly when kind=implicit."""
    grad_checkpointing: bool = False
    """Recompute the generator's upsampling stages in backward (memory at 224²)."""
    head: Literal["sigmoid", "tanh_bn", "bn"] = "sigmoid"
    """The last layer after the final 3×3 conv (BASELINES.md §0.3 rule 1). sigmoid: pixels in [0, 1]
    directly (this project's default; CMI's and DFHL-RS's generators end so). tanh_bn (DAFL/DFAD's
    head: Tanh → BatchNorm without affine) and bn (ZSKT's: BatchNorm with affine) emit a normalised
    image, mapped to pixels with the natural teacher's mean/std and clamped to [0, 1]. dcgan only."""


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = 0
    milestones: list[float] = field(default_factory=lambda: [0.4, 0.8])
    """For schedule=step: fractions of the stage's steps where lr is multiplied by gamma."""
    gamma: float = 0.1
    grad_clip: Optional[float] = None


def _generator_optimizer() -> OptimizerConfig:
    return OptimizerConfig(name="adam", lr=1e-3, weight_decay=0.0, betas=[0.5, 0.999], schedule="constant")


@dataclass
class Stage1Config:
    """Stage I warm-up: G learns Eq. 11 against T_nat, S distils T_nat on G(z) (Eq. 12)."""

    enabled: bool = True
    steps: int = 2000
    batch_size: int = 256
    lambda_oh: float = 1.0
    lambda_a: float = 0.1
    lambda_bn: float = 1.0
    lambda_ie: float = 5.0
    lambda_tv: float = 0.0
    """Total-variation prior on G(z); 0 for CNN teachers, >0 for ViTs (no BatchNorm)."""
    lambda_adv: float = 0.0
    """Not in the paper (0 = Eq. 11): G also maximises KL(T_nat(G(z)) ‖ S(G(z))) where S and T_nat agree (CMI's / Fast-DFKD's adversarial term, methods/cmi.py::agreement_adv; S in eval mode, T_nat's logits detached), so G keeps making images the student has not learnt; G's objective in both stages."""
    lambda_robust_g: float = 0.0
    """Not in the paper (0 = Eq. 11): G's objective also carries λ·Eq. 11 on T_rob, its one-hot term on T_nat's pseudo-labels (the same ŷ), so G(z) shows each class to both experts; G's objective in both stages. Why: T_rob gave T_nat's label on only 22-50 % of G(z) for six Fashion-MNIST classes, and the robust targets distilled on such images teach the wrong class (docs/results.md)."""
    generator_teacher: Literal["natural", "robust"] = "natural"
    """Whose Eq. 11 G learns in Stage I: T_nat's (the paper) or T_rob's (its BatchNorm statistics, its one-hot and entropy terms; λ_adv then measures the student against T_rob). The Stage-I student distils T_nat either way (Eq. 12, T_nat's logits taken on G(z) without a gradient). Not in the paper; pair it with ``stage2.generator_teacher=robust`` for a G that inverts T_rob throughout. Why tried: on CIFAR-10 at 8/255 DeepInversion-RSLAD, whose pseudo images invert T_rob, beat the recommended DERD row on every column. Measured there (seed 0, with stage2.generator_teacher=robust): the Stage-I student fell from 71.60 to 23.00 clean and the recommended row went from 44.25 / 13.15 / 8.90 to 24.90 / 14.55 / 14.20 clean / PGD_S / CW (docs/results.md), so the presets keep natural."""
    loss_weights: Literal["fixed", "uniform"] = "fixed"
    """Not in the paper ("fixed" = Eq. 11's λ's on every update): "uniform" is DataFreeShield's diversified sample synthesis (Lee et al., ICML 2024) on G — every G update, in both stages, multiplies each weight of G's objective (λ_oh, λ_a, λ_BN, λ_ie, λ_tv, λ_adv, λ_robust_g) by its own u ~ U(0, 1), drawn from (seed, stage, step, update) alike on every rank (derd/losses.py::diversified_weights), so successive batches come from differently weighted objectives and the pseudo data is more varied. Why: on the CIFAR-10 recipe a G whose images both experts read taught less (docs/results.md): the robust term needs pseudo images as varied as real ones, and L_BN (60-540) otherwise outweighs L_oh (~8) on every update. Measured on the CIFAR-10 recipe (seed 0): 62.60 / 47.15 / 44.90 clean / PGD_S / CW against 63.35 / 47.20 / 45.40, level (docs/results.md); off in the recipes."""
    student_steps: int = 1
    """Student updates per generator update, on the same detached batch (Decision)."""
    generator_steps: int = 1
    """Not in the paper (1 = one G update per Stage-I step): G takes this many updates per step, each on a fresh latent batch, and the student distils the last one's batch, so G converges further (L_BN, L_adv) at the same student-step budget; the generator's schedule counts every update."""
    replay_steps: int = 0
    """Not in the paper (0 = off): keep the last N steps' G(z) and T_nat logits (derd/replay.py) and append one earlier step's batch, drawn uniformly, to every student update, so the student does not forget what G's earlier modes taught it."""
    kd_temperature: float = 1.0
    class_balance: bool = False
    """Not in the paper (false = Eq. 12's batch mean): weight each sample of the student's KD loss by N / (C · n_ŷ), ŷ = T_nat's label of what it distils (the current and any replayed batch), n_c its count in the global batch — Stage II's ``stage2.eg.class_balance`` on Eq. 12 (derd/expert_guiding.py::class_balance_weights). Why: every Fashion-MNIST Stage-I student misses shirts, which G shows rarely."""
    augment: Literal["none", "crop_flip"] = "none"
    """Not in the paper ("none" = Eq. 12 on G(z) as made): each student update sees a fresh random crop (4-px zero pad) + horizontal flip of its batch, with T_nat's targets recomputed on that view (one more T_nat forward, no gradient). Why: with ``student_steps`` > 1 or replay the student otherwise meets the very same pixels again, and the data-free KD recipes (DeepInversion, Fast-DFKD, NAYER) train their students on augmented synthetic views. Measured: on the CIFAR-10 recipe the Stage-I student 70.5 → 83.4 % clean and the recommended row 57.8 / 41.4 → 62.5 / 45.4 clean / PGD_S (two seeds; in that recipe); on Fashion-MNIST it hurt (docs/results.md)."""


@dataclass
class SAConfig:
    """Self-adversary (Eqs. 13-16)."""

    enabled: bool = True
    steps: int = 10
    """K sign-ascent steps."""
    alpha: float = 2 / 255
    """Step size in [0, 1] pixel units."""
    lambda_d: float = 1.0
    """Weight of CE(T_nat(x_d), ŷ) in the ascent objective."""
    discrepancy_on: Literal["probs", "logits"] = "probs"
    """Decision: D = batch-mean ‖T_nat − T_rob‖₁ on softmax probabilities."""
    chunk_size: Optional[int] = None
    """Craft x_d in chunks of this many images (memory); exact, since sign(∇) ignores the batch-mean scale."""
    ball: bool = False
    """Keep x_d inside the L∞ ball of radius stage2.eps around G(z) (projected each step); false = the paper's pixel-range clip only."""


@dataclass
class EGConfig:
    """Expert guiding (Eq. 17)."""

    enabled: bool = True
    """False = `SA only`: the student distils T_rob alone."""
    lambda_rob: float = 1.0
    natural_data: Literal["x_d", "gz"] = "x_d"
    """Which data the natural term L_1 sees: x_d as in the paper, or the un-ascended G(z)."""
    lambda_nat: float = 1.0
    """Weight of the natural term L_1 (the paper: 1)."""
    robust_target: Literal["x_d", "anchor", "agreed"] = "x_d"
    """Whose robust soft labels L_2 distils: T_rob(x_d) as in the paper, T_rob(G(z)) on the clean anchor (RSLAD's targets), or `agreed`: T_rob(G(z)) where the experts' labels agree on G(z), else T_nat(G(z)) (derd/expert_guiding.py::agreed_robust_target)."""
    robust_data: Literal["x_d", "x_adv"] = "x_d"
    """Where the student meets the robust target: x_d as in the paper, or x_adv from the student's inner maximisation (stage2.adv)."""
    robust_mask: Literal["none", "agreed"] = "none"
    """Not in the paper ("none"): `agreed` keeps L_2 only on samples whose anchor G(z) the experts label alike (argmax T_rob = argmax T_nat), the others contribute 0 (still divided by the batch size) and learn L_1 alone (derd/expert_guiding.py::robust_mask_weight). Measured worse on Fashion-MNIST (3 seeds: −2.7 PGD_S, clean unchanged; docs/results.md), so the presets keep none."""
    class_balance: bool = False
    """Not in the paper (false): weight each sample of L_1 and L_2 by N / (C · n_ŷ), ŷ = T_nat's label of G(z), n_c its count in the global batch (derd/expert_guiding.py::class_balance_weights), so the classes G rarely shows (shirt on Fashion-MNIST) weigh as much as the common ones. Measured on Fashion-MNIST (3 seeds): +1.2 clean, −0.2 PGD_S, inside seed noise (docs/results.md); off in the presets until a table confirms it."""
    robust_clean_weight: float = 0.0
    """β: L_2 = (1−β) KL(t ‖ S(x_r)) + β KL(t ‖ S(G(z))) with t the robust target (RSLAD: β = 1/6; the paper: 0)."""
    robust_self_weight: float = 0.0
    """Not in the paper (0 = off): γ ≥ 0 adds TRADES's boundary term γ·KL_B(S(G(z)) ‖ S(x_r)) to L_2 (derd/student_adversary.py::robust_distillation_loss): the student's own clean prediction, not T_rob's, is what it must keep on x_r, gradient through both sides. Why: on the CIFAR-10 recipe T_rob gives T_nat's label on only 26 % of G(z), so the robustness L_2 teaches is tied to robust targets that are often wrong; this term asks for a student that is flat around each anchor whatever the target says there (no extra forward: S(G(z)) is already computed)."""
    robust_prior_correction: float = 0.0
    """Not in the paper (0 = off): τ ≥ 0 in t = softmax(z − τ·log p̄), the robust target's logits z (T_rob(G(z)) under robust_target=anchor) adjusted by p̄, the mean of softmax(z) over the step's global batch (derd/expert_guiding.py::prior_corrected_logits; logit adjustment, Menon et al. 2021), so the robust soft labels the student distils are no longer skewed to the classes T_rob reads into pseudo images (τ = 1: divided by that marginal). Not with stage2.replay_steps. Why: on 1024 G(z) of the CIFAR-10 recipe T_rob gave T_nat's label on 26 % and filed 21-30 % as cat against 2-4 % as deer or dog, and every robust student then files 26-28 % of real test images as cat while losing bird and deer (docs/results.md)."""
    natural_teacher: Literal["teacher", "student", "ema"] = "teacher"
    """Who plays T_nat in Stage II: the natural teacher, a frozen copy of the student, or an EMA of it."""
    ema_decay: float = 0.999


@dataclass
class AggregationConfig:
    """Gradient aggregation (Eqs. 18-26)."""

    method: Literal["sum", "ga", "sga"] = "sga"
    """sum: g1+g2 (SA+EG); ga: Eqs. 18-21; sga: GA plus the SGA regulariser (full DERD)."""
    granularity: Literal["global", "per_tensor"] = "global"
    """Decision: τ from the flat gradient of all parameters; per_tensor computes τ per parameter tensor."""
    sigma_r: float = 0.01
    """Standard deviation of the SGA noise r (Eqs. 22-25)."""
    lambda_sga: float = 1.0
    tau: Literal["mean", "sum", "one"] = "mean"
    """τ in L_SGA = τ‖r⊙θ‖₂ (the paper leaves it open): mean of τ1, τ2, their sum, or 1."""
    balance: Literal["none", "norm"] = "none"
    """Not in the paper ("none"): `norm` rescales g1 and g2 before GA/SGA to norms in the ratio λ_nat : λ_rob around their mean unweighted norm (derd/aggregation.py::balance_scales). Why: GA leaves each task g·g_i = ‖g_i‖²(1 − cos²), so the task with the larger gradient takes the larger share of every step: on the CIFAR-10 recipe ‖g1‖ ≈ 1.7 ‖g2‖ gave the natural task ~2.9× the robust task's progress whatever λ_rob said; balanced, the shares follow the λ's (MTARD's normalised weights, for gradients). Needs λ_nat, λ_rob > 0."""


@dataclass
class StudentAdversaryConfig:
    """The student's inner maximisation on synthetic data (data-driven robust distillation's min-max, e.g. RSLAD):
    x_adv = argmax_{‖x'−G(z)‖∞≤ε} KL(t ‖ S(x')) by PGD (ε = stage2.eps), t the robust target (or S(G(z)) with objective=self); used when eg.robust_data=x_adv."""

    alpha: Optional[float] = None
    """PGD step size; None = stage2.eps / 4."""
    steps: int = 10
    start: Literal["anchor", "x_d"] = "x_d"
    """Start of the ascent: G(z) + 0.001·N(0, 1) (RSLAD) or the discrepancy data x_d projected into the ball (SA as a warm start)."""
    objective: Literal["target", "self"] = "target"
    """What the ascent maximises: KL(t ‖ S(x')) towards the robust target t (RSLAD's inner maximisation), or `self`: KL(S(G(z)) ‖ S(x')), the student's own clean prediction (TRADES's inner maximisation; derd/student_adversary.py::inner_max_target). L_2 is unchanged (t at x_adv). Why: beside the natural term S(G(z)) follows T_nat, which disagrees with T_rob on most pseudo images, so KL(t ‖ S(·)) is already large at the anchor and its ascent spends the budget on that disagreement instead of on where the student's own prediction changes. Measured on the CIFAR-10 recipe (seed 0): +7.95 clean, −2.45 PGD_S — a move along the clean–robust curve, not past it (docs/results.md), so the presets keep target."""


@dataclass
class Stage2Config:
    enabled: bool = True
    steps: int = 1000
    batch_size: int = 256
    kd_temperature: float = 1.0
    generator_updates: bool = True
    """Keep training G on Eq. 11 during Stage II (step 5 of the method)."""
    generator_batch_size: Optional[int] = None
    """Not in the paper (None = the step's batch, as in the paper): G's Stage-II update (Eq. 11 and its additions, ``stage1.lambda_adv`` / ``lambda_robust_g``) takes its own batch of this many latents, drawn from a stream of its own (trainer.py::generator_batch_noise), while the student's anchors are G(z) of the step's whole batch, made by G before that update without a gradient. Why: G's update runs both teachers and the student forward and backward, ~45 % of a CIFAR-10 Stage-II step at a batch of 256 with the cheaper attacks (docs/performance.md); this lets the student's batch grow without G's (Stage I trains G at its own batch)."""
    student_steps: int = 1
    """Not in the paper (1): student updates per Stage-II step, i.e. per G update and SA batch. Each update reuses the step's anchors, x_d and every teacher output, and redoes only the student's own inner maximisation against the updated student, so k updates cost one G update + one SA + k student passes; the student's schedule counts Stage-II steps (as Stage I's counts G steps) and its budget is steps × k. Why: a Stage-II step spends ~75 % of its time on G's update and SA (docs/performance.md), and the data-free KD recipes take many student steps per generator step."""
    replay_steps: int = 0
    """Not in the paper (0 = off): keep the last N Stage-II steps' anchors (the student's view of G(z)) with T_nat's and T_rob's logits on them (derd/replay.py) and append one earlier step's anchors, drawn uniformly, to every student update: L_1 on them with the stored T_nat targets, L_2 with the stored T_rob targets from the student's inner maximisation started at the anchor (they have no x_d; derd/expert_guiding.py::replayed_batch). No teacher pass; the student-side work of an update doubles. Needs the anchor-side targets: eg.natural_data=gz, eg.robust_target=anchor|agreed, eg.robust_data=x_adv, no robust_mask or class_balance. Why: the Stage-I bank took the CIFAR-10 Stage-I student from 47 to 67 % clean, and every Stage-II row on CIFAR-10 ends near 54 % clean on the current batch of a still-moving G alone (docs/results.md)."""
    generator_teacher: Literal["natural", "robust"] = "natural"
    """Whose Eq. 11 G learns in Stage II: the natural expert's (the paper) or the robust teacher's. Images G makes for T_nat carry features T_rob does not share (it agreed with T_nat's label on 22-40 % of G(z) for six Fashion-MNIST classes after Stage I), so the robust targets the student distils on them are noise; T_rob's inversions carry the features it is robust on. Measured worse on Fashion-MNIST (seed 2: −4.0 clean, −2.9 PGD_S; docs/results.md), so the presets keep natural."""
    lr_scale: float = 1.0
    """The student's peak learning rate in Stage II, where its schedule restarts, as a fraction of optim.student.lr (1 = the paper: one rate for both stages; a fraction, so a preset suits SGD CNN and AdamW ViT recipes alike). Restarting at the full rate knocks the Stage-I student off its clean solution within ~100 steps; a lower peak keeps more of it."""
    student_ema: float = 0.0
    """Decay of an EMA of the student's Stage-II weights (derd_scale/weight_average.py); > 0: the average is probed, exported and evaluated. 0 = off (the paper)."""
    augment: Literal["none", "crop_flip", "crop_flip_mixup", "resized_crop_flip"] = "none"
    """Not in the paper ("none"): the clean anchors G(z) of the student's terms are replaced by a random crop (4-px zero pad) + horizontal flip of themselves before the self-adversary, so x_d, x_adv and every teacher target are taken on that view (no extra teacher pass; G's own update still sees G(z) as made). "crop_flip_mixup": then each view is blended with its neighbour in the rank's micro-batch, weight λ ~ U[0, 1] per image (methods/augment.py::mixup; targets are the teachers' outputs on the blend, no label mixing). "resized_crop_flip": instead of the padded crop, a random resized crop (area fraction U[0.5, 1], aspect ratio 3/4-4/3, bilinear back to full size) + flip (methods/augment.py::resized_crop_flip; trainer.py::RESIZED_CROP_SCALE): views that zoom in on G(z) as well as shift it."""
    eps: Optional[float] = None
    """Training radius ε (L∞, pixel units) of the ball mechanisms (sa.ball, the student's inner maximisation); None = the evaluation protocol's ε."""
    sa: SAConfig = field(default_factory=SAConfig)
    eg: EGConfig = field(default_factory=EGConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    adv: StudentAdversaryConfig = field(default_factory=StudentAdversaryConfig)


@dataclass
class OptimConfig:
    student: OptimizerConfig = field(default_factory=OptimizerConfig)
    generator: OptimizerConfig = field(default_factory=_generator_optimizer)


@dataclass
class EvalConfig:
    protocol: str = "cifar"
    """Attack budget preset: cifar, imagenet100, robustbench_imagenet, fashion_mnist, or custom (set eps/alpha/steps)."""
    attacks: list[str] = field(default_factory=lambda: ["clean", "fgsm", "pgd_s", "pgd_t", "cw", "aa"])
    """aa = the standard AutoAttack (100 iterations, 9 targets, 5000 Square queries); aa_fast = torchattacks' 10-iteration default, not AutoAttack."""
    eps: Optional[float] = None
    """L∞ radius in [0, 1] pixel units, 0 < eps <= 1; None = the preset's (a different value warns)."""
    alpha: Optional[float] = None
    """Attack step size in pixel units, > 0; None = the preset's."""
    steps: Optional[int] = None
    """Iterations of PGD_S/PGD_T/CW, >= 1 (e.g. 20 for PGD-20); None = the preset's."""
    batch_size: Optional[int] = None
    """Evaluation batch; None = the preset's."""
    n_examples: Optional[int] = 1000
    """First N examples of the evaluation split; None = all."""
    every_steps: int = 0
    """Probe evaluation every N student steps (0 = only at the end of each stage)."""
    probe_examples: int = 256
    probe_attacks: list[str] = field(default_factory=lambda: ["clean", "pgd_s"])
    final: bool = True
    """Run the full evaluation after training."""
    restarts: int = 1
    """Random restarts of PGD_S/CW (an example counts as robust only if it survives every restart)."""
    cw_kappa: float = 0.0
    """CW margin confidence κ."""
    square_queries: int = 5000
    """Queries of the stand-alone `square` attack."""
    surrogate: Optional[str] = None
    """Transfer attacks: surrogate architecture (any model name or `local-dir:`); crafted there, scored on the student."""
    surrogate_checkpoint: Optional[str] = None
    """Weights for `surrogate`."""
    masking_threshold: float = 0.10
    """Warn when PGD_S − AA exceeds this (fraction), a classic sign of gradient masking."""
    masking_check: bool = True
    """Also run PGD_S with twice the steps and warn if robust accuracy goes up."""
    optimized_copy: bool = True
    """Attack a copy of the model with BatchNorm folded into the layer before it and, on CPU, channels-last memory: the same network up to fp32 rounding, 1.3-1.8x faster attack passes (evaluation/inference.py); false attacks the model as is."""


@dataclass
class DistributedConfig:
    """How the run is spread over processes; see docs/distributed.md."""

    backend: Literal["auto", "none", "ddp", "deepspeed", "fsdp"] = "auto"
    """auto = whatever `accelerate launch` set up; fsdp on CPU uses torchrun + fully_shard."""
    mixed_precision: Literal["no", "bf16", "auto"] = "no"
    """bf16 = torch autocast on every backend (fp32 weights, gradients and reductions; GA/SGA sums in fp32); auto = bf16 where the hardware has native bf16 (CUDA with bf16, CPUs with AMX or AVX512-BF16), else no. Evaluation always runs in fp32."""
    gradient_accumulation_steps: int = 1
    """Split each step's global batch into this many micro-batches (memory); the batch size stays the global batch per optimiser step."""
    global_batch_statistics: bool = True
    """With several processes, student/generator BatchNorm and Stage I's L_BN/L_ie use global-batch statistics (one small all-reduce per layer), so results do not depend on the process count; false = per-process statistics."""
    channels_last: bool = True
    """Store the conv nets in channels-last memory format (teachers always; student and generator under none/ddp): oneDNN's fast layout on CPUs and cuDNN's for tensor cores; numerics stay fp32."""
    compile: Literal["none", "auto", "default", "max-autotune-no-cudagraphs"] = "none"
    """auto = default on CUDA, none elsewhere. torch.compile in place (nn.Module.compile: the same modules, parameters and state_dict keys, so checkpoints, EMA, export and resume are unchanged) with this mode: the teachers always, the student and generator under none/ddp (the sharded backends' flattened parameters stay eager); every copy (snapshots, the EMA and student-as-T_nat copies, the evaluation's attacked copy) runs eager. On an H200 `default` made the real-size ViT Stage-II step 1.8x faster; on these CPUs it is slower (docs/performance.md). The CUDA-graph modes (reduce-overhead, max-autotune) are not offered: SA and the trainer keep teacher outputs across calls, which CUDA graph trees overwrite. none = eager."""
    teachers_bf16: bool = True
    """Under bf16, store the frozen teachers' Linear/Conv weights in bf16 (autocast rounds them anyway: same outputs, half the memory)."""
    deepspeed_config: Optional[str] = None
    """DeepSpeed JSON for backend=deepspeed; None = the one `accelerate launch` got (deepspeed_config_file). Set, it takes precedence."""
    fsdp_reshard_after_forward: bool = True
    """FSDP2: free gathered parameters after forward (ZeRO-3-like) or keep them until backward (ZeRO-2-like)."""
    fsdp_min_params: Optional[int] = None
    """FSDP2: submodules with at least this many parameters become their own unit; None = one unit for the whole model."""
    expected_world_size: Optional[int] = None
    """Stop if the launcher started a different number of processes (catches `accelerate launch --cpu --num_processes 2`, which starts one)."""


# Accelerate's tracker names (Accelerator(log_with=...)); derd_scale/trackers.py maps each to its package.
TRACKER_NAMES = ("tensorboard", "wandb", "trackio", "mlflow", "aim", "comet_ml", "clearml", "dvclive", "swanlab")


@dataclass
class LoggingConfig:
    every_steps: int = 10
    progress_bar: bool = True
    trackers: list[Literal[TRACKER_NAMES]] = field(default_factory=list)  # type: ignore[valid-type]
    """Experiment trackers (Accelerate's names) fed every metrics.jsonl record, the resolved config and the final curves, main process only; local ones write under <run>/trackers/ (docs/runs.md). [] = none."""
    project: Optional[str] = None
    """The trackers' project/run name; None = the run folder's name."""


@dataclass
class OutputConfig:
    root: str = "runs"
    name: Optional[str] = None
    """Run folder `<root>/<name>`, a relative path inside root; None = the config file's stem (`run` without --config), so re-running the command (or a SLURM requeue) resumes."""
    checkpoint_every: int = 500
    resume: bool = True
    """Resume from the newest readable checkpoint in the run folder if there is one."""
    overwrite: bool = False
    """Delete and restart a finished run's folder (or an unfinished one when resume=false); only ever a derd_scale run folder."""
    allow_config_change: bool = False
    """Resume even though the config differs from the run folder's config.yaml in keys that change results (docs/runs.md lists the keys that are ignored)."""


METHOD_NAMES = (
    "derd",
    "dafl",
    "dfad",
    "zskt",
    "deepinversion",
    "cmi",
    "dfard",
    "dfhl_rs",
    "ferd",
    "natural",
    "sat",
    "trades",
    "ard",
    "rslad",
    "iad",
    "mtard",
)
"""Registered training methods (``derd_scale/methods``, docs/baselines.md); derd is the default."""


@dataclass
class DAFLConfig:
    """DAFL (Chen et al. 2019): G against the teacher as a fixed critic; source: README's CIFAR-10 weights."""

    lambda_oh: float = 0.05
    """Weight of CE(T(x), argmax T(x))."""
    lambda_a: float = 0.01
    """Weight of −mean |f_T(x)| (the features entering T's classifier)."""
    lambda_ie: float = 5.0
    """Weight of Σ_c p̄_c log₁₀ p̄_c (class balance over the batch)."""


@dataclass
class DFADConfig:
    """DFAD (Fang et al. 2019): min_S max_G of the mean absolute logit gap."""

    generator_loss: Literal["l1", "log_l1"] = "l1"
    """G maximises D (the source's default) or log(D + 1) (its commented alternative)."""


@dataclass
class ZSKTConfig:
    """ZSKT (Micaelli & Storkey 2019): adversarial belief matching + attention transfer."""

    beta: float = 250.0
    """Weight of the attention-transfer term (source: 250 against PyTorch's element-mean KL)."""
    attention_layers: list[str] = field(default_factory=list)
    """Module names present in both the KD teacher and the student whose outputs are matched (e.g. [layer1, layer2, layer3] for the CIFAR ResNets); [] = no attention term."""


@dataclass
class DeepInversionConfig:
    """DeepInversion / ADI (Yin et al. 2020) on a bank of optimised images (generator.kind=implicit); NVlabs' CIFAR-10 'paper parameters'."""

    lambda_bn: float = 10.0
    """Weight of the BatchNorm-statistics distance R_BN."""
    lambda_tv: float = 2.5e-5
    """Weight of the 4-direction L2 total variation."""
    lambda_l2: float = 0.0
    lambda_adi: float = 0.0
    """Adaptive DeepInversion's competition term (NVlabs uses 0.01 when on); 0 = DeepInversion."""
    jitter: int = 2
    """Random roll of the images by up to ±jitter pixels each step."""
    student_temperature: float = 20.0
    """τ of the student's τ²·KL (the CMI framework's student side)."""


@dataclass
class CMIConfig:
    """CMI (Fang et al. 2021): DeepInversion's terms on a generator plus a contrastive term over a memory bank; zju-vipa/CMI's CIFAR-10 script."""

    lambda_bn: float = 1.0
    """Weight of the BatchNorm-statistics distance R_BN (global view)."""
    lambda_oh: float = 1.0
    """Weight of CE(T(x), y)."""
    lambda_adv: float = 0.5
    """Weight of −KL(p_T ‖ p_S) on the images where S and T agree (0 = off)."""
    lambda_cr: float = 0.8
    """Weight of the instance-contrastive term."""
    cr_temperature: float = 0.1
    """τ of the contrastive logits."""
    head_dim: int = 256
    """Output width of the MLP projection head."""
    head_lr: float = 0.001
    """Adam learning rate of the head (the source's G learning rate)."""
    bank_size: int = 4096
    """Rows of the feature memory bank (source: 40 960; checkpointed, so smaller by default)."""
    n_neg: int = 4096
    """Bank rows drawn as extra negatives per step (all of them while fewer are filled)."""
    feature_layers: list[str] = field(default_factory=list)
    """Teacher modules whose inputs' channel means are the instance features (e.g. [layer1, layer2, layer3] for the CIFAR ResNets); [] = every BatchNorm layer (the source's default)."""
    student_temperature: float = 20.0
    """τ of the -KD student's τ²·KL."""


@dataclass
class DFARDConfig:
    """DFARD-recon (BASELINES.md §A5): the paper's structure with the nearest published components; not DFARD itself."""

    lambda_adv: float = 1.0
    """Weight of −KL_B(p_Trob(x) ‖ p_S(x)) in G's loss."""
    lambda_bn: float = 1.0
    """Weight of T_rob's BatchNorm-statistics distance."""
    lambda_oh: float = 0.0
    """Weight of CE(T_rob(x), argmax T_rob(x)) (0 = off)."""
    agb: Literal["none", "ratio"] = "none"
    """Adaptive generator balance stand-in: `ratio` sets λ_bn = |L_adv| / R_BN each step (not the paper's rule)."""
    temperature: float = 1.0
    """ITA slot: only a constant temperature is specified."""


@dataclass
class DFHLRSConfig:
    """DFHL-RS (Yuan et al. 2024): hard-label robustness stealing from T_rob."""

    label_smoothing: float = 0.2
    lambda_div: float = 3.0
    """Weight of Σ p̄ log10 p̄ on the clone's batch-mean prediction."""
    hee_step: float = 0.03
    hee_steps: int = 10


@dataclass
class FERDConfig:
    """FERD-recon (mayaobuduyao/FERD, test.py + IBD_module_cmi.py): class-reweighted generator, RSLAD-style student."""

    lambda_bn: float = 5.0
    lambda_adv: float = 1.0
    """Weight of −KL_B(p_Trob ‖ p_S) in G's loss."""
    lambda_oh: float = 1.0
    """Weight of CE(T_rob(x), y) with y drawn from the class probabilities."""
    class_min: float = 0.05
    """Smallest class probability after re-weighting (the class T_rob finds easiest)."""
    class_max: float = 0.2
    clean_weight: float = 0.8333333333333334
    """Weight of KL(T(x) ‖ S(x)) in the student loss (source: 5/6 on the clean term, 1/6 on the adversarial one)."""


@dataclass
class TRADESConfig:
    beta: float = 6.0
    """Weight of KL(p_S(x) ‖ p_S(x')) next to CE(S(x), y) (source: 6 on CIFAR-10)."""


@dataclass
class ARDConfig:
    alpha: float = 1.0
    """Weight of the distillation term; 1 − alpha weighs CE on clean data (source: 1, CE off)."""
    temperature: float = 30.0


@dataclass
class IADConfig:
    variant: Literal["I", "II"] = "II"
    """IAD-I (ARD-based, T_rob) or IAD-II (AKD2-based, both teachers; the default here)."""
    beta: float = 0.1
    """Trust exponent: α_i = p_Trob(x̃_i)_{y_i}^β."""
    warmup: Optional[float] = None
    """Fraction of the steps before introspection starts; None = the source's E_warm/200 (I: 0.3, II: 0.2)."""
    temperature: float = 1.0
    a: float = 1.0
    """IAD-I: weight of the teacher and introspection terms (1 − a on CE)."""
    a1: float = 0.5
    """IAD-II: weight of the robust-teacher and introspection terms."""
    a2: float = 0.25
    """IAD-II: weight of the natural-teacher term (1 − a1 − a2 on CE of the adversarial example)."""


@dataclass
class MTARDConfig:
    eta: float = 0.025
    """Step of the online weight update."""
    power: float = 1.0
    """b in r = (L/L⁰)^b."""


@dataclass
class BaselinesConfig:
    """Methods other than DERD (``method`` != derd; docs/baselines.md). They run in Stage II's slot
    (stage1.enabled=false): one step = ``generator_steps`` G steps, then ``student_steps`` student steps;
    stage2.steps counts steps, stage2.batch_size is the (global) batch, stage2.eps the training radius."""

    variant: Literal["kd", "rslad"] = "rslad"
    """Clean-KD data-free methods (dafl, dfad, zskt, deepinversion, cmi): `kd` = the original objective on T_nat; `rslad` = the original generator on T_rob and RSLAD's student objective on the pseudo batch (BASELINES.md §0.3)."""
    generator_steps: Optional[int] = None
    """G steps per step; None = the method's source ratio (docs/baselines.md)."""
    student_steps: Optional[int] = None
    """Student steps per step; None = the method's source ratio (DFAD 5, ZSKT 10, ...)."""
    kl_scale: Literal["batchmean", "source"] = "batchmean"
    """Decision: every KL as a batch mean (one learning rate fits all rows, as DERD's); `source` = each repo's scale (BASELINES.md §0.2)."""
    attack_steps: int = 10
    """PGD steps of the student's inner maximisation (-RSLAD variants and the data-driven methods)."""
    attack_alpha: Optional[float] = None
    """PGD step size; None = ε/4 (2/255 at 8/255)."""
    attack_bn: Literal["source", "eval"] = "source"
    """Student mode during a PGD-CE attack: as in the source (train for SAT, ARD, IAD) or always eval."""
    rslad_clean_weight: float = 0.16666666666666666
    """β of RSLAD's objective (1/6): (1 − β) KL(t ‖ S(x')) + β KL(t ‖ S(x))."""
    augment: Literal["none", "crop_flip"] = "none"
    """Real-data methods: random crop (4-px pad) + horizontal flip of each training batch (the CIFAR recipe) or none."""
    dafl: DAFLConfig = field(default_factory=DAFLConfig)
    dfad: DFADConfig = field(default_factory=DFADConfig)
    zskt: ZSKTConfig = field(default_factory=ZSKTConfig)
    deepinversion: DeepInversionConfig = field(default_factory=DeepInversionConfig)
    cmi: CMIConfig = field(default_factory=CMIConfig)
    dfard: DFARDConfig = field(default_factory=DFARDConfig)
    dfhl_rs: DFHLRSConfig = field(default_factory=DFHLRSConfig)
    ferd: FERDConfig = field(default_factory=FERDConfig)
    trades: TRADESConfig = field(default_factory=TRADESConfig)
    ard: ARDConfig = field(default_factory=ARDConfig)
    iad: IADConfig = field(default_factory=IADConfig)
    mtard: MTARDConfig = field(default_factory=MTARDConfig)


@dataclass
class RunConfig:
    preset: Optional[str] = None
    """A named method preset applied under the YAML and --set (they win): derd_paper (the paper's method, the defaults) or derd_recommended (docs/derd.md)."""
    method: Literal[METHOD_NAMES] = "derd"  # type: ignore[valid-type]
    """The training method (derd_scale/methods, docs/baselines.md): derd, a data-free baseline (dafl, dfad, zskt, deepinversion, cmi, dfard, dfhl_rs, ferd) or a data-driven bound on the real training split (natural, sat, trades, ard, rslad, iad, mtard)."""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(arch="resnet18"))
    student_init: Literal["random", "natural_teacher"] = "random"
    """Not in the paper (random): ``natural_teacher`` starts the student from T_nat's weights — stem and head as they are, each stage's blocks evenly spaced from the teacher's (ResNet-56 → ResNet-20: blocks 0, 4, 8; derd_scale/models/inherit.py) — so Stage I starts near T_nat's function, not at chance. Data-free (weights only); the student must be a shallower copy of T_nat's architecture (same widths). Applies to every method; a resumed run loads its checkpoint over it."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    """Settings of the methods other than DERD (unused when method=derd)."""


def _evaluate_eval() -> EvalConfig:
    return EvalConfig(n_examples=None)


# With a run folder as `model`, these keys default to the run's config.yaml (then YAML, then --set).
EVALUATE_RUN_DEFAULTS = (
    "data",
    "eval.protocol",
    "eval.eps",
    "eval.alpha",
    "eval.steps",
    "eval.batch_size",
    "eval.restarts",
    "eval.cw_kappa",
    "eval.square_queries",
)


@dataclass
class EvaluateConfig:
    """``launch/evaluate.py``: one model, one split, one attack protocol (docs/evaluation.md).

    With a run folder as ``model``, ``data.*`` and the attack budget (``eval.protocol``, ``eps``,
    ``alpha``, ``steps``, ``batch_size``, ``restarts``, ``cw_kappa``, ``square_queries``) default
    to the run's ``config.yaml``; the YAML and ``--set`` win over them.
    """

    model: Optional[str] = None
    """What to evaluate (required): a run folder (its student/ export and config.yaml), an export folder (config.json + model.safetensors), or a checkpoint file with `arch`."""
    arch: Optional[str] = None
    """Architecture of a checkpoint file `model` (e.g. resnet4b, vit_tiny_patch16_224); unused for folders."""
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=_evaluate_eval)
    seed: int = 0
    """Attack starts and restarts."""
    out: Optional[str] = None
    """Output folder for report.json / report.md / per_example.jsonl and the resolved eval_config.yaml; None = `<run>/eval/<protocol>-<UTC time>/` for a run folder, else `eval-<model name>/`."""
    overwrite: bool = False
    """Allow replacing an existing report.json in the output folder."""

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: required: a run folder, an export folder, or a checkpoint file (with arch)")
        validate_eval(self.eval)


# --------------------------------------------------------------------------------------
# Building dataclasses from plain data, with errors that name the key
# --------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool):
            # YAML 1.1 reads a bare `no`/`off` as false: map it back to the option's spelling.
            value = next(
                (
                    a
                    for a in allowed
                    if isinstance(a, str) and a in (("yes", "on", "true") if value else ("no", "off", "false"))
                ),
                value,
            )
        if value not in allowed:
            raise ConfigError(f"{key}: invalid value {value!r}; allowed: {', '.join(map(str, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise (
            ConfigError(errors[0])
            if len(errors) == 1
            else ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot) as a string; a number written that way is still a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in hints:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{key}: unknown key; allowed: {', '.join(names)}")
    obj = cls()
    for name in names:
        if name in data:
            dotted = f"{prefix}.{name}" if prefix else name
            current = getattr(obj, name)
            value = data[name]
            if dataclasses.is_dataclass(current) and isinstance(value, dict):
                # Merge into the field's own default so nested defaults (e.g. the robust
                # teacher's arch) survive a partial mapping.
                merged = dataclasses.asdict(current)
                _deep_update(merged, value)
                value = merged
            setattr(obj, name, _coerce(value, hints[name], dotted))
    return obj


def _deep_update(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "kwargs":
            _deep_update(base[k], v)
        else:
            base[k] = v


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"{item}: override must look like key.sub=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def override_key(item: str) -> str:
    """The dotted key an override names, read as ``config_from_dict`` reads it (``" a.b = 1"`` → ``"a.b"``)."""
    return ".".join(_parse_override(item)[0])


def _check_override_path(path: list[str], root: type | None = None) -> None:
    cls: Any = root or RunConfig
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            if get_origin(cls) is dict or cls is dict:
                return  # free-form mapping (model kwargs)
            raise ConfigError(f"{'.'.join(path[:i])}: is a value, not a section")
        hints = get_type_hints(cls)
        if part not in hints:
            allowed = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"{'.'.join(path[: i + 1])}: unknown key; allowed: {allowed}")
        cls = hints[part]
        args = [a for a in get_args(cls) if a is not type(None)]
        if get_origin(cls) in (Union, types.UnionType) and len(args) == 1:
            cls = args[0]


PRESETS: dict[str, list[str]] = {
    # The paper's method exactly as printed (every dataclass default is the paper's value).
    "derd_paper": [],
    # Chosen by measurement on the Fashion-MNIST table (docs/derd.md, docs/results.md): DERD's
    # structure kept (Stage I, SA discrepancy data, both experts, SGA), with targets on the clean
    # anchor and the student's own inner maximisation started from x_d.
    "derd_recommended": [
        # Stage I: CMI's adversarial term at 0.3 and 4 G updates per student step, so G keeps finding
        # where the student still disagrees with T_nat (3 Fashion-MNIST seeds: +3.4 clean, +4.4 PGD_S
        # after Stage II; on CIFAR-10 at its budget no gain was measured, docs/derd.md).
        "stage1.lambda_adv=0.3",
        "stage1.generator_steps=4",
        "stage2.sa.ball=true",
        "stage2.eg.natural_data=gz",
        "stage2.eg.robust_target=anchor",
        "stage2.eg.robust_data=x_adv",
        "stage2.eg.robust_clean_weight=0.16666666666666666",
        "stage2.adv.start=x_d",
    ],
}


def _apply_overrides(data: dict, overrides: list[str], cls: type | None = None) -> dict:
    for item in overrides:
        path, value = _parse_override(item)
        _check_override_path(path, cls)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return data


def apply_overrides(data: dict | None, overrides: list[str] | None, cls: type | None = None) -> dict:
    """``data`` with the dotted ``key=value`` overrides applied (each key checked against ``cls``'s schema)."""
    return _apply_overrides(dict(data or {}), list(overrides or []), cls or RunConfig)


def _validator(cls: type) -> Any:
    """The range checks of a root config: ``validate`` for RunConfig, else the class's own ``validate()``."""
    if cls is RunConfig:
        return validate
    method = getattr(cls, "validate", None)
    return (lambda cfg: cfg.validate()) if callable(method) else None


def config_from_dict(data: dict | None, overrides: list[str] | None = None, cls: type | None = None) -> Any:
    """Build and validate a root config (``cls``, default RunConfig) from plain data and dotted overrides."""
    cls = cls or RunConfig
    data = _apply_overrides(dict(data or {}), overrides or [], cls)
    preset = data.get("preset") if cls is RunConfig else None
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"preset: unknown {preset!r}; allowed: {', '.join(PRESETS)}")
        # The preset sits under the YAML and --set: what the user wrote wins.
        base = _apply_overrides({}, PRESETS[preset])
        _deep_update(base, data)
        data = base
    cfg = _build(cls, data)
    check = _validator(cls)
    if check is not None:
        check(cfg)
    return cfg


def read_config_file(path: str | Path | None) -> dict:
    """The top-level mapping of a YAML config file ({} for None); one-line errors."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path) as fh:
            try:
                data = yaml.safe_load(fh) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None, cls: type | None = None) -> Any:
    """Load a root config (``cls``, default RunConfig) from YAML plus dotted overrides, validated."""
    return config_from_dict(read_config_file(path), overrides, cls)


def is_run_folder(path: str | Path) -> bool:
    """A training run's folder: its resolved config.yaml and the exported student/."""
    return (Path(path) / "config.yaml").is_file() and (Path(path) / "student").is_dir()


def load_evaluate_config(
    path: str | Path | None, overrides: list[str] | None = None, values: dict | None = None
) -> tuple[EvaluateConfig, Optional[RunConfig]]:
    """``launch/evaluate.py``'s config: the YAML, then ``--set``, then ``values`` (top-level keys
    from the CLI's aliases, e.g. ``{"out": ...}``). With a run folder as ``model``, the keys in
    ``EVALUATE_RUN_DEFAULTS`` start from the run's config.yaml. Returns (config, the run's config or None).
    """
    data = _apply_overrides(read_config_file(path), list(overrides or []), EvaluateConfig)
    data.update(values or {})
    model, run_cfg, base = data.get("model"), None, {}
    if isinstance(model, str) and model and is_run_folder(model):
        try:
            run_cfg = load_config(Path(model) / "config.yaml")
        except ConfigError as err:
            raise ConfigError(f"model: {Path(model) / 'config.yaml'}: {err}") from None
        run = to_dict(run_cfg)
        for key in EVALUATE_RUN_DEFAULTS:
            section, _, leaf = key.partition(".")
            if leaf:
                base.setdefault(section, {})[leaf] = run[section][leaf]
            else:
                base[section] = run[section]
    _deep_update(base, data)
    return config_from_dict(base, cls=EvaluateConfig), run_cfg


def _check_robust_prior_correction(cfg: RunConfig) -> None:
    """stage2.eg.robust_prior_correction: ≥ 0, and not with replay (a stored target is not corrected)."""
    s2 = cfg.stage2
    tau = s2.eg.robust_prior_correction
    if tau < 0:
        raise ConfigError(f"stage2.eg.robust_prior_correction: must be ≥ 0 (0 = off), got {tau}")
    if tau and s2.replay_steps:
        raise ConfigError(
            f"stage2.eg.robust_prior_correction: {tau} with stage2.replay_steps > 0 (a replayed anchor's stored "
            "targets are not corrected); use one of them"
        )


def _check_stage2_replay(cfg: RunConfig) -> None:
    """stage2.replay_steps: ≥ 0, and a replayed anchor has only the anchor-side targets."""
    s2 = cfg.stage2
    if s2.replay_steps < 0:
        raise ConfigError(f"stage2.replay_steps: must be ≥ 0 (0 = no replay), got {s2.replay_steps}")
    if not s2.replay_steps:
        return
    if cfg.method != "derd":
        raise ConfigError(f"stage2.replay_steps: only DERD's Stage II keeps a bank (method: {cfg.method})")
    needs = {
        "stage2.eg.natural_data": (s2.eg.natural_data, ("gz",)),
        "stage2.eg.robust_target": (s2.eg.robust_target, ("anchor", "agreed")),
        "stage2.eg.robust_data": (s2.eg.robust_data, ("x_adv",)),
        "stage2.eg.robust_mask": (s2.eg.robust_mask, ("none",)),
        "stage2.eg.class_balance": (s2.eg.class_balance, (False,)),
    }
    for key, (value, allowed) in needs.items():
        if value not in allowed:
            raise ConfigError(
                f"{key}: {value!r} with stage2.replay_steps > 0; a replayed anchor has no x_d, so it needs "
                f"{' or '.join(repr(a) for a in allowed)}"
            )


def validate(cfg: RunConfig) -> None:
    """Range checks the type system cannot express; each names its key."""

    def positive(key: str, value: float, strict: bool = True) -> None:
        if value < 0 or (strict and value == 0):
            raise ConfigError(f"{key}: must be {'>' if strict else '>='} 0, got {value}")

    for stage in ("stage1", "stage2"):
        sc = getattr(cfg, stage)
        positive(f"{stage}.steps", sc.steps, strict=False)
        positive(f"{stage}.batch_size", sc.batch_size)
        positive(f"{stage}.kd_temperature", sc.kd_temperature)
    if cfg.stage1.replay_steps < 0:
        raise ConfigError(f"stage1.replay_steps: must be ≥ 0 (0 = no replay), got {cfg.stage1.replay_steps}")
    for name in ("lambda_oh", "lambda_a", "lambda_bn", "lambda_ie", "lambda_tv", "lambda_adv", "lambda_robust_g"):
        positive(f"stage1.{name}", getattr(cfg.stage1, name), strict=False)
    # λ_robust_g adds Eq. 11 on T_rob beside G's own teacher (trainer.py::generator_update): with T_rob
    # as that teacher, in either stage, G would take Eq. 11 on T_rob twice.
    for stage, sc in (("stage1", cfg.stage1), ("stage2", cfg.stage2)):
        if sc.generator_teacher == "robust" and cfg.stage1.lambda_robust_g:
            raise ConfigError(
                f"stage1.lambda_robust_g: Eq. 11 on T_rob is already G's objective with {stage}.generator_teacher=robust; set it to 0"
            )
    positive("stage1.student_steps", cfg.stage1.student_steps)
    positive("stage1.generator_steps", cfg.stage1.generator_steps)
    positive("stage2.student_steps", cfg.stage2.student_steps)
    if cfg.stage2.generator_batch_size is not None:
        positive("stage2.generator_batch_size", cfg.stage2.generator_batch_size)
        if cfg.method != "derd":
            raise ConfigError(
                f"stage2.generator_batch_size: only DERD's Stage II updates G this way (method: {cfg.method})"
            )
        if not cfg.stage2.generator_updates:
            raise ConfigError(
                "stage2.generator_batch_size: G takes no Stage-II update (stage2.generator_updates=false); leave it null"
            )
    _check_stage2_replay(cfg)
    _check_robust_prior_correction(cfg)
    positive("stage2.sa.steps", cfg.stage2.sa.steps, strict=False)
    positive("stage2.sa.alpha", cfg.stage2.sa.alpha, strict=False)
    positive("stage2.sa.lambda_d", cfg.stage2.sa.lambda_d, strict=False)
    positive("stage2.eg.lambda_rob", cfg.stage2.eg.lambda_rob, strict=False)
    positive("stage2.eg.lambda_nat", cfg.stage2.eg.lambda_nat, strict=False)
    if not 0.0 <= cfg.stage2.eg.robust_clean_weight <= 1.0:
        raise ConfigError(f"stage2.eg.robust_clean_weight: must be in [0, 1], got {cfg.stage2.eg.robust_clean_weight}")
    positive("stage2.eg.robust_self_weight", cfg.stage2.eg.robust_self_weight, strict=False)
    if cfg.stage2.eps is not None and not 0.0 < cfg.stage2.eps <= 1.0:
        raise ConfigError(f"stage2.eps: must be in (0, 1] or null, got {cfg.stage2.eps}")
    if cfg.stage2.adv.alpha is not None:
        positive("stage2.adv.alpha", cfg.stage2.adv.alpha)
    positive("stage2.adv.steps", cfg.stage2.adv.steps)
    adv = cfg.stage2.adv
    if adv.objective == "self" and adv.start == "x_d" and not (cfg.stage2.sa.enabled and cfg.stage2.sa.steps > 0):
        # Without an SA ascent x_d is G(z), where KL(S(G(z)) ‖ S(x')) has zero gradient: PGD would never move.
        raise ConfigError(
            "stage2.adv.objective: self starting at x_d needs the self-adversary (x_d = G(z) without it); "
            "set stage2.adv.start=anchor"
        )
    positive("stage2.lr_scale", cfg.stage2.lr_scale)
    if not 0.0 <= cfg.stage2.student_ema < 1.0:
        raise ConfigError(f"stage2.student_ema: must be in [0, 1), got {cfg.stage2.student_ema}")
    if not 0.0 <= cfg.stage2.eg.ema_decay < 1.0:
        raise ConfigError(f"stage2.eg.ema_decay: must be in [0, 1), got {cfg.stage2.eg.ema_decay}")
    positive("stage2.aggregation.sigma_r", cfg.stage2.aggregation.sigma_r, strict=False)
    positive("stage2.aggregation.lambda_sga", cfg.stage2.aggregation.lambda_sga, strict=False)
    if cfg.stage2.aggregation.balance == "norm" and min(cfg.stage2.eg.lambda_nat, cfg.stage2.eg.lambda_rob) <= 0:
        raise ConfigError(
            "stage2.aggregation.balance: norm sets ‖g1‖ : ‖g2‖ = λ_nat : λ_rob and needs both > 0, got "
            f"{cfg.stage2.eg.lambda_nat} : {cfg.stage2.eg.lambda_rob}"
        )
    positive("generator.latent_dim", cfg.generator.latent_dim)
    positive("generator.base_channels", cfg.generator.base_channels)
    if cfg.generator.head != "sigmoid" and cfg.generator.kind == "implicit":
        raise ConfigError(
            f"generator.head: {cfg.generator.head!r} is a layer of the dcgan generator; kind=implicit optimises pixels (keep sigmoid)"
        )
    for which in ("student", "generator"):
        oc = getattr(cfg.optim, which)
        positive(f"optim.{which}.lr", oc.lr)
        positive(f"optim.{which}.weight_decay", oc.weight_decay, strict=False)
        if len(oc.betas) != 2:
            raise ConfigError(f"optim.{which}.betas: expected two numbers, got {oc.betas}")
        if any(not 0 < m < 1 for m in oc.milestones):
            raise ConfigError(f"optim.{which}.milestones: fractions in (0, 1), got {oc.milestones}")
    positive("distributed.gradient_accumulation_steps", cfg.distributed.gradient_accumulation_steps)
    acc = cfg.distributed.gradient_accumulation_steps
    for key, bs in (
        ("stage1.batch_size", cfg.stage1.batch_size),
        ("stage2.batch_size", cfg.stage2.batch_size),
        ("stage2.generator_batch_size", cfg.stage2.generator_batch_size),
    ):
        if bs is not None and bs % acc:
            raise ConfigError(f"{key}: {bs} is not divisible by distributed.gradient_accumulation_steps={acc}")
    if cfg.distributed.fsdp_min_params is not None:
        positive("distributed.fsdp_min_params", cfg.distributed.fsdp_min_params)
    if cfg.distributed.expected_world_size is not None:
        positive("distributed.expected_world_size", cfg.distributed.expected_world_size)
    positive("logging.every_steps", cfg.logging.every_steps)
    positive("output.checkpoint_every", cfg.output.checkpoint_every, strict=False)
    if cfg.output.name is not None:
        check_run_name(cfg.output.name)
    if not cfg.stage1.enabled and not cfg.stage2.enabled:
        raise ConfigError("stage1.enabled / stage2.enabled: at least one stage must run")
    validate_eval(cfg.eval)
    validate_baselines(cfg)
    for key, ref in (
        ("teachers.natural", cfg.teachers.natural),
        ("teachers.robust", cfg.teachers.robust),
        ("student", cfg.student),
    ):
        if (ref.mean is None) != (ref.std is None):
            raise ConfigError(f"{key}.mean / {key}.std: give both or neither")
        if ref.std is not None and any(s <= 0 for s in ref.std):
            raise ConfigError(f"{key}.std: must be > 0, got {ref.std}")


def validate_baselines(cfg: RunConfig) -> None:
    """A method other than DERD runs one stage (Stage II's slot); its settings' ranges, one line each."""
    if cfg.method == "derd":
        return
    if cfg.stage1.enabled:
        raise ConfigError(
            f"stage1.enabled: method {cfg.method} has no Stage I (it runs in Stage II's slot); set it to false"
        )
    if not cfg.stage2.enabled:
        raise ConfigError(f"stage2.enabled: method {cfg.method} trains in Stage II's slot; it must be true")
    b = cfg.baselines
    for key in ("generator_steps", "student_steps", "attack_alpha"):
        value = getattr(b, key)
        if value is not None and not value > 0:
            raise ConfigError(f"baselines.{key}: must be > 0 or null, got {value}")
    if b.attack_steps < 1:
        raise ConfigError(f"baselines.attack_steps: must be >= 1, got {b.attack_steps}")
    if not 0.0 <= b.rslad_clean_weight <= 1.0:
        raise ConfigError(f"baselines.rslad_clean_weight: must be in [0, 1], got {b.rslad_clean_weight}")
    for key in (
        "deepinversion.student_temperature",
        "cmi.student_temperature",
        "cmi.cr_temperature",
        "cmi.head_lr",
        "cmi.head_dim",
        "cmi.bank_size",
        "cmi.n_neg",
        "dfard.temperature",
        "ard.temperature",
        "iad.temperature",
    ):
        section, leaf = key.split(".")
        if not getattr(getattr(b, section), leaf) > 0:
            raise ConfigError(f"baselines.{key}: must be > 0, got {getattr(getattr(b, section), leaf)}")
    if not 0.0 <= b.dfhl_rs.label_smoothing < 1.0:
        raise ConfigError(f"baselines.dfhl_rs.label_smoothing: must be in [0, 1), got {b.dfhl_rs.label_smoothing}")
    if not 0.0 < b.ferd.class_min <= b.ferd.class_max:
        raise ConfigError(
            f"baselines.ferd.class_min / class_max: need 0 < class_min <= class_max, got {b.ferd.class_min}, {b.ferd.class_max}"
        )
    if b.iad.warmup is not None and not 0.0 <= b.iad.warmup <= 1.0:
        raise ConfigError(f"baselines.iad.warmup: must be in [0, 1] or null, got {b.iad.warmup}")
    if not 0.0 <= b.iad.a1 + b.iad.a2 <= 1.0:
        raise ConfigError(f"baselines.iad.a1 + a2: must be in [0, 1], got {b.iad.a1 + b.iad.a2}")
    if cfg.method == "deepinversion" and cfg.generator.kind != "implicit":
        raise ConfigError("generator.kind: method deepinversion optimises images directly; set it to implicit")


def check_run_name(name: str, key: str = "output.name") -> None:
    """A run folder name is a relative path inside output.root: no '..', '.', empty or
    space-padded parts, no absolute path, no backslash (overwrite deletes the folder)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key}: must be a non-empty folder name, got {name!r}")
    if name.startswith(("/", "~")) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise ConfigError(f"{key}: {name!r} must be a folder name relative to output.root, not an absolute path")
    if any(part in ("", ".", "..") or part != part.strip() for part in name.split("/")):
        raise ConfigError(f"{key}: {name!r} must stay inside output.root (no '..', '.', empty or space-padded parts)")


KNOWN_ATTACKS = ("clean", "fgsm", "pgd_s", "pgd_t", "cw", "aa", "aa_fast", "square", "transfer_pgd", "transfer_cw")


def validate_eval(ev: EvalConfig, prefix: str = "eval") -> None:
    """Range checks of the evaluation section, one line each naming the key (``eval.eps: …``).

    Run by ``validate`` (config load), ``protocol_from_config`` and ``launch/evaluate.py``.
    ``n_examples`` larger than the split is checked where the split is loaded (``evaluate``).
    """
    if ev.eps is not None and not 0.0 < ev.eps <= 1.0:
        raise ConfigError(f"{prefix}.eps: must be in (0, 1] (pixel units), got {ev.eps}")
    if ev.alpha is not None and not ev.alpha > 0.0:
        raise ConfigError(f"{prefix}.alpha: must be > 0, got {ev.alpha}")
    for key in ("steps", "restarts", "square_queries"):
        value = getattr(ev, key)
        if value is not None and not value >= 1:
            raise ConfigError(f"{prefix}.{key}: must be >= 1, got {value}")
    for key in ("batch_size", "n_examples", "probe_examples"):
        value = getattr(ev, key)
        if value is not None and not value > 0:
            raise ConfigError(f"{prefix}.{key}: must be > 0, got {value}")
    for key in ("cw_kappa", "masking_threshold", "every_steps"):
        value = getattr(ev, key)
        if not value >= 0:
            raise ConfigError(f"{prefix}.{key}: must be >= 0, got {value}")
    for key in ("attacks", "probe_attacks"):
        for attack in getattr(ev, key):
            if attack not in KNOWN_ATTACKS:
                raise ConfigError(f"{prefix}.{key}: unknown attack {attack!r}; allowed: {', '.join(KNOWN_ATTACKS)}")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


def schema_lines(cls: type = RunConfig, prefix: str = "", default: Any = None) -> list[str]:
    """One line per option of the root config ``cls``: dotted key, type, default, and the field's docstring.

    Nested sections show their field's own default (e.g. ``teachers.natural.arch = 'resnet56'``).
    """
    docs = _field_docs(cls)
    hints = get_type_hints(cls)
    default_obj = default if default is not None else cls()
    lines = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = getattr(default_obj, f.name)
        if dataclasses.is_dataclass(value):
            lines.extend(schema_lines(type(value), key + ".", value))
            continue
        doc = docs.get(f.name, "")
        lines.append(f"  {key} ({_type_name(hints[f.name])}) = {value!r}" + (f"  — {doc}" if doc else ""))
    return lines


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right after a field) from the source."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


if __name__ == "__main__":  # python -m derd_scale.config
    print("\n".join(schema_lines()))
    sys.exit(0)
