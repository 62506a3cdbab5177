"""Standard AutoAttack (Croce & Hein, ICML 2020), L∞, assembled from torchattacks' components.

``torchattacks.AutoAttack(version="standard")`` (3.5.1) is *not* the standard AutoAttack: it
builds APGD-CE, APGD-T and FAB-T with torchattacks' default 10 iterations instead of 100
(torchattacks issue #196), uses n_classes − 1 target classes instead of 9 (99 on CIFAR-100)
and runs Square with the rescaled p-schedule. ``autoattack_standard`` below builds each
component with the budgets of the reference implementation (fra31/auto-attack,
``AutoAttack(version='standard')`` → ``set_version('standard')``, norm Linf):

=========  ==========================================================================
APGD-CE    100 iterations, 1 restart, ρ = 0.75, EOT 1, cross-entropy loss
APGD-T     100 iterations, 1 restart, ρ = 0.75, targeted DLR loss, 9 target classes
FAB-T      100 iterations, 1 restart, 9 target classes (α_max 0.1, η 1.05, β 0.9)
Square     5000 queries, 1 restart, p_init 0.8, margin loss, no schedule rescaling
=========  ==========================================================================

Target classes are min(9, n_classes − 1): the reference fixes 9 and only warns when the
model has fewer outputs (``checks.check_n_classes``); the targeted DLR loss needs ≥ 4.

Like the reference's ``run_standard_evaluation``, the attacks run in that order and each
attacks only the examples that are still robust (clean-correct and not yet fooled), so an
example counts as robust only if all four fail (the worst case over the four). Each
component's ``perturb`` seeds the global torch RNG with ``seed`` as the reference does
(every attack gets the same seed); we run it inside ``torch.random.fork_rng`` so the
caller's RNG stream is left untouched, and the result is deterministic under a seed.

Differences from the reference that remain (none changes a budget):

- the reference attacks the robust points in batches of 250 gathered over the whole
  data set; we attack within the caller's batch, so the random draws (APGD's start,
  Square's squares) differ for the same seed — the budgets and the order do not;
- torchattacks' Square does not cap the square side at the image side (the reference
  does, ``s = min(s, min(h, w))``); with p_init 0.8 the side is ≤ 0.9·h, so it never binds;
- the reference's sanity checks (randomised / non-logit outputs, dynamic models) are not
  run; as a safety net an example counts as fooled only if its adversarial point lies in
  the ε-ball and the [0, 1] box (within 1e-5) and the model misclassifies it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

ORDER = ("apgd-ce", "apgd-t", "fab-t", "square")
BOX_TOL = 1e-5


@dataclass(frozen=True)
class AutoAttackBudgets:
    """The budgets of each AutoAttack component (defaults: the reference's standard version)."""

    version: str = "standard"
    apgd_steps: int = 100
    apgd_restarts: int = 1
    apgd_rho: float = 0.75
    apgdt_steps: int = 100
    apgdt_restarts: int = 1
    apgdt_target_classes: int = 9
    fab_steps: int = 100
    fab_restarts: int = 1
    fab_target_classes: int = 9
    square_queries: int = 5000
    square_restarts: int = 1
    square_p_init: float = 0.8
    square_rescale_schedule: bool = False

    def targets(self, n_classes: int, which: str) -> int:
        want = self.apgdt_target_classes if which == "apgd-t" else self.fab_target_classes
        return min(want, n_classes - 1)

    def as_dict(self, n_classes: Optional[int] = None) -> dict:
        """Flat budgets as written into report.json (target counts resolved for ``n_classes``)."""
        out = {
            "version": self.version,
            "attacks": ",".join(ORDER),
            "norm": "Linf",
            **{k: v for k, v in asdict(self).items() if k != "version"},
        }
        if n_classes is not None:
            out["apgdt_target_classes"] = self.targets(n_classes, "apgd-t")
            out["fab_target_classes"] = self.targets(n_classes, "fab-t")
        out["implementation"] = (
            f"torchattacks {_torchattacks_version()} components (APGD, APGDT, FAB, Square) with these budgets"
        )
        return out


STANDARD = AutoAttackBudgets()


def fast_budgets(n_classes: Optional[int] = None) -> dict:
    """What ``aa_fast`` (``torchattacks.AutoAttack(version="standard")``, unchanged) runs: NOT AutoAttack."""
    targets = None if n_classes is None else n_classes - 1
    return {
        "version": "torchattacks-default (not the standard AutoAttack)",
        "attacks": ",".join(ORDER),
        "norm": "Linf",
        "apgd_steps": 10,
        "apgd_restarts": 1,
        "apgd_rho": 0.75,
        "apgdt_steps": 10,
        "apgdt_restarts": 1,
        "apgdt_target_classes": targets,
        "fab_steps": 10,
        "fab_restarts": 1,
        "fab_target_classes": targets,
        "square_queries": 5000,
        "square_restarts": 1,
        "square_p_init": 0.8,
        "square_rescale_schedule": True,
        "implementation": f"torchattacks {_torchattacks_version()} AutoAttack(version='standard')",
    }


def _torchattacks_version() -> str:
    try:
        import torchattacks

        return torchattacks.__version__
    except Exception:  # pragma: no cover - torchattacks is a dependency
        return "?"


def build_standard_components(
    model, eps: float, n_classes: int, seed: int = 0, budgets: AutoAttackBudgets = STANDARD
) -> list[tuple[str, object]]:
    """The four torchattacks attack objects of the standard version, in the reference's order."""
    import torchattacks

    if n_classes < 4:
        raise ValueError(
            f"autoattack_standard: the targeted DLR loss of APGD-T needs at least 4 classes, the model has {n_classes}"
        )
    apgd = torchattacks.APGD(
        model,
        norm="Linf",
        eps=eps,
        steps=budgets.apgd_steps,
        n_restarts=budgets.apgd_restarts,
        seed=seed,
        loss="ce",
        eot_iter=1,
        rho=budgets.apgd_rho,
    )
    apgdt = torchattacks.APGDT(
        model,
        norm="Linf",
        eps=eps,
        steps=budgets.apgdt_steps,
        n_restarts=budgets.apgdt_restarts,
        seed=seed,
        eot_iter=1,
        rho=budgets.apgd_rho,
        n_classes=n_classes,
    )
    apgdt.n_target_classes = budgets.targets(n_classes, "apgd-t")  # torchattacks: n_classes − 1; reference: 9
    fab = torchattacks.FAB(
        model,
        norm="Linf",
        eps=eps,
        steps=budgets.fab_steps,
        n_restarts=budgets.fab_restarts,
        alpha_max=0.1,
        eta=1.05,
        beta=0.9,
        seed=seed,
        multi_targeted=True,
        n_classes=n_classes,
    )
    fab.n_target_classes = budgets.targets(n_classes, "fab-t")
    square = torchattacks.Square(
        model,
        norm="Linf",
        eps=eps,
        n_queries=budgets.square_queries,
        n_restarts=budgets.square_restarts,
        p_init=budgets.square_p_init,
        loss="margin",
        resc_schedule=budgets.square_rescale_schedule,
        seed=seed,
    )
    return list(zip(ORDER, (apgd, apgdt, fab, square)))


@dataclass
class AutoAttackResult:
    correct: torch.Tensor
    """Per example: still classified correctly after all four attacks (False if clean-wrong)."""
    x_adv: torch.Tensor
    """The first successful adversarial example per fooled point, else the clean input."""
    fooled_by: list
    """Per example: the component that fooled it ("clean" if clean-wrong), or None."""


def _fork_rng(device: torch.device):
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    return torch.random.fork_rng(devices=devices)


def autoattack_standard(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    n_classes: int,
    seed: int = 0,
    budgets: AutoAttackBudgets = STANDARD,
) -> AutoAttackResult:
    """Standard AutoAttack on one batch (x in [0, 1]); each component attacks only points still robust."""
    components = build_standard_components(model, eps, n_classes, seed, budgets)
    x, y = x.detach(), y.detach()
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    fooled_by: list = [None if ok else "clean" for ok in robust.tolist()]
    x_adv = x.clone()
    with _fork_rng(x.device):
        for name, attack in components:
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            adv = attack(x[idx], y[idx]).detach()
            with torch.no_grad():
                wrong = model(adv).argmax(1) != y[idx]
            delta = (adv - x[idx]).abs().flatten(1).amax(1)
            inside = (
                (delta <= eps + BOX_TOL)
                & (adv.flatten(1).amin(1) >= -BOX_TOL)
                & (adv.flatten(1).amax(1) <= 1 + BOX_TOL)
            )
            hit = idx[wrong & inside]
            robust[hit] = False
            x_adv[hit] = adv[wrong & inside]
            for i in hit.tolist():
                fooled_by[i] = name
    return AutoAttackResult(correct=robust, x_adv=x_adv, fooled_by=fooled_by)
