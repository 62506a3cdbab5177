"""CMI — Contrastive Model Inversion (Fang et al., IJCAI 2021; BASELINES.md §A4.2, §A4.3).

Sources: arXiv:2105.08584; zju-vipa/CMI (datafree/synthesis/contrastive.py: the synthesiser, its
MLP head and memory bank; datafree/hooks.py: the instance-mean hook; datafree_kd.py; the CIFAR-10
script scripts/cmi/scratch_cmi_cifar10_wrn402_wrn161.sh). Read for facts, not copied.

One G step on x = G(z) with labels y, T the KD teacher (T_nat for ``-KD``, T_rob for ``-RSLAD``),
S in eval. y: G's sampled labels (``generator.pseudo_labels=sampled``, G conditioned on them: the
table rows; the source draws random targets and learns one z per target); with ``argmax`` there are
none and y = argmax T(x_g), which makes CE DAFL's one-hot term.

    x_g    = crop_flip(x)  (4-px padded crop + flip)                        global view
    x_l    = resized_crop_flip(x; area ∈ [0.25, 1], ratio ∈ [3/4, 4/3])     local view
    L_adv  = −(1/B) Σ_i 1{argmax S(x_g)_i = argmax T(x_g)_i} · KL(p_T(x_g)_i ‖ p_S(x_g)_i)
    L_inv  = w_bn·R_BN(T; x_g) + w_oh·CE(T(x_g), y) + w_adv·L_adv
    f(v)   = ⊕_l mean_{h,w} a_l(v)    per-sample channel means of the inputs a_l of T's layers
             (every BatchNorm layer, or ``feature_layers``), concatenated
    h(f)   = normalise₂(W₂·relu(W₁ f + b₁) + b₂)                            MLP head, hidden = dim f
    A      = h([f(x_l); F_l]),  K = h([f(x_g); F_g]) detached,  (F_l, F_g) = n_neg rows of the bank
    L_cr   = mean_{i ≤ B} CE(A Kᵀ/τ_cr, i)_i + mean_{i > B} CE(A Kᵀ/τ_cr, i)_i   (2nd term: bank rows)
    L_G    = L_inv + w_cr·L_cr

The positive of anchor row i is key column i (the same image's other view); the split mean keeps
the bank's rows from drowning the current batch's gradient (the source's comment). The head is
trained on L_G with Adam (its own, never reset; lr ``head_lr``, betas (0.9, 0.999)) and, after the
step, [f(x_l), f(x_g)] of the batch enter the memory bank (a ring buffer). Student: τ²·KL_B at τ = 20
on T (``-KD``) or RSLAD's objective on T_rob (``-RSLAD``), as for DeepInversion (§A4.3).

Source defaults (CIFAR-10 script): w_bn 1, w_oh 1, w_adv 0.5, w_cr 0.8, τ_cr 0.1, head 256, bank
40 960, n_neg 4096, G/z/head Adam lr 1e-3. Deviations (docs/baselines.md): G is neither
re-initialised each round nor given learnable latents, and there is no image pool or best-iterate
selection — one G step per step and the student reads fresh batches of the current G (1 G : 1 S;
the source: 200 G iterations, then 400 student steps on the pool); the bank gets every G step's
batch, and is 4096 rows by default (it is checkpointed); with several processes the contrastive
term runs over each rank's batch (the bank and the head stay identical on every rank: the bank
takes the gathered global batch, the head the mean gradient); with gradient accumulation the head
and the bank update once per micro-batch.

Running state (``ctx.state``, checkpointed): the head's weights and Adam moments, the bank and its
write position.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..derd.losses import BNStatistics, kl_per_sample
from .augment import crop_flip, resized_crop_flip
from .base import Batch, Context, Method, kd_teacher
from .rslad import kd_or_rslad_student

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults: the source builds the head's Adam with them
ADAM_EPS = 1e-8


# --------------------------------------------------------------------------------------
# The terms
# --------------------------------------------------------------------------------------


def agreement_adv(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """L_adv = −mean_i 1{S and T agree on x_i}·KL(p_T(x_i) ‖ p_S(x_i)): G seeks images where the
    student still agrees with the teacher and pushes them apart (the mask carries no gradient)."""
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
    return -(kl_per_sample(teacher_logits, student_logits) * agree).mean()


def mlp_head(params: list, features: torch.Tensor) -> torch.Tensor:
    """h(f) = W₂·relu(W₁ f + b₁) + b₂, L2-normalised per row; ``params`` = [W₁, b₁, W₂, b₂]."""
    w1, b1, w2, b2 = params
    return F.normalize(F.linear(F.relu(F.linear(features, w1, b1)), w2, b2), dim=1, p=2)


def init_head(dim_in: int, dim_out: int, u: torch.Tensor) -> list:
    """[W₁, b₁, W₂, b₂] with nn.Linear's default init, U(−1/√fan_in, 1/√fan_in), from the uniforms
    ``u`` (at least the parameter count; drawn from the run's seed so every rank builds the same)."""
    shapes = [(dim_in, dim_in), (dim_in,), (dim_out, dim_in), (dim_out,)]
    out, offset = [], 0
    for shape in shapes:
        n = int(torch.Size(shape).numel())
        bound = 1.0 / dim_in**0.5  # fan_in is dim_in for both layers (hidden = dim_in)
        out.append(((2 * u[offset : offset + n] - 1) * bound).view(shape).clone())
        offset += n
    return out


def head_parameter_count(dim_in: int, dim_out: int) -> int:
    return dim_in * dim_in + dim_in + dim_out * dim_in + dim_out


def contrastive_loss(anchors: torch.Tensor, keys: torch.Tensor, n_current: int, temperature: float) -> torch.Tensor:
    """L_cr: row i of A Kᵀ/τ is a (len K)-way classification whose answer is column i; the mean over
    the first ``n_current`` rows (this batch) plus the mean over the rest (bank rows), if any."""
    logits = anchors @ keys.detach().T / temperature
    ce = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
    if len(ce) > n_current:
        return ce[:n_current].mean() + ce[n_current:].mean()
    return ce.mean()


def adam_step(params: list, grads: list, state: dict, lr: float) -> list:
    """One torch.optim.Adam step (betas 0.9/0.999, eps 1e-8, no weight decay) as a pure function:
    new parameter tensors (the old ones may still be in an autograd graph); moments in ``state``
    (keys m, v, t) replaced, not modified in place."""
    b1, b2 = ADAM_BETAS
    t = int(state.get("t", 0)) + 1
    m = [b1 * mi + (1 - b1) * g for mi, g in zip(state.get("m", [torch.zeros_like(p) for p in params]), grads)]
    v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(state.get("v", [torch.zeros_like(p) for p in params]), grads)]
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    new = [p - (lr / bc1) * mi / (vi.sqrt() / bc2**0.5 + ADAM_EPS) for p, mi, vi in zip(params, m, v)]
    state.update(m=m, v=v, t=t)
    return new


def bank_add(bank: torch.Tensor, ptr: int, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The ring buffer with ``rows`` written from position ``ptr`` (wrapping); a new tensor."""
    idx = (ptr + torch.arange(len(rows), device=bank.device)) % len(bank)
    out = bank.clone()
    out[idx] = rows.detach().to(bank.dtype)
    return out, int((ptr + len(rows)) % len(bank))


def bank_sample(bank: torch.Tensor, filled: int, k: int, u: torch.Tensor) -> torch.Tensor:
    """min(k, filled) distinct rows of the filled part, chosen by ranking the uniforms ``u``
    (one per filled row): sampling without replacement, as the source's random.sample."""
    if filled == 0:
        return bank[:0]
    order = torch.argsort(u[:filled])[: min(k, filled)]
    return bank[order.to(bank.device)]


# --------------------------------------------------------------------------------------
# Features: per-sample channel means of layer inputs
# --------------------------------------------------------------------------------------


def _layers(model: nn.Module, names: list) -> list:
    if not names:
        return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    out = []
    for name in names:
        for candidate in (name, f"model.{name}"):  # derd_scale wraps the backbone as ``model``
            try:
                out.append(model.get_submodule(candidate))
                break
            except AttributeError:
                continue
        else:
            raise ValueError(f"baselines.cmi.feature_layers: {type(model).__name__} has no module {name!r}")
    return out


@contextmanager
def instance_means(model: nn.Module, names: list) -> Iterator[list]:
    """Inside the block, every forward of ``model`` appends f(v) (B × Σ channels) to the list."""
    layers = _layers(model, names)
    if not layers:
        raise ValueError(
            f"baselines.cmi.feature_layers: {type(model).__name__} has no BatchNorm layer; name the layers to use"
        )
    current: list = []
    out: list = []

    def hook(module, inputs, output):
        a = inputs[0].float()
        current.append(a.mean(dim=tuple(range(2, a.dim()))) if a.dim() > 2 else a)
        if len(current) == len(layers):
            out.append(torch.cat(current, dim=1))
            current.clear()

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------


def _generator(ctx: Context, x: torch.Tensor, y: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    s = ctx.settings.cmi
    teacher = kd_teacher(ctx)
    b = x.shape[0]
    x_g = crop_flip(x, ctx.uniform((b, 3)).to(x.device))
    x_l = resized_crop_flip(x, ctx.uniform((b, 5)).to(x.device))
    with instance_means(teacher, list(s.feature_layers)) as feats:
        with BNStatistics(teacher, ctx.batch_mean) as bn:
            t_logits = teacher(x_g).float()
        teacher(x_l)
    f_g, f_l = feats
    targets = y if y is not None else t_logits.detach().argmax(1)
    l_bn = bn.loss().to(x.device)
    l_oh = F.cross_entropy(t_logits, targets)
    l_adv = (
        agreement_adv(ctx.plain_student(x_g).float(), t_logits) if s.lambda_adv else torch.zeros((), device=x.device)
    )
    l_inv = s.lambda_bn * l_bn + s.lambda_oh * l_oh + s.lambda_adv * l_adv

    st, dim = ctx.state, f_g.shape[1]
    if "cmi_head" not in st:
        u = ctx.shared_uniform((head_parameter_count(dim, s.head_dim),))
        st.update(
            cmi_head=init_head(dim, s.head_dim, u.cpu()),
            cmi_adam={},
            cmi_bank=torch.zeros(s.bank_size, 2 * dim),
            cmi_bank_ptr=0,
            cmi_bank_filled=0,
        )
    head = [p.to(x.device).requires_grad_(True) for p in st["cmi_head"]]
    bank, filled = st["cmi_bank"], int(st["cmi_bank_filled"])
    cached = bank_sample(bank, filled, s.n_neg, ctx.shared_uniform((max(filled, 1),)).cpu()).to(x.device)
    c_l, c_g = cached[:, :dim], cached[:, dim:]
    anchors = mlp_head(head, torch.cat([f_l, c_l]))
    keys = mlp_head(head, torch.cat([f_g, c_g]))
    l_cr = contrastive_loss(anchors, keys, b, s.cr_temperature)
    loss = l_inv + s.lambda_cr * l_cr

    # The head learns on L_G (only L_cr reaches it); the loop then differentiates L_G w.r.t. x alone.
    grads = torch.autograd.grad(s.lambda_cr * l_cr, head, retain_graph=True)
    grads = [ctx.global_mean(g) for g in grads]
    adam = dict(st["cmi_adam"])
    new_head = adam_step([p.detach() for p in head], grads, adam, s.head_lr)
    rows = ctx.all_gather(torch.cat([f_l, f_g], dim=1).detach()).cpu()
    new_bank, ptr = bank_add(bank, int(st["cmi_bank_ptr"]), rows)
    st.update(
        cmi_head=[p.cpu() for p in new_head],
        cmi_adam={"m": [m.cpu() for m in adam["m"]], "v": [v.cpu() for v in adam["v"]], "t": adam["t"]},
        cmi_bank=new_bank,
        cmi_bank_ptr=ptr,
        cmi_bank_filled=min(filled + len(rows), s.bank_size),
    )
    parts = {"l_bn": l_bn.detach(), "l_oh": l_oh.detach(), "l_adv": l_adv.detach(), "l_cr": l_cr.detach()}
    parts["l_g"] = loss.detach()
    return loss, parts


def _student(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict]:
    return kd_or_rslad_student(ctx, batch.x, ctx.settings.cmi.student_temperature)


METHOD = Method(
    name="cmi",
    data="free",
    student_objective=_student,
    generator_objective=_generator,
    generator_steps=1,
    student_steps=1,
    student_batches="fresh",
    variants=("kd", "rslad"),
)
