"""The quickstart pipeline at the CI budget: real teachers, data-free DERD, real test data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_tiny_budget_beats_an_untrained_network(tmp_path, shared_data):
    out = tmp_path / "qs"
    cmd = [
        sys.executable,
        str(REPO / "launch" / "quickstart.py"),
        "--data-path",
        str(shared_data),
        "--budget",
        "tiny",
        "--out",
        str(out),
        "--no-progress",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    derd, untrained = rows["DERD student"], rows["untrained student"]
    assert derd["pgd_s"] > untrained["pgd_s"], rows
    assert derd["clean"] > 0.3  # well above the 10 % of chance on 10 classes
    assert set(derd) >= {"clean", "fgsm", "pgd_s", "pgd_t", "cw", "aa"}
    assert "| Clean | FGSM | PGD_S | PGD_T | CW | AA | Ave |" in first.stdout  # the six columns, printed
    for png in (out / "results.png", out / "derd" / "curves.png"):
        assert png.stat().st_size > 10_000
    # a second run reuses the cached teachers
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reusing cached") == 2
