"""Gradient aggregation (GA, Eqs. 18–21) and stochastic gradient aggregation (SGA, Eqs. 22–26).

Pure tensor math over lists of gradient tensors. Nothing here knows how the gradients were
obtained or whether they are whole or a shard: the caller passes ``all_reduce``, a function
that sums a small tensor across ranks (identity in one process, one collective when every
rank holds a different shard). Only the three partial sums — g1·g2, ‖g1‖², ‖g2‖² — and the
SGA norm ‖r⊙θ‖² cross that boundary, always in fp32.

GA (Eq. 18 as printed):
    if g1·g2 < 0:  τ1 = 1 − (g1·g2)/‖g1‖²,  τ2 = 1 − (g1·g2)/‖g2‖²    else τ1 = τ2 = 1
    g = τ1 g1 + τ2 g2
SGA (Eqs. 22–26): g += λ_SGA · ∇_θ [τ ‖r⊙θ‖₂] = λ_SGA · τ (r⊙r⊙θ)/‖r⊙θ‖₂,
    r ~ N(0, σ_r² I), drawn as a deterministic function of (seed, step, name, element index).
Norm balance (not in the paper, ``balance="norm"``): before GA, g_i ← s_i g_i with
    s_i = w_i m / ‖g_i‖,   m = ½ (‖g1‖/w1 + ‖g2‖/w2),   w = (λ_nat, λ_rob),
so ‖g1‖ : ‖g2‖ = λ_nat : λ_rob whatever the tasks' own gradient scales. GA gives each task
g·g_i = ‖g_i‖²(1 − cos²): without the balance the task with the larger gradient takes the larger
share of the progress (on the CIFAR-10 recipe ‖g1‖ ≈ 1.7 ‖g2‖, so the natural task got ~2.9×
the robust task's), with it the shares follow the λ's (equal at λ_nat = λ_rob).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

AllReduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class AggregationStats:
    dot: float
    norm1: float
    norm2: float
    cos: float
    tau1: float
    tau2: float
    sga_norm: float = 0.0
    """‖λ_SGA · ∇L_SGA‖₂, the size of the SGA term added to g."""
    scale1: float = 1.0
    scale2: float = 1.0
    """s1, s2 of the norm balance (1 without it); norm1/norm2/dot/cos are the gradients' as given."""


def balance_scales(
    sq1: torch.Tensor, sq2: torch.Tensor, weights: tuple[float, float] = (1.0, 1.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The norm balance's s1, s2 (module docstring): s_i = w_i m / ‖g_i‖ with
    m = ½ (‖g1‖/w1 + ‖g2‖/w2), from ‖g1‖², ‖g2‖² and w = (λ_nat, λ_rob) (both > 0; g_i already
    carries its w_i, so m is the mean norm of the unweighted task gradients). A zero gradient (e.g.
    every sample of L_2 masked) has no direction to scale: it keeps s = 0, m is the other's
    unweighted norm and the other gradient is left as it is (s = 1)."""
    w1, w2 = weights
    if w1 <= 0 or w2 <= 0:
        raise ValueError(f"balance weights must be > 0, got {weights}")
    norm1, norm2 = sq1.sqrt(), sq2.sqrt()
    m = (norm1 / w1 + norm2 / w2) / ((norm1 > 0).float() + (norm2 > 0).float()).clamp_min(1)
    tiny = torch.finfo(torch.float32).tiny
    s1 = torch.where(norm1 > 0, w1 * m / norm1.clamp_min(tiny), torch.zeros_like(m))
    s2 = torch.where(norm2 > 0, w2 * m / norm2.clamp_min(tiny), torch.zeros_like(m))
    return s1, s2


def ga_coefficients(dot: torch.Tensor, sq1: torch.Tensor, sq2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 18: τ1, τ2 from g1·g2, ‖g1‖², ‖g2‖² (tensors, any shape; elementwise)."""
    conflict = dot < 0
    tiny = torch.finfo(torch.float32).tiny
    tau1 = torch.where(conflict, 1 - dot / sq1.clamp_min(tiny), torch.ones_like(dot))
    tau2 = torch.where(conflict, 1 - dot / sq2.clamp_min(tiny), torch.ones_like(dot))
    return tau1, tau2


def aggregate_gradients(
    g1: Sequence[torch.Tensor],
    g2: Sequence[torch.Tensor],
    method: str = "ga",
    granularity: str = "global",
    all_reduce: Optional[AllReduce] = None,
    balance: str = "none",
    weights: tuple[float, float] = (1.0, 1.0),
) -> tuple[list[torch.Tensor], AggregationStats]:
    """Combine the two task gradients (Eqs. 18–21). ``method`` is ``sum`` (g1 + g2) or ``ga``
    (τ-weighted). ``aggregate`` below is the entry point that adds SGA's term (Eqs. 22–26).

    ``granularity='global'`` treats all tensors as one flat vector (Decision);
    ``per_tensor`` computes τ per tensor. Returned stats are always the global ones.
    ``balance='norm'`` first rescales g1, g2 to norms in the ratio ``weights`` (= λ_nat : λ_rob,
    ``balance_scales``); the scales are global scalars, so every shard and every tensor agrees.
    """
    all_reduce = all_reduce or _identity
    if len(g1) != len(g2):
        raise ValueError("g1 and g2 must have one tensor per parameter")
    # Per-tensor partial sums in fp32 (bf16 shards would lose the sums' precision).
    sums = (
        torch.stack(
            [
                torch.stack([(a.float() * b.float()).sum(), a.float().pow(2).sum(), b.float().pow(2).sum()])
                for a, b in zip(g1, g2)
            ]
        )
        if g1
        else torch.zeros(0, 3)
    )
    sums = all_reduce(sums)  # one collective: [n_tensors, 3]
    total = sums.sum(dim=0)
    dot, sq1, sq2 = total[0], total[1], total[2]
    norm1, norm2 = sq1.sqrt(), sq2.sqrt()
    cos = (dot / (norm1 * norm2).clamp_min(1e-30)).item()
    given = (dot.item(), norm1.item(), norm2.item())
    if balance == "norm":
        s1, s2 = balance_scales(sq1, sq2, weights)
        # The three sums are rescaled, not recomputed: no second pass over the gradients, no second collective.
        sums = sums * torch.stack([s1 * s2, s1 * s1, s2 * s2])
        dot, sq1, sq2 = dot * s1 * s2, sq1 * s1 * s1, sq2 * s2 * s2
    elif balance == "none":
        s1 = s2 = torch.ones(())
    else:
        raise ValueError(f"balance: {balance!r}; allowed: none, norm")
    # The balance's scales ride on the combine's coefficients (τ_i s_i): the gradients are read once.
    if method == "sum":
        tau1 = tau2 = torch.ones(())
        if balance == "none":
            combined = [a + b for a, b in zip(g1, g2)]
        else:
            combined = [(s1 * a.float() + s2 * b.float()).to(a.dtype) for a, b in zip(g1, g2)]
    elif method == "ga":
        if granularity == "global":
            tau1, tau2 = ga_coefficients(dot, sq1, sq2)
            c1, c2 = tau1 * s1, tau2 * s2
            combined = [(c1 * a.float() + c2 * b.float()).to(a.dtype) for a, b in zip(g1, g2)]
        elif granularity == "per_tensor":
            t1, t2 = ga_coefficients(sums[:, 0], sums[:, 1], sums[:, 2])
            c1, c2 = t1 * s1, t2 * s2
            combined = [(c1[i] * a.float() + c2[i] * b.float()).to(a.dtype) for i, (a, b) in enumerate(zip(g1, g2))]
            tau1, tau2 = ga_coefficients(dot, sq1, sq2)  # logged: the global view
        else:
            raise ValueError(f"granularity: {granularity!r}; allowed: global, per_tensor")
    else:
        raise ValueError(f"method: {method!r}; allowed: sum, ga")
    stats = AggregationStats(*given, cos, float(tau1), float(tau2), scale1=float(s1), scale2=float(s2))
    return combined, stats


# --------------------------------------------------------------------------------------
# Deterministic SGA noise
# --------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for x in [0, 2³²) held in int64, without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32, Wellons) on int64 tensors with values in [0, 2³²)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def _hash32_int(x: int) -> int:
    """``hash32`` on one Python int (the keys are a handful of host-side scalars per step)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    x ^= x >> 16
    return x


def _key(*parts: int) -> int:
    k = 0
    for p in parts:
        k = _hash32_int(k ^ (p & _M32))
    return k


def _noise_from_keys(key, indices: torch.Tensor, sigma: float) -> torch.Tensor:
    """Box–Muller N(0, σ²) from two hashed uniforms of (key, index), elementwise; ``key`` is one
    int or an int64 tensor shaped like ``indices``."""
    idx = indices.to(torch.int64)
    h_lo = hash32((idx & _M32) ^ key)
    h = hash32(h_lo ^ (idx >> 32) ^ 0x5BD1E995)
    h2 = hash32(h ^ 0x68E31DA4)
    u1 = (h.double() + 1.0) / 4294967297.0  # (0, 1): log is finite
    u2 = h2.double() / 4294967296.0
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)
    return (sigma * z).float()


def sga_noise(seed: int, step: int, name: str, indices: torch.Tensor, sigma: float) -> torch.Tensor:
    """r for the elements ``indices`` (flat indices into the full parameter ``name``):
    N(0, σ²) by Box–Muller from two hashed uniforms. The same (seed, step, name, index)
    always gives the same value, on any rank and any sharding layout."""
    return _noise_from_keys(_key(seed, step, zlib.crc32(name.encode())), indices, sigma)


def sga_noise_many(
    seed: int, step: int, names: Sequence[str], indices: Sequence[torch.Tensor], sigma: float
) -> list[torch.Tensor]:
    """``[sga_noise(seed, step, n, i, sigma) for n, i in zip(names, indices)]``, bit for bit, in one
    hash pass over the concatenated indices (each element carrying its tensor's key), where the
    per-tensor loop launches ~30 small kernels per tensor: on a GPU that loop cost 0.05 s of
    ResNet-20's and 0.2 s of ViT-T's Stage-II step (docs/performance.md, "GPU")."""
    if not names:
        return []
    device = indices[0].device
    sizes = [i.numel() for i in indices]
    keys = torch.tensor([_key(seed, step, zlib.crc32(n.encode())) for n in names], dtype=torch.int64, device=device)
    per_element = keys.repeat_interleave(torch.tensor(sizes, device=device), output_size=sum(sizes))
    flat = torch.cat([i.reshape(-1).to(device=device, dtype=torch.int64) for i in indices])
    return list(_noise_from_keys(per_element, flat, sigma).split(sizes))


def _noise_device(param: torch.Tensor) -> torch.device:
    """Where ``sga_noise`` runs for ``param``: its own device, except where float64 (Box–Muller's
    log and cos) is missing (Apple's MPS), there the host."""
    return torch.device("cpu") if param.device.type == "mps" else param.device


def sga_gradient(
    params: Sequence[torch.Tensor],
    noise: Sequence[torch.Tensor],
    tau: float,
    all_reduce: Optional[AllReduce] = None,
) -> tuple[list[torch.Tensor], float]:
    """∇_θ [τ‖r⊙θ‖₂] = τ (r⊙r⊙θ)/‖r⊙θ‖₂ with the norm over all (possibly sharded) tensors.

    Returns the per-tensor gradients and ‖r⊙θ‖₂.
    """
    all_reduce = all_reduce or _identity
    sq = (
        torch.stack([(r * p.detach().float()).pow(2).sum() for p, r in zip(params, noise)]).sum()
        if params
        else torch.zeros(())
    )
    norm = all_reduce(sq.reshape(1)).squeeze(0).sqrt()
    scale = tau / norm.clamp_min(1e-30)
    grads = [(scale * r * r * p.detach().float()).to(p.dtype) for p, r in zip(params, noise)]
    return grads, float(norm)


def sga_tau(tau1: float, tau2: float, mode: str) -> float:
    """τ of L_SGA = τ‖r⊙θ‖₂ (the paper leaves it open): mean of τ1, τ2 (default), their sum, or 1."""
    if mode == "mean":
        return 0.5 * (tau1 + tau2)
    if mode == "sum":
        return tau1 + tau2
    if mode == "one":
        return 1.0
    raise ValueError(f"sga_tau: {mode!r}; allowed: mean, sum, one")


def aggregate(
    g1: Sequence[torch.Tensor],
    g2: Sequence[torch.Tensor],
    shards: Sequence,
    method: str,
    *,
    granularity: str = "global",
    seed: int = 0,
    step: int = 0,
    sigma_r: float = 0.01,
    lambda_sga: float = 1.0,
    tau_mode: str = "mean",
    all_reduce: Optional[AllReduce] = None,
    balance: str = "none",
    weights: tuple[float, float] = (1.0, 1.0),
) -> tuple[list[torch.Tensor], AggregationStats]:
    """Stage II's update direction, the one home of ``stage2.aggregation.method``:

        sum:  g = g1 + g2                                            (SA + EG)
        ga:   g = τ1 g1 + τ2 g2                                      (Eqs. 18–21)
        sga:  g = τ1 g1 + τ2 g2 + λ_SGA ∇_θ[τ ‖r⊙θ‖₂]                 (Eqs. 22–26)

    with g1, g2 first rescaled by the norm balance when ``balance='norm'`` (``weights`` = (λ_nat, λ_rob)).

    ``shards`` are this rank's views of the parameters (``.name``, ``.param``, ``.indices``:
    flat indices into the full parameter), in the order of ``g1``/``g2``; r is drawn from
    (seed, step, name, index), so it is the same on any layout. ``stats.sga_norm`` is
    ‖λ_SGA ∇L_SGA‖₂ over all shards (0 without the term).
    """
    all_reduce = all_reduce or _identity
    if method not in ("sum", "ga", "sga"):
        raise ValueError(f"method: {method!r}; allowed: sum, ga, sga")
    combined, stats = aggregate_gradients(
        g1, g2, "sum" if method == "sum" else "ga", granularity, all_reduce, balance=balance, weights=weights
    )
    if method != "sga" or lambda_sga <= 0 or sigma_r <= 0:
        return combined, stats
    # r is hashed where the parameter lives: on a GPU, hashing a ViT-T's 5.7 M indices on the host
    # and copying r over took 0.2 s of a 1 s Stage-II step (docs/performance.md, "GPU").
    # r is hashed where the parameters live, all tensors in one pass (sga_noise_many's docstring).
    where = _noise_device(shards[0].param) if shards else torch.device("cpu")
    noise = sga_noise_many(seed, step, [v.name for v in shards], [v.indices.to(where) for v in shards], sigma_r)
    noise = [r.to(v.param.device).view_as(v.param) for r, v in zip(noise, shards)]
    tau = sga_tau(stats.tau1, stats.tau2, tau_mode)
    extra, _ = sga_gradient([v.param for v in shards], noise, tau, all_reduce)
    extra = [lambda_sga * e for e in extra]
    sq = torch.stack([e.float().pow(2).sum() for e in extra]).sum() if extra else torch.zeros(())
    stats.sga_norm = float(all_reduce(sq.reshape(1)).sqrt())
    return [c + e.to(c.dtype).view_as(c) for c, e in zip(combined, extra)], stats
