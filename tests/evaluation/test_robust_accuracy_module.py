"""The robustness report as an `evaluate` module (derd_scale/resources/robust_accuracy), loaded
offline from its folder; it re-scores a saved report's per_example.jsonl to report.json's numbers.

    pytest -q tests/evaluation/test_robust_accuracy_module.py
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from derd_scale.evaluation import ROBUST_ACCURACY, Protocol
from derd_scale.evaluation import evaluate as run_evaluation


@pytest.fixture
def metric(hub_offline):
    import evaluate

    return evaluate.load(str(ROBUST_ACCURACY))


def test_hand_values(metric):
    out = metric.compute(predictions=[3, 1, 1, 2], references=[3, 1, 0, 2], attack=["clean", "clean", "pgd_s", "pgd_s"])
    assert list(out) == ["clean", "pgd_s"]
    assert out["clean"]["accuracy"] == 1.0 and out["clean"]["n"] == 2 and out["clean"]["correct"] == 2
    assert out["pgd_s"]["accuracy"] == 0.5 and out["pgd_s"]["n"] == 2
    low, high = out["pgd_s"]["ci95"]
    assert low == pytest.approx(0.0945, abs=1e-4) and high == pytest.approx(0.9055, abs=1e-4)  # Wilson, n = 2


def test_rescores_a_saved_report(metric, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    data = [(torch.rand(1, 2, 2), i % 3) for i in range(24)]
    report = run_evaluation(model, data, ["clean", "fgsm", "pgd_s"], Protocol("t", 0.3, 0.1, 3, 8), progress=False)
    report.save(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())["attacks"]
    rows = [json.loads(line) for line in (tmp_path / "per_example.jsonl").read_text().splitlines()]
    attacks = list(rows[0]["correct"])
    out = metric.compute(
        predictions=[int(r["correct"][a]) for r in rows for a in attacks],
        references=[1] * (len(rows) * len(attacks)),
        attack=[a for _ in rows for a in attacks],
    )
    assert set(out) == {"clean", "fgsm", "pgd_s"}
    for a in out:
        for key in ("correct", "n", "ci95", "ci_method"):
            assert out[a][key] == saved[a][key], (a, key)
        assert out[a]["accuracy"] == pytest.approx(saved[a]["accuracy"], rel=1e-6)  # the report's is a float32 mean
    assert out["clean"]["accuracy"] > out["pgd_s"]["accuracy"] or out["clean"]["accuracy"] == 0  # the attack bites
