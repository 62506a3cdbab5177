"""Batched robustness evaluation over a dataset split, on one or many processes.

    report = evaluate(model, dataset, ["clean", "fgsm", "pgd_s", "pgd_t", "cw", "aa"],
                      protocol_from_config(cfg.eval, "cifar10"), n_examples=1000)
    report.save("runs/x/eval")        # report.json, report.md, per_example.jsonl

Sharding: the first N examples are cut into fixed batches *before* they are split over
ranks (rank r takes batches r, r+W, …), and each batch seeds its own random starts from
(seed, batch index). A batch is therefore attacked identically whatever the number of
processes, so a 2-process evaluation reproduces the 1-process numbers exactly; per-example
results are gathered once and re-ordered by index (no padding, nothing double-counted).

Counting: an example is robust under an attack only if it is also classified correctly
clean (the RobustBench convention), so every robust accuracy is ≤ clean accuracy.

AutoAttack: ``aa`` is the standard version (``autoattack.autoattack_standard``: APGD-CE,
APGD-T, FAB-T at 100 iterations, Square at 5000 queries, each on the points still robust);
``aa_fast`` is torchattacks' 10-iteration ``AutoAttack`` — a cheaper screen, not AutoAttack.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from . import attacks as A
from .autoattack import STANDARD, autoattack_standard, fast_budgets
from .inference import optimized_copy
from .report import EvalReport, masking_warnings

PAPER_ORDER = ("clean", "fgsm", "pgd_s", "pgd_t", "cw", "aa")


class EvaluationInputError(ValueError):
    """The data cannot be evaluated as asked (labels outside the model's classes, too few examples); one line."""


@dataclass(frozen=True)
class Protocol:
    """An L∞ attack budget in [0, 1] pixel units."""

    name: str
    eps: float
    alpha: float
    steps: int
    batch_size: int
    restarts: int = 1
    cw_kappa: float = 0.0
    square_queries: int = 5000

    def as_dict(self) -> dict:
        return dict(self.__dict__)


PRESETS = {
    # docs/method.md (the paper's protocol): CIFAR ε 8/255, step 2/255, 10 steps, batch 512; ImageNet-100 ε 0.03, step 2/255, 10 steps, batch 128.
    "cifar": Protocol("cifar", 8 / 255, 2 / 255, 10, 512),
    "imagenet100": Protocol("imagenet100", 0.03, 2 / 255, 10, 128),
    # RobustBench's ImageNet L∞ budget.
    "robustbench_imagenet": Protocol("robustbench_imagenet", 4 / 255, 1 / 255, 10, 128),
    # Our choice for 28×28 grey images: ε 0.1 (the budget our Fashion-MNIST robust teacher
    # is trained at), step 0.025, 10 steps (the step covers 2.5 ε).
    "fashion_mnist": Protocol("fashion_mnist", 0.1, 0.025, 10, 500),
}


def protocol_from_config(eval_cfg, dataset_name: str = "") -> Protocol:
    """The preset named by ``eval.protocol`` with any of eps/alpha/steps/batch_size overridden.

    Validates the section first (``config.validate_eval``: one-line ``ValueError`` naming the
    key) and warns when ``eval.eps`` overrides the preset's ε with a different value.
    """
    from ..config import validate_eval

    validate_eval(eval_cfg)
    if (
        eval_cfg.protocol in PRESETS
        and eval_cfg.eps is not None
        and abs(eval_cfg.eps - PRESETS[eval_cfg.protocol].eps) > 1e-9
    ):
        preset = PRESETS[eval_cfg.protocol]
        warnings.warn(
            f"eval.eps: {eval_cfg.eps:.6g} differs from preset {preset.name!r}'s ε = {preset.eps:.6g}; the report's protocol is named {preset.name}+override",
            stacklevel=2,
        )
    if eval_cfg.protocol == "custom":
        if eval_cfg.eps is None or eval_cfg.alpha is None or eval_cfg.steps is None:
            raise ValueError("eval.protocol=custom needs eval.eps, eval.alpha and eval.steps")
        base = Protocol(
            "custom",
            eval_cfg.eps,
            eval_cfg.alpha,
            eval_cfg.steps,
            eval_cfg.batch_size if eval_cfg.batch_size is not None else 256,
        )
    elif eval_cfg.protocol in PRESETS:
        base = PRESETS[eval_cfg.protocol]
    else:
        raise ValueError(f"eval.protocol: unknown {eval_cfg.protocol!r}; allowed: {', '.join(PRESETS)}, custom")
    return Protocol(
        base.name
        if all(v is None for v in (eval_cfg.eps, eval_cfg.alpha, eval_cfg.steps))
        else f"{base.name}+override",
        eval_cfg.eps if eval_cfg.eps is not None else base.eps,
        eval_cfg.alpha if eval_cfg.alpha is not None else base.alpha,
        eval_cfg.steps if eval_cfg.steps is not None else base.steps,
        eval_cfg.batch_size if eval_cfg.batch_size is not None else base.batch_size,
        getattr(eval_cfg, "restarts", 1),
        getattr(eval_cfg, "cw_kappa", 0.0),
        getattr(eval_cfg, "square_queries", 5000),
    )


def _attack_batch(
    name: str, model, x, y, p: Protocol, gen: torch.Generator, n_classes: int, seed: int, surrogate
) -> torch.Tensor:
    """Correctness (bool per example) of ``model`` under attack ``name`` on one batch."""
    if name == "clean":
        with torch.no_grad():
            return model(x).argmax(1) == y

    def correct(x_adv: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x_adv).argmax(1) == y

    if name == "fgsm":
        return correct(A.fgsm(model, x, y, p.eps))
    if name in ("pgd_s", "pgd_s_2x"):
        steps = p.steps * (2 if name == "pgd_s_2x" else 1)
        ok = torch.ones_like(y, dtype=torch.bool)
        for _ in range(p.restarts):  # robust only if every restart fails
            ok &= correct(A.pgd_s(model, x, y, p.eps, p.alpha, steps, generator=gen))
        return ok
    if name == "pgd_t":
        return correct(A.pgd_t(model, x, y, p.eps, p.alpha, p.steps, generator=gen))
    if name == "cw":
        ok = torch.ones_like(y, dtype=torch.bool)
        for _ in range(p.restarts):
            ok &= correct(A.cw_pgd(model, x, y, p.eps, p.alpha, p.steps, kappa=p.cw_kappa, generator=gen))
        return ok
    if name == "aa":  # the standard AutoAttack (already worst case over its four attacks, clean-wrong = False)
        return autoattack_standard(model, x, y, p.eps, n_classes, seed=seed).correct
    if name == "aa_fast":  # torchattacks' 10-iteration default: NOT AutoAttack
        return correct(A.autoattack_fast(model, x, y, p.eps, n_classes, seed=seed))
    if name == "square":
        return correct(A.square(model, x, y, p.eps, p.square_queries, seed=seed))
    if name in ("transfer_pgd", "transfer_cw"):
        if surrogate is None:
            raise ValueError(f"{name}: needs a surrogate model (eval.surrogate / --surrogate)")
        if name == "transfer_pgd":
            return correct(A.pgd_s(surrogate, x, y, p.eps, p.alpha, p.steps, generator=gen))
        return correct(A.cw_pgd(surrogate, x, y, p.eps, p.alpha, p.steps, kappa=p.cw_kappa, generator=gen))
    raise ValueError(f"unknown attack {name!r}")


class _BatchCache:
    """Finished batches of one evaluation, one JSON line each, per rank (``evaluate(resume_dir=)``).

    Every line carries the evaluation's key (attacks, protocol, n, number of batches, seed, and the
    fingerprints of the model's weights, the surrogate's and the data); lines of another evaluation
    are ignored with a warning, so a changed protocol, retrained model or other split never reuses a
    result."""

    def __init__(self, folder: Path, rank: int, key: tuple):
        self.folder = Path(folder)
        self.key = json.dumps(key, sort_keys=True, default=str)
        self.path = self.folder / f"eval-batches-rank{rank}.jsonl"

    def done(self) -> dict[int, tuple[list, dict]]:
        """Batch index → (rows, seconds per attack), from every rank's file (any earlier world size)."""
        out, stale = {}, 0
        for path in sorted(self.folder.glob("eval-batches-rank*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that batch runs again
                    continue
                if rec.get("key") != self.key:
                    stale += 1
                    continue
                out[int(rec["batch"])] = ([tuple(r) for r in rec["rows"]], rec["seconds"])
        if stale:
            warnings.warn(
                f"{self.folder}: ignored {stale} cached batches of another evaluation "
                "(attacks, protocol, n, seed, model weights or data differ)"
            )
        return out

    def add(self, batch: int, rows: list, seconds: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": self.key, "batch": batch, "rows": rows, "seconds": seconds})
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()


def model_fingerprint(model: Optional[nn.Module]) -> Optional[str]:
    """SHA-256 (16 hex digits) of the model's state dict: names, dtypes, shapes and bytes, in name order.

    A sharded tensor (DTensor) is gathered first; every rank evaluates, so every rank gathers."""
    if model is None:
        return None
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(ds, n: int) -> Optional[str]:
    """SHA-256 (16 hex digits) of the first and the last evaluated example (image bytes and label):
    another split, order or preprocessing gives another key."""
    if not n:
        return None
    import hashlib

    h = hashlib.sha256()
    for i in (0, n - 1):
        x, y = ds[i][0], int(ds[i][1])
        x = torch.as_tensor(x).detach().cpu().contiguous().float()
        h.update(f"{i}|{y}|{tuple(x.shape)}|".encode())
        h.update(x.reshape(-1).numpy().tobytes())
    return h.hexdigest()[:16]


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def evaluate(
    model: nn.Module,
    dataset,
    attacks: Sequence[str],
    protocol: Protocol,
    n_examples: Optional[int] = None,
    batch_size: Optional[int] = None,
    accelerator=None,
    seed: int = 0,
    progress: bool = True,
    surrogate: Optional[nn.Module] = None,
    masking_check: bool = False,
    masking_threshold: float = 0.10,
    resume_dir: Optional[Path] = None,
    optimized: bool = True,
) -> EvalReport:
    """Attack the first ``n_examples`` of ``dataset`` (all: None) with each of ``attacks``.

    ``resume_dir``: each finished batch is appended to ``resume_dir/eval-batches-rank{r}.jsonl``
    and a rerun with the same model weights, data, attacks, protocol, n, batch size and seed skips the
    batches already there (any process count: a batch's random starts depend only on its index),
    so a killed AutoAttack keeps what it had done. The caller deletes the folder once the report
    is saved.

    ``optimized``: the attacks run on ``inference.optimized_copy`` of the model (and of the
    surrogate): BatchNorm folded, channels-last on CPU, parameters frozen — the same network up to
    fp32 rounding; the resume key fingerprints the model's own weights either way."""
    from tqdm.auto import tqdm

    from ..distributed import world

    attacks = list(dict.fromkeys(["clean", *attacks]))  # clean first: robust counts need it
    if masking_check and "pgd_s" in attacks:
        attacks.append("pgd_s_2x")
    rank, size = world()
    is_main = rank == 0
    if n_examples is not None and not 0 < n_examples <= len(dataset):
        raise EvaluationInputError(
            f"n_examples: must be in [1, {len(dataset)}] (the split has {len(dataset)} examples), got {n_examples}"
        )
    if n_examples is not None and not hasattr(dataset, "subset"):
        dataset = [dataset[i] for i in range(n_examples)]
    ds = dataset.subset(n_examples) if hasattr(dataset, "subset") else dataset
    n = len(ds)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    n_classes = None
    was_training = model.training
    model.eval()
    if surrogate is not None:
        surrogate.eval()
    batches = _batches(n, batch_size or protocol.batch_size)
    seconds = {a: 0.0 for a in attacks}
    rows: list[tuple[int, int, list[bool]]] = []
    cache = None
    if resume_dir:
        fingerprints = (model_fingerprint(model), model_fingerprint(surrogate), data_fingerprint(ds, n))
        cache = _BatchCache(resume_dir, rank, (attacks, protocol.as_dict(), n, len(batches), seed, *fingerprints))
    done = cache.done() if cache and is_main else {}
    if cache and size > 1:
        # One view of the cache for every rank, read before any rank appends: a rank that read it
        # after a faster rank had written its first fresh batches would count those twice.
        import torch.distributed as dist

        view = [done if is_main else None]
        dist.broadcast_object_list(view, src=0)
        done = view[0]
    attacked = optimized_copy(model) if optimized else model
    attacked_surrogate = optimized_copy(surrogate) if optimized and surrogate is not None else surrogate
    if done and is_main:  # rank 0 contributes the cached batches' rows, every rank skips them
        for b, (cached_rows, cached_seconds) in sorted(done.items()):
            rows.extend((i, label, flags) for i, label, flags in cached_rows)
            for a in attacks:
                seconds[a] += cached_seconds.get(a, 0.0)
    mine = [b for b in range(rank, len(batches), size) if b not in done]
    bar = tqdm(
        total=sum(batches[b][1] - batches[b][0] for b in mine),
        desc=f"eval {protocol.name}",
        disable=not (progress and is_main),
        dynamic_ncols=True,
    )
    for b in mine:
        start, end = batches[b]
        items = [ds[i] for i in range(start, end)]
        x = torch.stack([it[0] for it in items]).to(device)
        y = torch.as_tensor([int(it[1]) for it in items], device=device)
        if n_classes is None:
            with torch.no_grad():
                n_classes = attacked(x[:1]).shape[1]
        bad = ((y < 0) | (y >= n_classes)).nonzero().flatten()
        if bad.numel():
            i = int(bad[0])
            raise EvaluationInputError(
                f"labels: example {start + i} has label {int(y[i])}, outside [0, {n_classes}) of the model's {n_classes} outputs"
            )
        per_attack, batch_seconds = [], {}
        for name in attacks:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + b * 7_919 + attacks.index(name))
            torch.manual_seed(seed * 1_000_003 + b)  # torchattacks draws from the global RNG too
            t0 = time.perf_counter()
            ok = _attack_batch(name, attacked, x, y, protocol, gen, n_classes, seed, attacked_surrogate).cpu()
            batch_seconds[name] = time.perf_counter() - t0
            seconds[name] += batch_seconds[name]
            per_attack.append(ok)
        clean_ok = per_attack[0]
        table = torch.stack([clean_ok] + [ok & clean_ok for ok in per_attack[1:]], dim=1)
        batch_rows = [(start + i, int(y[i]), table[i].tolist()) for i in range(end - start)]
        rows.extend(batch_rows)
        if cache:
            cache.add(b, batch_rows, batch_seconds)
        bar.update(end - start)
    bar.close()
    if n_classes is None and n:  # every batch of this rank came from the cache
        with torch.no_grad():
            n_classes = attacked(ds[0][0][None].to(device)).shape[1]
    model.train(was_training)

    if size > 1:
        import torch.distributed as dist

        gathered: list = [None] * size
        dist.all_gather_object(gathered, (rows, seconds))
        rows = [r for part, _ in gathered for r in part]
        seconds = {a: max(part[a] for _, part in gathered) for a in attacks}  # wall time: slowest rank
    rows.sort(key=lambda r: r[0])
    assert [r[0] for r in rows] == list(range(n)), "evaluation lost or duplicated examples"
    correct = (
        torch.tensor([r[2] for r in rows], dtype=torch.bool) if rows else torch.zeros(0, len(attacks), dtype=torch.bool)
    )
    results = {}
    for j, name in enumerate(attacks):
        results[name] = {
            "accuracy": correct[:, j].float().mean().item() if n else float("nan"),
            "correct": int(correct[:, j].sum()),
            "n": n,
            "seconds": seconds[name],
            **protocol.as_dict(),
        }
        if name == "aa":
            results[name]["autoattack"] = STANDARD.as_dict(n_classes)
        elif name == "aa_fast":
            results[name]["autoattack"] = fast_budgets(n_classes)
    report = EvalReport(
        results=results,
        protocol=protocol.as_dict(),
        n=n,
        labels=[r[1] for r in rows],
        correct=correct,
        attacks=attacks,
        world_size=size,
    )
    report.warnings = masking_warnings(report, masking_threshold)
    return report
