"""Evaluation report: JSON, a Markdown table in the paper's column order, per-example
records, and gradient-masking warnings.

Files written by ``EvalReport.save(dir)``:
  report.json        {"protocol", "n", "attacks": {name: {accuracy, correct, n, seconds, eps, ...}},
                      "ave", "warnings", "monotonicity_violations"}
  report.md          | Clean | FGSM | PGD_S | PGD_T | CW | AA | Ave |  (+ other attacks, warnings)
  per_example.jsonl  {"index", "label", "correct": {attack: bool}, "first_fooled_by": attack|null}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

PAPER_COLUMNS = (("clean", "Clean"), ("fgsm", "FGSM"), ("pgd_s", "PGD_S"), ("pgd_t", "PGD_T"), ("cw", "CW"), ("aa", "AA"))
OTHER_NAMES = {"square": "Square", "transfer_pgd": "Transfer PGD", "transfer_cw": "Transfer CW", "pgd_s_2x": "PGD_S (2× steps)"}


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
        order = [a for a, _ in PAPER_COLUMNS if a in self.attacks] + [a for a in self.attacks if a not in dict(PAPER_COLUMNS)]
        cols = [self.attacks.index(a) for a in order]
        out = []
        for row in self.correct.tolist():
            out.append(next((order[k] for k, j in enumerate(cols) if not row[j]), None))
        return out

    def monotonicity_violations(self) -> dict[str, int]:
        """Examples robust under a stronger attack but fooled by a weaker one (AA vs PGD_S, PGD_S vs FGSM)."""
        pairs = [("aa", "pgd_s"), ("pgd_s", "fgsm"), ("pgd_s_2x", "pgd_s")]
        out = {}
        for strong, weak in pairs:
            if strong in self.attacks and weak in self.attacks:
                s, w = self.correct[:, self.attacks.index(strong)], self.correct[:, self.attacks.index(weak)]
                out[f"{strong}>{weak}"] = int((s & ~w).sum())
        return out

    def to_json(self) -> dict:
        return {
            "protocol": self.protocol,
            "n": self.n,
            "world_size": self.world_size,
            "attacks": self.results,
            "ave": self.ave,
            "warnings": self.warnings,
            "monotonicity_violations": self.monotonicity_violations(),
        }

    def markdown(self, title: str = "") -> str:
        cols = [(a, label) for a, label in PAPER_COLUMNS if a in self.results]
        extra = [(a, OTHER_NAMES.get(a, a)) for a in self.attacks if a not in dict(PAPER_COLUMNS)]
        head = [label for _, label in cols] + (["Ave"] if self.ave is not None else []) + [label for _, label in extra]
        vals = [f"{100 * self.results[a]['accuracy']:.2f}" for a, _ in cols] + ([f"{100 * self.ave:.2f}"] if self.ave is not None else []) + [f"{100 * self.results[a]['accuracy']:.2f}" for a, _ in extra]
        secs = [f"{self.results[a]['seconds']:.1f}" for a, _ in cols] + ([""] if self.ave is not None else []) + [f"{self.results[a]['seconds']:.1f}" for a, _ in extra]
        p = self.protocol
        lines = [f"## {title}" if title else "", f"n = {self.n}, ε = {p['eps']:.5f}, step = {p['alpha']:.5f}, {p['steps']} steps, restarts = {p.get('restarts', 1)} (accuracy %, robust counted only if also clean-correct)", ""]
        lines += ["| | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|", "| accuracy | " + " | ".join(vals) + " |", "| seconds | " + " | ".join(secs) + " |"]
        if self.warnings:
            lines += ["", "**Warnings:**"] + [f"- {w}" for w in self.warnings]
        return "\n".join(line for line in lines if line is not None) + "\n"

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(self.to_json(), indent=2))
        (out / "report.md").write_text(self.markdown("Robustness evaluation"))
        fooled = self.first_fooled_by()
        with open(out / "per_example.jsonl", "w") as fh:
            for i, (label, row, first) in enumerate(zip(self.labels, self.correct.tolist(), fooled)):
                fh.write(json.dumps({"index": i, "label": label, "correct": dict(zip(self.attacks, row)), "first_fooled_by": first}) + "\n")
        return out


def masking_warnings(report: EvalReport, threshold: float = 0.10) -> list[str]:
    """Signs of gradient masking (Athalye et al. 2018; Carlini et al. 2019) as plain sentences."""
    acc = report.accuracy
    out = []
    if acc("pgd_s") is not None and acc("aa") is not None and acc("pgd_s") - acc("aa") > threshold:
        out.append(f"suspected gradient masking: PGD_S ({100 * acc('pgd_s'):.2f}%) exceeds AutoAttack ({100 * acc('aa'):.2f}%) by more than {100 * threshold:.0f} points")
    if acc("fgsm") is not None and acc("pgd_s") is not None:
        if acc("pgd_s") > acc("fgsm") + 0.01:
            out.append(f"suspected gradient masking: iterative PGD_S ({100 * acc('pgd_s'):.2f}%) is weaker than single-step FGSM ({100 * acc('fgsm'):.2f}%)")
        if acc("fgsm") - acc("pgd_s") > 3 * threshold:
            out.append(f"FGSM ({100 * acc('fgsm'):.2f}%) is much weaker than PGD_S ({100 * acc('pgd_s'):.2f}%): single-step gradients are uninformative, check for masking")
    if acc("pgd_s_2x") is not None and acc("pgd_s") is not None and acc("pgd_s_2x") > acc("pgd_s") + 0.005:
        out.append(f"suspected gradient masking: robust accuracy rises with more PGD steps ({100 * acc('pgd_s'):.2f}% → {100 * acc('pgd_s_2x'):.2f}%)")
    for pair, count in report.monotonicity_violations().items():
        if count and pair != "pgd_s_2x>pgd_s":
            strong, weak = pair.split(">")
            out.append(f"{count} examples survive {strong} but not {weak}: the stronger attack is not dominating, check its budget")
    return out
