"""Evaluation report: JSON, a Markdown table in the paper's column order, per-example
records, and gradient-masking warnings.

Files written by ``EvalReport.save(dir)``:
  report.json        {"protocol", "n", "interval", "attacks": {name: {accuracy, correct, n, ci95, seconds, eps, ...,
                      autoattack (aa/aa_fast: version and component budgets)}}, "ave", "warnings",
                      "monotonicity_violations", "per_class": {attack: {"accuracy": [per class], "n": [per class]}}}
                     — strict JSON: a NaN (n = 0, or a class without examples) is written as null
  report.md          | Clean | FGSM | PGD_S | PGD_T | CW | AA | Ave |  (+ other attacks, warnings), each
                     accuracy with its 95 % Wilson interval and n
  per_example.jsonl  {"index", "label", "correct": {attack: bool}, "first_fooled_by": attack|null}

``aa`` is the standard AutoAttack; ``aa_fast`` (torchattacks' 10-iteration default) is labelled
``aa_fast`` everywhere, never AA.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

PAPER_COLUMNS = (
    ("clean", "Clean"),
    ("fgsm", "FGSM"),
    ("pgd_s", "PGD_S"),
    ("pgd_t", "PGD_T"),
    ("cw", "CW"),
    ("aa", "AA"),
)
OTHER_NAMES = {
    "aa_fast": "aa_fast",
    "square": "Square",
    "transfer_pgd": "Transfer PGD",
    "transfer_cw": "Transfer CW",
    "pgd_s_2x": "PGD_S (2× steps)",
}
AA_FAST_NOTE = (
    "aa_fast is torchattacks' AutoAttack with its default 10 iterations per attack (the standard AutoAttack runs 100): "
    "a cheaper screen, not AutoAttack; AA is the standard version"
)
INTERVAL = "Wilson score interval, 95 %"
# The report's per-attack accuracy as an `evaluate` module: evaluate.load(str(ROBUST_ACCURACY)), offline.
ROBUST_ACCURACY = Path(__file__).resolve().parent.parent / "resources" / "robust_accuracy"
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> Optional[tuple[float, float]]:
    """Wilson score interval for k successes out of n (None when n = 0)."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: k = {k} successes is outside [0, n = {n}]")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _finite_or_none(value):
    """NaN/inf → None, recursively, so that report.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


@dataclass
class EvalReport:
    results: dict
    protocol: dict
    n: int
    labels: list
    correct: torch.Tensor
    """n × attacks booleans (robust counted only when also clean-correct)."""
    attacks: list
    world_size: int = 1
    warnings: list = field(default_factory=list)

    def accuracy(self, attack: str) -> Optional[float]:
        r = self.results.get(attack)
        return None if r is None else r["accuracy"]

    @property
    def ave(self) -> Optional[float]:
        """Mean of the six paper columns (only when all six were run)."""
        vals = [self.accuracy(a) for a, _ in PAPER_COLUMNS]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)

    def first_fooled_by(self) -> list[Optional[str]]:
        """Per example, the first attack (in the paper's order, then the rest) that fooled it."""
        order = [a for a, _ in PAPER_COLUMNS if a in self.attacks] + [
            a for a in self.attacks if a not in dict(PAPER_COLUMNS)
        ]
        cols = [self.attacks.index(a) for a in order]
        out = []
        for row in self.correct.tolist():
            out.append(next((order[k] for k, j in enumerate(cols) if not row[j]), None))
        return out

    def monotonicity_violations(self) -> dict[str, int]:
        """Examples robust under a stronger attack but fooled by a weaker one (AA vs aa_fast/PGD_S, PGD_S vs FGSM)."""
        pairs = [("aa", "pgd_s"), ("aa", "aa_fast"), ("aa_fast", "pgd_s"), ("pgd_s", "fgsm"), ("pgd_s_2x", "pgd_s")]
        out = {}
        for strong, weak in pairs:
            if strong in self.attacks and weak in self.attacks:
                s, w = self.correct[:, self.attacks.index(strong)], self.correct[:, self.attacks.index(weak)]
                out[f"{strong}>{weak}"] = int((s & ~w).sum())
        return out

    def per_class(self, attack: str) -> dict[str, list]:
        """Per class c = 0 … max label: {"accuracy": [k_c / n_c], "n": [n_c]} (NaN where n_c = 0).

        Why: an aggregate accuracy hides a sink class — a data-free student that files every
        ambiguous real image under one label keeps a middling mean while whole classes fall
        (docs/results.md, the CIFAR-10 per-class reading)."""
        j = self.attacks.index(attack)
        labels = torch.as_tensor(self.labels, dtype=torch.long)
        classes = int(labels.max()) + 1 if labels.numel() else 0
        n = torch.bincount(labels, minlength=classes)
        k = torch.bincount(labels, weights=self.correct[:, j].double(), minlength=classes) if classes else n
        return {
            "accuracy": [float(kc) / int(nc) if nc else float("nan") for kc, nc in zip(k.tolist(), n.tolist())],
            "n": n.tolist(),
        }

    def interval(self, attack: str) -> Optional[tuple[float, float]]:
        """95 % Wilson interval of an attack's accuracy (None without counts or with n = 0)."""
        r = self.results.get(attack) or {}
        if not isinstance(r.get("correct"), int) or not isinstance(r.get("n"), int):
            return None
        return wilson_interval(r["correct"], r["n"])

    def to_json(self) -> dict:
        attacks = {}
        for name, r in self.results.items():
            ci = self.interval(name)
            attacks[name] = (
                {**r, "ci95": list(ci) if ci is not None else None, "ci_method": "wilson"} if "n" in r else dict(r)
            )
        return _finite_or_none(
            {
                "protocol": self.protocol,
                "n": self.n,
                "world_size": self.world_size,
                "interval": INTERVAL,
                "attacks": attacks,
                "ave": self.ave,
                "warnings": self.warnings,
                "monotonicity_violations": self.monotonicity_violations(),
                "per_class": {a: self.per_class(a) for a in self.attacks},
            }
        )

    def _cell(self, attack: str) -> str:
        acc = self.results[attack]["accuracy"]
        if acc is None or not math.isfinite(acc):
            return "—"
        ci = self.interval(attack)
        return f"{100 * acc:.2f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci is not None else "")

    def markdown(self, title: str = "") -> str:
        cols = [(a, label) for a, label in PAPER_COLUMNS if a in self.results]
        extra = [(a, OTHER_NAMES.get(a, a)) for a in self.attacks if a not in dict(PAPER_COLUMNS)]
        ave = self.ave
        show_ave = ave is not None
        head = [label for _, label in cols] + (["Ave"] if show_ave else []) + [label for _, label in extra]
        vals = (
            [self._cell(a) for a, _ in cols]
            + ([f"{100 * ave:.2f}" if math.isfinite(ave) else "—"] if show_ave else [])
            + [self._cell(a) for a, _ in extra]
        )
        ns = (
            [str(self.results[a].get("n", "")) for a, _ in cols]
            + ([""] if show_ave else [])
            + [str(self.results[a].get("n", "")) for a, _ in extra]
        )
        secs = (
            [f"{self.results[a]['seconds']:.1f}" for a, _ in cols]
            + ([""] if show_ave else [])
            + [f"{self.results[a]['seconds']:.1f}" for a, _ in extra]
        )
        p = self.protocol
        lines = [
            f"## {title}" if title else "",
            f"n = {self.n}, ε = {p['eps']:.5f}, step = {p['alpha']:.5f}, {p['steps']} steps, restarts = {p.get('restarts', 1)} "
            f"(accuracy %, robust counted only if also clean-correct; [95 % Wilson interval])",
            "",
        ]
        lines += [
            "| | " + " | ".join(head) + " |",
            "|---" * (len(head) + 1) + "|",
            "| accuracy | " + " | ".join(vals) + " |",
            "| n | " + " | ".join(ns) + " |",
            "| seconds | " + " | ".join(secs) + " |",
        ]
        notes = []
        if "aa" in self.results:
            notes.append("AA: " + _describe_autoattack(self.results["aa"].get("autoattack")))
        if "aa_fast" in self.results:
            notes.append(AA_FAST_NOTE + ".")
        if notes:
            lines += [""] + [f"- {note}" for note in notes]
        if self.warnings:
            lines += ["", "**Warnings:**"] + [f"- {w}" for w in self.warnings]
        return "\n".join(line for line in lines if line is not None) + "\n"

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(self.to_json(), indent=2, allow_nan=False))
        (out / "report.md").write_text(self.markdown("Robustness evaluation"))
        fooled = self.first_fooled_by()
        with open(out / "per_example.jsonl", "w") as fh:
            for i, (label, row, first) in enumerate(zip(self.labels, self.correct.tolist(), fooled)):
                fh.write(
                    json.dumps(
                        {"index": i, "label": label, "correct": dict(zip(self.attacks, row)), "first_fooled_by": first}
                    )
                    + "\n"
                )
        return out


def _describe_autoattack(budgets: Optional[dict]) -> str:
    """One line: the AutoAttack version and component budgets of a report entry."""
    if not budgets:
        return "AutoAttack version not recorded"
    b = budgets
    return (
        f"{b.get('version')} AutoAttack — APGD-CE {b.get('apgd_steps')} it × {b.get('apgd_restarts')} restart (ρ {b.get('apgd_rho')}), "
        f"APGD-T {b.get('apgdt_steps')} it × {b.get('apgdt_target_classes')} targets, FAB-T {b.get('fab_steps')} it × {b.get('fab_target_classes')} targets, "
        f"Square {b.get('square_queries')} queries (p_init {b.get('square_p_init')}); {b.get('implementation')}"
    )


def masking_warnings(report: EvalReport, threshold: float = 0.10) -> list[str]:
    """Signs of gradient masking (Athalye et al. 2018; Carlini et al. 2019) as plain sentences."""
    acc = report.accuracy
    out = []
    if acc("pgd_s") is not None and acc("aa") is not None and acc("pgd_s") - acc("aa") > threshold:
        out.append(
            f"suspected gradient masking: PGD_S ({100 * acc('pgd_s'):.2f}%) exceeds AutoAttack (standard, aa) ({100 * acc('aa'):.2f}%) by more than {100 * threshold:.0f} points"
        )
    elif (
        acc("pgd_s") is not None
        and acc("aa") is None
        and acc("aa_fast") is not None
        and acc("pgd_s") - acc("aa_fast") > threshold
    ):
        out.append(
            f"suspected gradient masking: PGD_S ({100 * acc('pgd_s'):.2f}%) exceeds aa_fast ({100 * acc('aa_fast'):.2f}%; torchattacks' 10-iteration "
            f"AutoAttack, not the standard AutoAttack) by more than {100 * threshold:.0f} points"
        )
    if acc("fgsm") is not None and acc("pgd_s") is not None:
        if acc("pgd_s") > acc("fgsm") + 0.01:
            out.append(
                f"suspected gradient masking: iterative PGD_S ({100 * acc('pgd_s'):.2f}%) is weaker than single-step FGSM ({100 * acc('fgsm'):.2f}%)"
            )
        if acc("fgsm") - acc("pgd_s") > 3 * threshold:
            out.append(
                f"FGSM ({100 * acc('fgsm'):.2f}%) is much weaker than PGD_S ({100 * acc('pgd_s'):.2f}%): single-step gradients are uninformative, check for masking"
            )
    if acc("pgd_s_2x") is not None and acc("pgd_s") is not None and acc("pgd_s_2x") > acc("pgd_s") + 0.005:
        out.append(
            f"suspected gradient masking: robust accuracy rises with more PGD steps ({100 * acc('pgd_s'):.2f}% → {100 * acc('pgd_s_2x'):.2f}%)"
        )
    for pair, count in report.monotonicity_violations().items():
        if count and pair != "pgd_s_2x>pgd_s":
            strong, weak = pair.split(">")
            out.append(
                f"{count} examples survive {strong} but not {weak}: the stronger attack is not dominating, check its budget"
            )
    return out
