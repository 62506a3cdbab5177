"""report.json is strict JSON with sample sizes and Wilson intervals; report.md shows them."""

import json

import pytest
import torch
import torch.nn as nn

from derd_scale.evaluation import Protocol, evaluate
from derd_scale.evaluation.report import EvalReport, wilson_interval


def _no_constants(name):
    raise ValueError(f"bare {name} in report.json")


def test_wilson_interval_hand_values():
    # 72/100: p = 0.72, z = 1.95996; centre (p + z²/2n)/(1 + z²/n) = 0.711861, half-width 0.086742
    lo, hi = wilson_interval(72, 100)
    assert lo == pytest.approx(0.625120, abs=1e-6) and hi == pytest.approx(0.798603, abs=1e-6)
    # 0/10: [0, z²/(n + z²)] = [0, 3.841459/13.841459]
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(3.841459 / 13.841459, abs=1e-6)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(0, 0) is None


def test_report_json_is_strict_even_with_nan_accuracy(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 10)).eval()
    empty = evaluate(model, [], ["pgd_s", "aa"], Protocol("t", 0.1, 0.02, 2, 8), progress=False)
    assert empty.n == 0
    empty.save(tmp_path / "empty")
    data = json.loads((tmp_path / "empty" / "report.json").read_text(), parse_constant=_no_constants)
    assert data["attacks"]["clean"]["accuracy"] is None and data["attacks"]["clean"]["n"] == 0
    assert data["attacks"]["clean"]["ci95"] is None and data["ave"] is None
    assert "—" in (tmp_path / "empty" / "report.md").read_text()


def test_report_carries_n_and_interval(tmp_path):
    results = {
        a: {"accuracy": k / 100, "correct": k, "n": 100, "seconds": 1.0}
        for a, k in (("clean", 72), ("pgd_s", 40), ("aa_fast", 38))
    }
    rep = EvalReport(
        results,
        {"eps": 0.03, "alpha": 0.01, "steps": 10},
        100,
        [0] * 100,
        torch.zeros(100, 3, dtype=torch.bool),
        list(results),
    )
    rep.save(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text(), parse_constant=_no_constants)
    clean = data["attacks"]["clean"]
    assert (
        clean["n"] == 100
        and clean["ci_method"] == "wilson"
        and clean["ci95"] == pytest.approx([0.625120, 0.798603], abs=1e-6)
    )
    assert "Wilson" in data["interval"]
    md = (tmp_path / "report.md").read_text()
    assert "72.00 [62.5, 79.9]" in md and "| n | 100 |" in md
    assert "| aa_fast |" in md and "| AA" not in md  # aa_fast is labelled aa_fast, never AA


def test_per_class_accuracy_hand_values(tmp_path):
    # labels 0 0 1 1 1 3 (class 2 has no example); clean right on 0, 2, 3, 5; pgd_s on 0 and 5
    labels = [0, 0, 1, 1, 1, 3]
    clean = [True, False, True, True, False, True]
    robust = [True, False, False, False, False, True]
    results = {
        a: {"accuracy": sum(c) / 6, "correct": sum(c), "n": 6, "seconds": 1.0}
        for a, c in (("clean", clean), ("pgd_s", robust))
    }
    rep = EvalReport(
        results,
        {"eps": 0.03, "alpha": 0.01, "steps": 10},
        6,
        labels,
        torch.tensor([clean, robust]).T,
        ["clean", "pgd_s"],
    )
    got = rep.per_class("clean")
    assert got["n"] == [2, 3, 0, 1]
    assert got["accuracy"][:2] == pytest.approx([1 / 2, 2 / 3]) and got["accuracy"][3] == 1.0
    assert got["accuracy"][2] != got["accuracy"][2]  # NaN: no example of class 2
    assert rep.per_class("pgd_s")["accuracy"][:2] == pytest.approx([1 / 2, 0.0])
    rep.save(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text(), parse_constant=_no_constants)
    assert data["per_class"]["clean"]["accuracy"][2] is None  # strict JSON
    assert data["per_class"]["pgd_s"]["n"] == [2, 3, 0, 1]
